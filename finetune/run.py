"""One fine-tuning run end to end: validate data -> train (resuming) -> adapter + manifest -> evaluate -> report.

Output directory layout:
    adapter/           PEFT adapter + vlmgate_adapter.json (what you serve or push)
    checkpoints/       resumable state (the last two)
    loss.png           training and held-out loss
    eval.md, eval.json base vs adapter on the held-out data

Run as: vlmgate finetune train CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vlmgate.finetune.config import FinetuneConfig
from vlmgate.finetune.data import data_digest
from vlmgate.finetune.manifest import DataRef


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    metrics: dict[str, float]
    train_seconds: float


def run_training(
    cfg: FinetuneConfig, *, evaluate: bool = True, resume: bool = True, stop_at_step: int | None = None
) -> RunResult:
    """Train per `cfg`; with stop_at_step, stop there with a checkpoint (as an interruption would)."""
    import time

    from vlmgate.finetune.evaluate import evaluate as evaluate_adapter
    from vlmgate.finetune.export import export_manifest
    from vlmgate.finetune.model import load_processor
    from vlmgate.finetune.report import plot_loss
    from vlmgate.finetune.train import Trainer, load_datasets, seed_everything

    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    run_dir = Path(cfg.output_dir)
    processor = load_processor(cfg.base_model)
    data = load_datasets(cfg, processor)
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, data, processor)
    checkpoint = trainer.latest_checkpoint() if resume else None
    if checkpoint is not None:
        saved = json.dumps(_saved_config(checkpoint), sort_keys=True)
        if saved != json.dumps(cfg.model_dump(), sort_keys=True):
            raise ValueError(
                f"{checkpoint} was written with a different config; use a new output_dir or pass --no-resume"
            )
        trainer.resume(checkpoint)
        print(f"resuming from {checkpoint} (step {trainer.state.step} of {trainer.steps})")
    elif (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    start = time.perf_counter()
    state = trainer.run(stop_at_step=stop_at_step)
    seconds = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    plot_loss(state.train_loss, state.eval_loss, run_dir / "loss.png")
    adapter_dir = run_dir / "adapter"
    if state.step < trainer.steps:  # stopped early on purpose: leave the checkpoint, no adapter yet
        return RunResult(run_dir, adapter_dir, state.step, {}, seconds)
    trainer.save_adapter(adapter_dir)
    del trainer  # the 4-bit training model; evaluation loads the full-precision base
    metrics: dict[str, float] = {"train_loss": state.train_loss[-1][1]}
    if state.eval_loss:
        metrics["eval_loss"] = state.eval_loss[-1][1]
    if evaluate and data.eval:
        report = evaluate_adapter(cfg.base_model, adapter_dir, data.eval, cfg.max_new_tokens)
        report.write(run_dir)
        metrics |= report.metrics
        print(report.markdown())
    data_ref = DataRef(
        train_digest=data_digest(cfg.train_data),
        eval_digest=data_digest(cfg.eval_data) if cfg.eval_data else None,
        train_examples=len(data.train),
        eval_examples=len(data.eval),
    )
    export_manifest(cfg, adapter_dir, data_ref, metrics)
    return RunResult(run_dir, adapter_dir, state.step, metrics, seconds)


def _saved_config(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint / "trainer.pt", weights_only=False)["config"]
