"""`--sweep`: find the highest open-loop request rate that still meets the SLO.

Without explicit rates it starts at --rate (default 1/s) and doubles while the SLO holds, then bisects
between the last rate that met it and the first that missed (`refine` times). Every step is an independent
open-loop run with the same workload settings; the result feeds the latency-vs-load plot.

    outcome = asyncio.run(run_sweep(config, rates=None, max_steps=6, refine=2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vlmgate.loadtest.config import LoadTestConfig
from vlmgate.loadtest.prom import server_side
from vlmgate.loadtest.runner import RunResult, run_load
from vlmgate.loadtest.stats import summarize


@dataclass
class SweepOutcome:
    steps: list[dict]  # one row per rate, see step_row
    best_rate: float | None
    best: tuple[RunResult, dict, dict | None] | None  # (result, summary, server) of the best (else last) step
    last: tuple[RunResult, dict, dict | None]


def step_row(rate: float, summary: dict, server: dict | None) -> dict:
    lat = summary["latency"]

    def pick(quantity: str, pct: str) -> float | None:
        return (lat.get(quantity) or {}).get(pct)

    return {
        "rate": rate,
        "achieved_rps": summary["requests"]["total"] / max(summary["duration_s"], 1e-9),
        "requests": summary["requests"]["total"],
        "failed": summary["requests"]["failed"],
        "attainment": summary["slo"]["attainment"],
        "goodput_rps": summary["slo"]["goodput_rps"],
        "met": summary["slo"]["met"],
        **{f"{q}_{p}_ms": pick(f"{q}_ms", p) for q in ("ttft", "tpot", "e2e") for p in ("p50", "p99")},
        "server": server,
    }


def next_rate(history: list[tuple[float, bool]], max_steps: int, refine: int) -> float | None:
    """The next rate to try given (rate, met) so far; None when done. Pure, so it is unit-tested alone."""
    good = [r for r, met in history if met]
    bad = [r for r, met in history if not met]
    if not bad:  # still climbing
        return max(good) * 2 if good and len(history) < max_steps else None
    if not good:  # even the lowest rate missed: halve
        return min(bad) / 2 if len(history) < max_steps else None
    # Bisect between the best rate that met the SLO and the lowest rate above it that missed.
    bracketed_at = next(i for i in range(len(history)) if {met for _, met in history[: i + 1]} == {True, False})
    above = [r for r in bad if r > max(good)]
    if len(history) - 1 - bracketed_at >= refine or not above:
        return None
    return (max(good) + min(above)) / 2


async def run_sweep(
    config: LoadTestConfig,
    rates: list[float] | None,
    max_steps: int = 6,
    refine: int = 2,
    on_step: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> SweepOutcome:
    steps: list[dict] = []
    history: list[tuple[float, bool]] = []
    runs: dict[float, tuple[RunResult, dict, dict | None]] = {}
    queue = list(rates) if rates else [config.rate or 1.0]
    while queue:
        rate = queue.pop(0)
        step_config = config.model_copy(
            update={"rate": rate, "concurrency": None, "warmup_requests": config.warmup_requests if not steps else 0}
        )
        result = await run_load(step_config, progress=progress)
        summary = summarize(result.records, result.duration_s, config.slo, config.attainment)
        server = server_side(result.metrics_before, result.metrics_after) if result.metrics_after else None
        row = step_row(rate, summary, server)
        steps.append(row)
        history.append((rate, row["met"]))
        runs[rate] = (result, summary, server)
        if on_step:
            on_step(row)
        if not rates and (following := next_rate(history, max_steps, refine)) is not None:
            queue.append(following)
    met_rates = [r for r, met in history if met]
    best_rate = max(met_rates) if met_rates else None
    return SweepOutcome(steps, best_rate, runs[best_rate] if best_rate else None, runs[history[-1][0]])
