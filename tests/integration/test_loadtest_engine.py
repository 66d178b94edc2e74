"""`vlmgate loadtest` against the real vLLM engine (and through the gateway): the report must agree with itself
and with the engine's own Prometheus counters. Asserts counts and token totals, never speed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from vlmgate.loadtest import compare_vllm
from vlmgate.loadtest.cli import main

pytestmark = pytest.mark.engine


def _consistent_rows(report: dict, requests: int, max_tokens: int) -> None:
    summary, rows = report["summary"], report["requests"]
    assert summary["requests"]["total"] == summary["requests"]["succeeded"] == len(rows) == requests
    for row in rows:
        assert row["output_tokens"] == max_tokens  # ignore_eos fixes the length
        assert 0 < row["ttft_ms"] <= row["e2e_ms"]
        assert row["ttft_ms"] + sum(row["itl_ms"]) == pytest.approx(row["e2e_ms"], abs=0.01)
        assert row["tpot_ms"] == pytest.approx((row["e2e_ms"] - row["ttft_ms"]) / (max_tokens - 1), abs=0.01)
    assert summary["throughput"]["output_tokens"] == requests * max_tokens
    assert summary["throughput"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)


def test_report_matches_the_engines_metrics(demo_engine_url, demo_model_name, tmp_path, capsys):
    code = main(["--url", demo_engine_url, "--model", demo_model_name, "--concurrency", "4", "--num-requests", "12",
                 "--max-tokens", "8", "--ignore-eos", "--images-per-request", "1", "--image-size",
                 "112x112:1,224x224:1", "--report", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    _consistent_rows(report, requests=12, max_tokens=8)
    assert report["summary"]["throughput"]["images"] == 12
    # Warm-up happens before the first scrape: the engine's deltas are exactly the measured requests.
    engine = report["server"]["vllm"]
    assert engine["requests"] == 12
    assert engine["generation_tokens"] == report["summary"]["throughput"]["output_tokens"]
    assert engine["prompt_tokens"] == report["summary"]["throughput"]["prompt_tokens"]
    assert engine["ttft_ms"]["count"] == 12
    assert "vllm p50~" in capsys.readouterr().out  # server-side next to client-side figures


@pytest.fixture(scope="module")
def loadtest_adapter(gateway, adapter_store: Path) -> str:
    """A random PEFT adapter registered in the session gateway, so the load mixes the base and an adapter."""
    from tests.adapter_factory import make_peft_adapter

    name = "loadtest-probe"
    make_peft_adapter(gateway.model_dir, adapter_store / name, seed=23)
    reply = httpx.post(f"{gateway.url}/v1/adapters", json={"name": name, "path": name}, timeout=120)
    assert reply.status_code == 201, reply.text
    return name


def test_adapter_mix_through_the_gateway_matches_its_per_adapter_metrics(gateway, loadtest_adapter, tmp_path, capsys):
    code = main(["--url", gateway.url, "--model", gateway.model, "--model", f"{loadtest_adapter}=1", "--rate", "4",
                 "--num-requests", "12", "--max-tokens", "6", "--ignore-eos", "--images-per-request", "1",
                 "--image-size", "112x112", "--report", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    _consistent_rows(report, requests=12, max_tokens=6)
    clients = report["summary"]["per_model"]
    assert set(clients) == {gateway.model, loadtest_adapter}  # the seeded 50/50 draw sends both some traffic
    # The gateway's own /metrics, scraped before and after, count exactly the measured traffic per adapter.
    gateway_side = report["server"]["vlmgate"]
    assert gateway_side["generation_tokens"] == 12 * 6
    assert gateway_side["requests"] == 12
    for model, figures in clients.items():
        # E2E, not TTFT: the gateway times the first token at the first non-empty text, and a random-weight
        # model's reply can be all tokens that decode to "" (the client counts them, as vLLM does).
        assert gateway_side["per_model"][model]["e2e_ms"]["count"] == figures["requests"]
    assert [r["scheduled_ms"] for r in report["requests"]] == sorted(r["scheduled_ms"] for r in report["requests"])
    assert "gateway TTFT p50~" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["concurrent", "alternate"])
def test_compare_with_vllm_bench_runs_both_tools_on_the_same_load(demo_engine_url, tmp_path, mode):
    out = tmp_path / "compare.json"
    compare_vllm.main(["--url", demo_engine_url, "--mode", mode, "--rounds", "1", "--num-requests", "10",
                       "--concurrency", "2", "--input-len", "32", "--output-len", "8", "--json", str(out)])  # fmt: skip
    outcome = json.loads(out.read_text())
    (round_,) = outcome["rounds"]
    assert round_["vllm"]["completed"] == 10
    # Concurrent mode keeps only our requests inside vLLM's window, so their number is not fixed.
    ours = round_["vlmgate"]["completed"]
    assert ours == 10 if mode == "alternate" else ours >= 1
    for tool in ("vllm", "vlmgate"):
        assert round_[tool]["output_tokens"] == 8 * round_[tool]["completed"]  # both honoured ignore_eos
        assert round_[tool]["ttft"] > 0
    assert set(outcome["relative_difference"]) == {"ttft", "tpot", "itl", "e2e"}
