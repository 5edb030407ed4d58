"""Which folders of an image dataset train and which validate.

``dataset.path`` is one folder of class sub-folders (validation split off at random), or a
root holding ``train/`` and a validation folder (``val/``, ``validation/``, ``valid/``, else
``test/``), or the training folder beside ``dataset.val_path``. Class folders named like
splits mean the wrong folder was given, and are refused rather than learnt as classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidJob

TRAIN_FOLDER = "train"
VAL_FOLDERS = ("val", "validation", "valid", "test")
SPLIT_NAMES = frozenset({TRAIN_FOLDER, "training", "testing", *VAL_FOLDERS})


@dataclass(frozen=True)
class SplitFolders:
    """The training folder, the validation folder (``None``: split at random) and a note."""

    train: Path
    val: Path | None
    note: str


def split_folders(root: Path, val_root: Path | None) -> SplitFolders:
    """The folders to read: ``val_root`` if given, else a ``train/`` + ``val/`` layout, else
    ``root`` alone (a random validation split)."""
    if val_root is not None:
        return SplitFolders(root, val_root, "training on dataset.path, validating on val_path")
    train = root / TRAIN_FOLDER
    if train.is_dir():
        for name in VAL_FOLDERS:
            if (root / name).is_dir():
                note = f"found {TRAIN_FOLDER}/ and {name}/ in dataset.path: trained on "
                return SplitFolders(
                    train, root / name, note + f"{TRAIN_FOLDER}/, validated on {name}/"
                )
    return SplitFolders(root, None, "validation split off dataset.path at random (val_fraction)")


def refuse_split_names(classes: list[str], field: str) -> None:
    """Refuse class folders that look like train/validation splits, not classes."""
    if sum(name.lower() in SPLIT_NAMES for name in classes) >= 2:
        raise InvalidJob(
            f"the class folders in {field} are named like dataset splits (train, val, test...), "
            "not classes; give the folder that holds train/ and val/, or point dataset.path at "
            "the training folder and dataset.val_path at the validation folder"
        )


def check_same_classes(train: list[str], val: list[str]) -> None:
    """The validation folder must hold the training folder's classes, by name."""
    if train != val:
        raise InvalidJob(
            f"the validation folder's {len(val)} class folders differ from the training "
            f"folder's {len(train)}; both must hold the same class sub-folders, by name"
        )
