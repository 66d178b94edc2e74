"""The admin tab's reading of `GET /v1/slo`: the gateway's real report shape, partial reports, and the plots."""

from __future__ import annotations

from vlmgate.ui import slo_view


def window(requests: int, met: int, burn: float | None, ttft_p50: float | None = None) -> dict:
    latency: dict = dict.fromkeys(("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "image_preprocess_ms"))
    if ttft_p50 is not None:
        latency["ttft_ms"] = {"p50": ttft_p50, "p90": ttft_p50 * 2, "p95": ttft_p50 * 3, "p99": ttft_p50 * 4,
                              "count": requests}  # fmt: skip
        latency["tpot_ms"] = {"p50": 20.0, "p90": 25.0, "p95": 30.0, "p99": 31.0, "count": requests}
    return {"window_s": 300.0, "requests": requests, "met": met, "missed": requests - met,
            "attainment": met / requests if requests else None, "objective": 0.99,
            "error_budget_burn_rate": burn, "latency": latency}  # fmt: skip


# The shape serve/slo.py's SLOTracker.report() returns.
REPORT = {
    "object": "slo_report",
    "windows_s": {"short": 300.0, "long": 3600.0},
    "series": [
        {"model": "vlmgate-demo", "adapter": "", "targets": {"ttft_ms": 500.0, "tpot_ms": 33.0, "objective": 0.99},
         "windows": {"short": window(10, 9, 10.0, ttft_p50=120.0), "long": window(40, 39, 2.5, ttft_p50=100.0)}},
        {"model": "vlmgate-demo", "adapter": "shapes", "targets": {"ttft_ms": 800.0},
         "windows": {"short": window(0, 0, None), "long": window(0, 0, None)}},
    ],
}  # fmt: skip


def test_series_read_from_the_short_window_with_both_burn_rates() -> None:
    base, adapter = slo_view.parse_slo(REPORT)
    assert base.label == "vlmgate-demo"
    assert adapter.label == "vlmgate-demo / shapes"
    assert base.latency_ms["ttft"] == {"p50": 120.0, "p90": 240.0, "p95": 360.0, "p99": 480.0}
    assert base.targets_ms == {"ttft": 500.0, "tpot": 33.0}
    assert (base.requests, base.attainment, base.objective) == (10, 0.9, 0.99)
    assert base.burn_rates == {"short": 10.0, "long": 2.5}
    # An adapter with no traffic yet: no numbers, but still listed.
    assert (adapter.latency_ms, adapter.attainment, adapter.burn_rates) == ({}, None, {})


def test_table_rows_line_up_with_headers() -> None:
    rows = slo_view.table_rows(slo_view.parse_slo(REPORT))
    assert all(len(row) == len(slo_view.TABLE_HEADERS) for row in rows)
    row = dict(zip(slo_view.TABLE_HEADERS, rows[0], strict=True))
    assert row["TTFT p95 ms"] == 360.0
    assert row["attainment % (short)"] == 90.0
    assert (row["burn short"], row["burn long"]) == (10.0, 2.5)


def test_malformed_or_foreign_reports_give_no_series_instead_of_raising() -> None:
    for report in (None, [], {"series": "x"}, {"series": [1, None]}, {"object": "error"}):
        assert slo_view.parse_slo(report) == []
    short = {"latency": {"ttft_ms": {"p50": "?"}}, "attainment": float("nan")}
    [odd] = slo_view.parse_slo({"series": [{"model": "m", "windows": {"short": short}}]})
    assert (odd.latency_ms, odd.attainment) == ({}, None)


def test_figures_draw_bars_targets_and_empty_states() -> None:
    series = slo_view.parse_slo(REPORT)
    latency = slo_view.latency_figure(series)
    ttft_ax, tpot_ax, e2e_ax = latency.axes
    assert len(ttft_ax.patches) == 4  # p50..p99 for the one series with data
    assert [line.get_ydata()[0] for line in ttft_ax.get_lines()] == [500.0]  # the target line
    assert "no data yet" in [t.get_text() for t in e2e_ax.texts]
    attainment, burn = slo_view.attainment_figure(series).axes
    assert len(attainment.patches) == 1
    assert attainment.patches[0].get_height() == 90.0
    assert len(burn.patches) == 2  # short and long window
    empty_left, empty_right = slo_view.attainment_figure([]).axes
    assert "no data yet" in [t.get_text() for t in empty_left.texts]
