"""Turn a run (or a sweep) into report.json, report.md and the console table.

The JSON schema is documented in loadtest/README.md ("report.json"); bump SCHEMA when it changes.

    report = build_report(config, result, summary, server)
    write_report(report, Path("out"))        # report.json, report.md, PNG plots
    print(console_table(report))
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from vlmgate import __version__
from vlmgate.loadtest.client import RequestRecord
from vlmgate.loadtest.config import LoadTestConfig

SCHEMA = "vlmgate.loadtest.report/1"
QUANTITIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
LABELS = {
    "ttft_ms": "TTFT",
    "tpot_ms": "TPOT",
    "itl_ms": "ITL",
    "e2e_ms": "E2E",
    "queue_ms": "queue",
    "image_preprocess_ms": "image prep",
}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 3)


def request_row(record: RequestRecord) -> dict:
    return {
        "index": record.index,
        "model": record.model,
        "images": record.images,
        "ok": record.ok,
        "status": record.status,
        "error_kind": record.error_kind,
        "error": record.error,
        "scheduled_ms": _ms(record.scheduled_s),
        "sent_ms": _ms(record.sent_s),
        "ttft_ms": _ms(record.ttft_s),
        "tpot_ms": _ms(record.tpot_s),
        "e2e_ms": _ms(record.e2e_s),
        "itl_ms": [_ms(v) for v in record.itl_s],
        "output_tokens": record.output_tokens,
        "prompt_tokens": record.prompt_tokens,
    }


def build_report(
    config: LoadTestConfig, records: list[RequestRecord], summary: dict, server: dict | None, sweep: dict | None = None
) -> dict:
    """The report.json object; `sweep` holds {"steps": [...], "best_rate": ...} for --sweep."""
    return {
        "schema": SCHEMA,
        "vlmgate_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json", exclude={"api_key"}),
        "summary": summary,
        "server": server,
        "sweep": sweep,
        "requests": [request_row(r) for r in records],
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def latency_rows(summary: dict, server: dict | None) -> list[list[str]]:
    """One row per quantity: client mean/p50/p90/p95/p99, then each server family's mean/p50/p99.

    Server-only quantities (queue time, image preprocessing) get rows of their own when a server reports them.
    """
    rows = []
    server_only = [q for q in ("queue_ms", "image_preprocess_ms") if any(q in f for f in (server or {}).values())]
    for quantity in (*QUANTITIES, *server_only):
        stats = summary["latency"].get(quantity) or {}
        row = [LABELS[quantity] + " ms"] + [_fmt(stats.get(k)) for k in ("mean", "p50", "p90", "p95", "p99")]
        for figures in (server or {}).values():
            hist = figures.get(quantity) or {}
            row += [_fmt(hist.get("mean")), _fmt(hist.get("p50")), _fmt(hist.get("p99"))]
        rows.append(row)
    return rows


def latency_header(server: dict | None) -> list[str]:
    header = ["metric", "mean", "p50", "p90", "p95", "p99"]
    for family in server or {}:
        header += [f"{family} mean", f"{family} p50~", f"{family} p99~"]
    return header


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _headline(report: dict) -> list[str]:
    s, config = report["summary"], report["config"]
    req, tput, slo = s["requests"], s["throughput"], s["slo"]
    load = f"concurrency {config['concurrency']}"
    if config["rate"]:
        load = f"rate {config['rate']}/s ({config['arrival']})"
    lines = [
        f"{config['url']}  {load}  {req['total']} requests in {s['duration_s']:.1f} s",
        f"succeeded {req['succeeded']}, failed {req['failed']} {req['errors_by_kind'] or ''}".rstrip(),
        f"throughput {tput['requests_per_s']:.2f} req/s, {tput['output_tokens_per_s']:.1f} output tok/s, "
        f"{tput['total_tokens_per_s']:.1f} total tok/s ({tput['output_tokens']} output tokens)",
        f"SLO {slo['targets'] or '(none: success rate only)'}: attainment {100 * slo['attainment']:.1f}% "
        f"(target {100 * slo['attainment_target']:.0f}%), goodput {slo['goodput_rps']:.2f} req/s -> "
        + ("MET" if slo["met"] else "MISSED"),
    ]
    lag = s["generator"]["schedule_lag_ms"]
    if lag:
        lines.append(f"generator: send lag behind schedule p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms")
    return lines


def _model_rows(summary: dict, server: dict | None) -> list[list[str]]:
    """Client figures per model/adapter, and the gateway's own when its metrics carry the adapter label."""
    gateway = ((server or {}).get("vlmgate") or {}).get("per_model")
    rows = []
    for model, m in summary["per_model"].items():
        ttft, tpot = m.get("ttft_ms") or {}, m.get("tpot_ms") or {}
        row = [model, str(m["requests"]), str(m["succeeded"]), str(m["good"]), _fmt(ttft.get("p50")),
               _fmt(ttft.get("p99")), _fmt(tpot.get("p50")), _fmt(tpot.get("p99"))]  # fmt: skip
        if gateway is not None:
            mine = gateway.get(model) or {}
            row += [_fmt((mine.get("ttft_ms") or {}).get("p50")), _fmt((mine.get("tpot_ms") or {}).get("p50"))]
        rows.append(row)
    return rows


def _model_header(server: dict | None) -> list[str]:
    extra = ["gateway TTFT p50~", "gateway TPOT p50~"] if ((server or {}).get("vlmgate") or {}).get("per_model") else []
    return ["model", "requests", "ok", "good", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", *extra]


def _sweep_rows(sweep: dict) -> list[list[str]]:
    return [
        [
            _fmt(st["rate"], 2),
            _fmt(st["achieved_rps"], 2),
            _fmt(100 * st["attainment"]),
            _fmt(st["ttft_p50_ms"]),
            _fmt(st["ttft_p99_ms"]),
            _fmt(st["tpot_p50_ms"]),
            _fmt(st["tpot_p99_ms"]),
            "yes" if st["met"] else "no",
        ]
        for st in sweep["steps"]
    ]


SWEEP_HEADER = ["rate", "achieved", "attain %", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "SLO met"]


def console_table(report: dict) -> str:
    parts = _headline(report)
    parts += ["", _table(latency_header(report["server"]), latency_rows(report["summary"], report["server"]))]
    if report["server"]:
        parts.append("(server columns: /metrics deltas over the run; ~ = estimated from histogram buckets)")
    if len(report["summary"]["per_model"]) > 1:
        parts += ["", _table(_model_header(report["server"]), _model_rows(report["summary"], report["server"]))]
    if report["sweep"]:
        parts += [
            "",
            _table(SWEEP_HEADER, _sweep_rows(report["sweep"])),
            f"highest rate meeting the SLO: {report['sweep']['best_rate']}",
        ]
    return "\n".join(parts)


def markdown(report: dict) -> str:
    parts = [
        "# Load test report",
        "",
        *[f"- {line}" for line in _headline(report)],
        "",
        "## Latency (ms)",
        "",
        _markdown_table(latency_header(report["server"]), latency_rows(report["summary"], report["server"])),
        "",
        "TPOT excludes the first token: (E2E - TTFT) / (output tokens - 1), as vLLM's benchmark does.",
    ]
    if report["server"]:
        server_counts = {f: {k: v for k, v in fig.items() if isinstance(v, int)} for f, fig in report["server"].items()}
        parts += [
            "Server columns are /metrics deltas over the run (percentiles estimated from histogram buckets); "
            f"server counters: {server_counts}."
        ]
    parts += [
        "",
        "## Per model",
        "",
        _markdown_table(_model_header(report["server"]), _model_rows(report["summary"], report["server"])),
    ]
    if report["sweep"]:
        parts += [
            "",
            "## Sweep",
            "",
            _markdown_table(SWEEP_HEADER, _sweep_rows(report["sweep"])),
            "",
            f"Highest rate meeting the SLO: **{report['sweep']['best_rate']}** req/s.",
            "",
            "![latency vs load](latency_vs_load.png)",
        ]
    parts += ["", "![latency CDFs](latency_cdf.png)", ""]
    return "\n".join(parts)


def write_report(report: dict, directory: Path) -> list[Path]:
    """report.json, report.md and the plots (skipped, with a note, when matplotlib is not installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "report.json", directory / "report.md"]
    written[0].write_text(json.dumps(report, indent=1) + "\n")
    written[1].write_text(markdown(report))
    try:
        from vlmgate.loadtest.plots import plot_latency_cdfs, plot_latency_vs_load
    except ImportError:  # plotting is optional: the numbers are all in report.json
        print("note: matplotlib is not installed, so no PNG plots (pip install matplotlib)", file=sys.stderr)
        return written
    written.append(plot_latency_cdfs(report["requests"], directory / "latency_cdf.png"))
    if report["sweep"]:
        written.append(plot_latency_vs_load(report["sweep"], directory / "latency_vs_load.png"))
    return written
