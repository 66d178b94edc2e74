"""`vlmgate bench --stub` end to end: a STUB upstream, the real gateway process and the bare-relay floor, measured
side by side. Structure only (every side served every request, every figure is present and computed from those
runs); no speed is asserted, the machines are shared."""

from __future__ import annotations

import json

import httpx
import pytest

from vlmgate.loadtest.selfbench import start_stub
from vlmgate.serve import bench


@pytest.mark.slow
def test_stub_bench_measures_gateway_and_floor_side_by_side(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--stub", "--stub-ttft-ms", "5", "--stub-itl-ms", "1", "--concurrency", "1", "4", "--num-requests", "8",
            "--max-tokens", "8", "--rounds", "1", "--logs", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["concurrency"] for row in rows] == [1, 4]
    for row in rows:
        # CPU is read from /proc in clock ticks (10 ms): a run this short may round to 0
        assert row["gateway_cpu_ms_per_request"] >= 0
        assert row["relay_cpu_ms_per_request"] >= 0
        assert row["throughput_ratio"] > 0
        assert row["throughput_ratio_relay"] > 0
    printed = capsys.readouterr().out
    assert "STUB" in printed
    assert "relay CPU ms/req" in printed


def test_bare_relay_passes_requests_and_streams_through(tmp_path) -> None:
    stub, stub_url = start_stub(ttft_ms=1, itl_ms=1)
    relay, url = bench.start_relay(stub_url, tmp_path / "relay.log")
    try:
        body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
        with httpx.Client(timeout=10) as client:
            direct = client.post(f"{stub_url}/v1/chat/completions", json=body).text
            relayed = client.post(f"{url}/v1/chat/completions", json=body).text
    finally:
        relay.terminate()
        stub.terminate()
        relay.wait(10)
        stub.wait(10)
    assert relayed.count("data: ") == direct.count("data: ") >= 6
    assert relayed.rstrip().endswith("data: [DONE]")
