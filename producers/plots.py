"""Learning curves from a train result, as a PNG (matplotlib, imported only when plotting).

Producers never import torch; matplotlib comes with the ``worker`` extra, so a light client
without it gets a clear error instead of an ImportError from deep inside.
"""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(
            "plotting needs matplotlib: pip install 'torchfleet[worker]' (or just matplotlib)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(result: dict[str, Any], path: str) -> None:
    """Write a PNG of loss (train and validation), validation accuracy and learning rate.

    ``result`` is a train result as JSON (``TrainResult.model_dump(mode="json")``).
    """
    history = result.get("history") or []
    if not history:
        raise ValueError("the result holds no per-epoch history to plot (is it a train result?)")
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", color="C2")
    best = result.get("best_epoch")
    if best:
        ax_acc.axvline(best, color="grey", linestyle="--", label=f"best (epoch {best})")
        ax_acc.legend()
    ax_acc.set_title("validation accuracy (%)")
    ax_lr.plot(epochs, [h["lr"] for h in history], marker="o", color="C3")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    name = f"{result.get('model', '?')}:{result.get('version', '?')} ({result.get('arch', '?')})"
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
