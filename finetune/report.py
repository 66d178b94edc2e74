"""Training run outputs a person reads: the loss curve PNG and the one-screen summary.

Run as: imported by the fine-tuning pipeline (no command of its own).
"""

from __future__ import annotations

from pathlib import Path


def plot_loss(train_loss: list[tuple[int, float]], eval_loss: list[tuple[int, float]], out: str | Path) -> Path:
    """Training loss per step (and held-out loss where measured) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train_loss:
        steps, values = zip(*train_loss, strict=True)
        ax.plot(steps, values, label="train loss", linewidth=1)
    if eval_loss:
        steps, values = zip(*eval_loss, strict=True)
        ax.plot(steps, values, "o-", label="held-out loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (answer tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
