"""The files the producer container reads: digits, a .npy batch, PNG images, training specs.

Written on the host (which has the project's worker extra: scikit-learn, numpy, pillow) into
the work folder that the test mounts at /jobs, as the README mounts ``$PWD/jobs``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BATCH = 16
PNG_DIGITS = (0, 1)


def training_spec(name: str, epochs: int) -> dict[str, Any]:
    """A convolutional model on the digits: seconds per epoch, a checkpoint after each."""
    return {
        "kind": "train", "model_name": name, "arch": "cifar_cnn",
        "dataset": {"name": "digits"}, "epochs": epochs, "batch_size": 64,
    }  # fmt: skip


def write_inputs(work: Path, kill_epochs: int, stop_epochs: int) -> dict[str, Any]:
    """Write /jobs and /checks for the producer container; returns the labels the host
    checks CLI answers against (``batch``: the .npy's, ``png``: the images')."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    jobs, checks = work / "jobs", work / "checks"
    for folder in (jobs, checks):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        folder.chmod(0o755)  # the producer runs as uid 10001
    digits = load_digits()
    pixels = np.round(digits.images / 16 * 255).astype(np.uint8)  # (1797, 8, 8), 0-16 -> 0-255
    labels = digits.target.astype(np.int64)
    np.save(jobs / "digits.npy", pixels)
    np.save(jobs / "labels.npy", labels)
    np.save(jobs / "batch.npy", pixels[:BATCH])
    png_labels = []
    for digit in PNG_DIGITS:
        index = int(np.flatnonzero(labels == digit)[0])
        Image.fromarray(pixels[index], mode="L").save(jobs / f"{digit}.png")
        png_labels.append(int(labels[index]))
    for name, epochs in (("kill", kill_epochs), ("stop", stop_epochs)):
        spec = training_spec(f"digits-{name}", epochs)
        (jobs / f"train-{name}.json").write_text(json.dumps(spec))
    shutil.copy(HERE / "jobs.py", checks / "jobs.py")
    for path in [*jobs.iterdir(), *checks.iterdir()]:
        path.chmod(0o644)
    return {"batch": [int(y) for y in labels[:BATCH]], "png": png_labels}
