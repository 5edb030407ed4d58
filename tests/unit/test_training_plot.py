"""The learning-curve PNG, drawn on the producer side without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from producers.plots import plot_learning_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(epochs: int = 4) -> dict[str, Any]:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_accuracy": 1 - 0.5 / e,
            "val_loss": 1.2 / e,
            "val_accuracy": 1 - 0.6 / e,
            "lr": 0.01 * 0.5**e,
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]
    return {
        "model": "digits",
        "version": 3,
        "arch": "cifar_cnn",
        "best_epoch": 4,
        "history": history,
    }


def test_the_learning_curve_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curve.png"
    plot_learning_curve(result(), str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_a_result_without_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no per-epoch history"):
        plot_learning_curve({"kind": "infer"}, str(tmp_path / "x.png"))


def test_without_matplotlib_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(RuntimeError, match=r"torchfleet\[worker\]"):
        plot_learning_curve(result(), str(tmp_path / "x.png"))


def test_plotting_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, json; from producers.plots import plot_learning_curve; "
        f"plot_learning_curve(json.loads(sys.argv[1]), {str(tmp_path / 'c.png')!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(result(2))], check=True)
