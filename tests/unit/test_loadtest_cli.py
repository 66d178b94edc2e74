"""`vlmgate loadtest` end to end against a STUB upstream (fixed latencies, no model): client timing, error
kinds, report files and their consistency, exit codes, sweep. Asserts counts and structure, never speed."""

from __future__ import annotations

import asyncio
import json

import pytest

from vlmgate.loadtest.cli import main
from vlmgate.loadtest.config import LoadTestConfig, ModelWeight, parse_slo
from vlmgate.loadtest.runner import run_load
from vlmgate.loadtest.stub import StubUpstream
from vlmgate.loadtest.sweep import next_rate


@pytest.fixture(scope="module")
def stub():
    upstream = StubUpstream(ttft_ms=5, itl_ms=1)
    with upstream as url:
        yield url, upstream.state


def test_client_times_every_token_and_names_each_failure_kind(stub):
    url, _ = stub
    models = [ModelWeight(name=n) for n in ("stub", "fail-429", "fail-503", "fail-400", "truncate")]
    config = LoadTestConfig(url=url + "/v1", models=models, concurrency=3, num_requests=40, max_tokens=6,
                            warmup_requests=0, scrape_metrics=False)  # fmt: skip
    result = asyncio.run(run_load(config, progress=False))
    assert [r.index for r in result.records] == list(range(40))
    expected = {"stub": None, "fail-429": "http_429", "fail-503": "http_5xx", "fail-400": "http_4xx",
                "truncate": "stream"}  # fmt: skip
    for record in result.records:
        assert record.error_kind == expected[record.model]
        assert record.ok == (record.model == "stub")
        if record.ok:
            assert record.output_tokens == 6
            assert record.tokens_from_usage
            assert len(record.itl_s) == 5
            assert 0 < record.ttft_s <= record.e2e_s
            assert record.e2e_s == pytest.approx(record.ttft_s + sum(record.itl_s))


def test_connection_refused_is_reported_as_a_connection_error():
    config = LoadTestConfig(url="http://127.0.0.1:9", models=[ModelWeight(name="m")], num_requests=2,
                            warmup_requests=0, scrape_metrics=False, timeout_s=5)  # fmt: skip
    result = asyncio.run(run_load(config, progress=False))
    assert [r.error_kind for r in result.records] == ["connection", "connection"]


def test_report_is_written_and_consistent_with_the_servers_metrics(stub, tmp_path, capsys):
    url, state = stub
    before = state.generation_tokens
    code = main(["--url", url, "--model", "stub", "--rate", "50", "--num-requests", "30", "--max-tokens", "4",
                 "--images-per-request", "1", "--image-size", "32x32", "--report", str(tmp_path), "--no-progress",
                 "--slo", "e2e_ms=60000"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "TTFT ms" in out
    assert "MET" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "vlmgate.loadtest.report/1"
    assert len(report["requests"]) == report["summary"]["requests"]["total"] == 30
    assert report["summary"]["throughput"]["output_tokens"] == sum(r["output_tokens"] for r in report["requests"])
    assert report["summary"]["throughput"]["images"] == 30
    # Warm-up requests come before the first scrape, so the server's delta is exactly the measured traffic.
    assert report["server"]["vllm"]["generation_tokens"] == 30 * 4 == state.generation_tokens - before - 2 * 4
    assert report["server"]["vllm"]["ttft_ms"]["count"] == 30
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "latency_cdf.png"}
    assert "TPOT excludes the first token" in (tmp_path / "report.md").read_text()


def test_missed_slo_exits_1_and_usage_errors_exit_2_listing_every_problem(stub, capsys):
    url, _ = stub
    assert main(["--url", url, "--num-requests", "3", "--slo", "ttft_ms=0.0001", "--no-progress"]) == 1
    assert "MISSED" in capsys.readouterr().out
    code = main(["--url", "ftp://x", "--rate", "1", "--concurrency", "2", "--slo", "ttft=5", "--model", "a=0"])
    err = capsys.readouterr().err
    assert code == 2
    for fragment in ("--url must start with http", "not both", "--slo 'ttft=5'", "--model 'a=0'"):
        assert fragment in err


def test_sweep_runs_each_rate_and_plots_latency_against_load(stub, tmp_path, capsys):
    url, _ = stub
    code = main(["--url", url, "--model", "stub", "--sweep", "--sweep-rates", "20,40", "--num-requests", "10",
                 "--max-tokens", "3", "--slo", "e2e_ms=60000", "--report", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["rate"] for s in report["sweep"]["steps"]] == [20.0, 40.0]
    assert report["sweep"]["best_rate"] == 40.0
    assert (tmp_path / "latency_vs_load.png").stat().st_size > 0


def test_automatic_sweep_doubles_then_bisects_between_met_and_missed():
    assert next_rate([(1, True)], max_steps=6, refine=2) == 2
    assert next_rate([(1, True), (2, True), (4, False)], 6, 2) == 3
    assert next_rate([(1, True), (2, True), (4, False), (3, True)], 6, 2) == 3.5
    assert next_rate([(1, True), (2, True), (4, False), (3, True), (3.5, False)], 6, 2) is None
    assert next_rate([(1, False)], 6, 2) == 0.5
    assert next_rate([(r, True) for r in (1, 2, 4)], max_steps=3, refine=2) is None


def test_slo_parser_accepts_any_subset_of_targets():
    assert parse_slo("ttft_ms=500, tpot_ms=33").targets() == {"ttft_ms": 500.0, "tpot_ms": 33.0}
    assert parse_slo("").targets() == {}


def test_duration_bounds_both_loops_and_stop_ends_a_closed_loop(stub):
    url, _ = stub
    base = {"url": url, "models": [ModelWeight(name="stub")], "max_tokens": 2, "warmup_requests": 0,
            "scrape_metrics": False}  # fmt: skip
    closed = asyncio.run(run_load(LoadTestConfig(**base, concurrency=2, duration_s=0.3), progress=False))
    assert closed.records
    assert all(r.sent_s < 0.3 for r in closed.records)  # no request leaves after the deadline
    open_loop = asyncio.run(run_load(LoadTestConfig(**base, rate=40, arrival="constant", duration_s=0.5), False))
    assert [r.scheduled_s for r in open_loop.records] == pytest.approx([i / 40 for i in range(20)])

    async def stopped() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(run_load(LoadTestConfig(**base, concurrency=2, duration_s=3600), False, stop))
        await asyncio.sleep(0.2)
        stop.set()
        return len((await task).records)

    assert asyncio.run(stopped()) > 0


def test_dataset_prompts_are_sent_as_given(stub, tmp_path):
    url, state = stub
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
    start = len(state.log)
    code = main(["--url", url, "--dataset", str(path), "--num-requests", "4", "--max-tokens", "2", "--no-progress"])
    assert code == 0
    assert len(state.log) - start == 4 + 2  # measured + warm-up, every one answered


def test_without_model_or_server_model_list_it_is_a_usage_error(capsys):
    # Nothing listens on port 9: /v1/models cannot name a default model.
    assert main(["--url", "http://127.0.0.1:9", "--num-requests", "1", "--no-progress"]) == 2
    assert "pass --model NAME" in capsys.readouterr().err
