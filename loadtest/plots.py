"""PNG plots of a load-test report: latency CDFs of one run, latency and attainment vs load of a sweep.

Called by report.write_report; matplotlib (optional) is imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdfs(rows: list[dict], path: Path) -> Path:
    """Empirical CDFs of TTFT, TPOT, ITL and E2E (ms) over the successful requests of report.json rows."""
    plt = _pyplot()
    ok = [r for r in rows if r["ok"]]
    series = {
        "TTFT": [r["ttft_ms"] for r in ok],
        "TPOT": [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None],
        "ITL": [v for r in ok for v in r["itl_ms"]],
        "E2E": [r["e2e_ms"] for r in ok],
    }
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        if values:
            xs = np.sort(np.asarray(values, dtype=float))
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post")
            for q in (0.5, 0.99):
                ax.axhline(q, color="grey", lw=0.5, ls=":")
        if name == "ITL" and values and min(values) > 0:
            ax.set_xscale("log")  # a few stalls would otherwise squash the bulk of the gaps into one column
        ax.set_title(f"{name} (n={len(values)})")
        ax.set_xlabel("ms")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_vs_load(sweep: dict, path: Path) -> Path:
    """TTFT/TPOT p50 and p99 and SLO attainment against the offered request rate of each sweep step."""
    plt = _pyplot()
    steps = sorted(sweep["steps"], key=lambda s: s["rate"])
    rates = [s["rate"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, quantity in zip(axes[:2], ("ttft", "tpot"), strict=True):
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(rates, [s[f"{quantity}_{pct}_ms"] for s in steps], style, label=pct)
        target = (sweep.get("targets") or {}).get(f"{quantity}_ms")
        if target:
            ax.axhline(target, color="red", lw=1, label="SLO")
        ax.set_title(f"{quantity.upper()} vs load")
        ax.set_ylabel("ms")
    axes[2].plot(rates, [100 * s["attainment"] for s in steps], "o-")
    axes[2].axhline(100 * sweep["attainment_target"], color="red", lw=1, label="target")
    axes[2].set_title("SLO attainment vs load")
    axes[2].set_ylabel("% of requests meeting the SLO")
    if sweep.get("best_rate"):
        for ax in axes:
            ax.axvline(sweep["best_rate"], color="green", lw=1, ls=":", label="best rate")
    for ax in axes:
        ax.set_xlabel("offered rate (req/s)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
