"""QLoRA / LoRA training loop: validated data in, a PEFT adapter + manifest + loss curve + eval table out.

A plain loop rather than transformers' Trainer, because resuming must reproduce an uninterrupted run exactly:
the data order is a function of (seed, epoch), and a checkpoint holds the LoRA weights, optimizer, scheduler, RNG
state and loss history. Ctrl-C saves a checkpoint; the same command resumes from it.

Run as: vlmgate finetune train CONFIG.yaml [key=value ...]   (see finetune/examples/)
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import vlmgate  # noqa: F401  (torchvision guard first)

import torch  # isort: skip
from tqdm import tqdm  # isort: skip

from vlmgate.finetune.collate import collate, encode_example
from vlmgate.finetune.config import FinetuneConfig
from vlmgate.finetune.data import DataError, Example, length_issues, read_jsonl
from vlmgate.finetune.model import add_lora, load_base

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainState:
    step: int = 0
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Datasets:
    train: list[Example]
    eval: list[Example]


def load_datasets(cfg: FinetuneConfig, processor=None) -> Datasets:
    """Read and validate train/eval data; raise DataError with every problem at once (lengths included)."""
    train, issues = read_jsonl(cfg.train_data)
    if cfg.eval_data:
        held_out, eval_issues = read_jsonl(cfg.eval_data)
        issues += eval_issues
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = round(len(train) * cfg.eval_fraction)
        held = set(order[:n_eval])
        held_out = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
    if processor is not None:
        for examples in (train, held_out):
            lengths = [len(encode_example(ex, processor)["input_ids"]) for ex in examples]
            issues += length_issues(examples, lengths, cfg.max_length)
    if issues:
        raise DataError(issues)
    if not train:
        raise DataError([])
    return Datasets(train, held_out)


def steps_per_epoch(cfg: FinetuneConfig, n_train: int) -> int:
    return max(1, math.ceil(n_train / (cfg.batch_size * cfg.grad_accum)))


def total_steps(cfg: FinetuneConfig, n_train: int) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch(cfg, n_train)))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """Shuffled example order of one epoch: a pure function of (seed, epoch), so resume sees the same batches."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def batches_for_step(cfg: FinetuneConfig, n_train: int, step: int) -> list[list[int]]:
    """Example indices of each micro-batch of optimizer step `step` (0-based)."""
    per_epoch = steps_per_epoch(cfg, n_train)
    epoch, within = divmod(step, per_epoch)
    order = epoch_order(cfg.seed, epoch, n_train)
    start = within * cfg.batch_size * cfg.grad_accum
    chunk = order[start : start + cfg.batch_size * cfg.grad_accum]
    return [chunk[i : i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]


def _schedule(cfg: FinetuneConfig, steps: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """One training run in output_dir: holds model, optimizer and state; checkpoint/resume are its methods."""

    def __init__(self, cfg: FinetuneConfig, data: Datasets, processor):
        self.cfg, self.data, self.processor = cfg, data, processor
        self.run_dir = Path(cfg.output_dir)
        self.pad_id = processor.tokenizer.pad_token_id
        self.model = add_lora(load_base(cfg.base_model, cfg.method, cfg.compute_dtype), cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.steps = total_steps(cfg, len(data.train))
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(cfg, self.steps))
        self.state = TrainState()
        # Encoding (image preprocessing) is deterministic, so it is done once per example and reused every epoch.
        self._cache: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}

    def encoded_batch(self, split: str, indices: list[int]) -> dict[str, torch.Tensor]:
        examples, cache = getattr(self.data, split), self._cache[split]
        for i in indices:
            if i not in cache:
                cache[i] = encode_example(examples[i], self.processor)
        batch = collate([cache[i] for i in indices], self.pad_id)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def _loss(self, split: str, indices: list[int]) -> torch.Tensor:
        return self.model(**self.encoded_batch(split, indices)).loss

    def train_step(self) -> float:
        self.model.train()
        micro = batches_for_step(self.cfg, len(self.data.train), self.state.step)
        total = 0.0
        for indices in micro:
            loss = self._loss("train", indices) / len(micro)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.train_loss.append((self.state.step, total))
        return total

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        n = min(len(self.data.eval), self.cfg.eval_max_examples)
        if not n:
            return None
        self.model.eval()
        size = self.cfg.batch_size
        losses = [self._loss("eval", list(range(i, min(i + size, n)))).item() for i in range(0, n, size)]
        value = sum(losses) / len(losses)
        self.state.eval_loss.append((self.state.step, value))
        return value

    # ------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINTS / f"step-{self.state.step:06d}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(
            {
                "trainable": trainable,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "state": self.state.__dict__,
                "config": self.cfg.model_dump(),
            },
            tmp / "trainer.pt",
        )
        # Written to a temporary name then renamed, so an interruption mid-save never leaves a half checkpoint.
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        for old in sorted((self.run_dir / CHECKPOINTS).glob("step-??????"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.run_dir / CHECKPOINTS).glob("step-??????"))
        return found[-1] if found else None

    def resume(self, path: Path) -> None:
        saved = torch.load(path / "trainer.pt", weights_only=False)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in saved["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        self.state = TrainState(**saved["state"])

    # ------------------------------------------------------------------------------------------ loop

    def run(self, stop_at_step: int | None = None) -> TrainState:
        """Train to the last step (or stop_at_step, used to simulate an interruption); checkpoint on Ctrl-C."""
        cfg = self.cfg
        end = min(self.steps, stop_at_step or self.steps)
        bar = tqdm(total=self.steps, initial=self.state.step, desc=f"{cfg.method} r={cfg.rank}", unit="step")
        try:
            while self.state.step < end:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                step = self.state.step
                if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and step < self.steps:
                    eval_loss = self.eval_loss()
                    if eval_loss is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", eval_loss=f"{eval_loss:.4f}")
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < self.steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            path = self.save_checkpoint()
            bar.close()
            print(f"\ninterrupted at step {self.state.step}: checkpoint {path}; run the same command to resume")
            raise
        bar.close()
        if self.state.step < self.steps:
            self.save_checkpoint()
        elif not self.state.eval_loss or self.state.eval_loss[-1][0] != self.state.step:
            self.eval_loss()
        return self.state

    def save_adapter(self, out_dir: Path) -> Path:
        self.model.save_pretrained(str(out_dir))
        return out_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
