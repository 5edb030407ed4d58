"""Where a job may make a worker read data: under the configured data roots, and not forever.

A dataset path from a job is refused before the file system is touched when it names a
place outside every root (so a refusal says nothing about what exists there), then resolved
and checked again, so a symbolic link cannot lead out. Folder scans never follow links to
folders (no loops), stop at a depth and an entry count, and errors never list a folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from shared.errors import DatasetNotFound, InvalidJob, PathNotAllowed
from shared.settings import Settings, get_settings

MAX_DEPTH = 16  # folder levels below a class folder


@dataclass(frozen=True)
class DataLimits:
    """The data roots and the bounds on what one dataset may make a worker read."""

    roots: tuple[Path, ...]
    max_files: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DataLimits:
        """The limits a worker's settings set (the process's own when none are given)."""
        settings = settings or get_settings()
        return cls(
            roots=tuple(Path(r).expanduser().absolute() for r in settings.data_roots),
            max_files=settings.max_dataset_files,
            max_pixels=settings.max_image_pixels,
        )


def confined_folder(path: str, limits: DataLimits, field: str = "dataset.path") -> Path:
    """The existing folder ``path`` names, resolved, if it lies under a data root.

    Raises :class:`PathNotAllowed` for a path outside the roots (checked before anything is
    read) or one that a link leads out of, and :class:`DatasetNotFound` for a missing folder
    inside them.
    """
    candidate = _lexical(path, limits, field)
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as e:  # a link loop: RuntimeError before Python 3.13
        raise InvalidJob(f"{field} {path!r} cannot be resolved (a link loop?)") from e
    if not within_roots(resolved, limits):
        raise PathNotAllowed(f"{field} {path!r} leads outside the data roots through a link")
    if not resolved.is_dir():
        raise DatasetNotFound(
            f"dataset folder {path!r} does not exist on this worker "
            "(torchfleet never downloads data: copy it there or mount a shared volume)"
        )
    return resolved


def within_roots(resolved: Path, limits: DataLimits) -> bool:
    """Whether an already resolved path lies under (or is) one of the resolved roots."""
    return any(resolved.is_relative_to(root.resolve()) for root in limits.roots)


def _lexical(path: str, limits: DataLimits, field: str) -> Path:
    if "\0" in path or ".." in PurePath(path).parts:
        raise PathNotAllowed(f"{field} {path!r} may not contain '..' or NUL characters")
    if not limits.roots:
        raise PathNotAllowed(
            f"this worker reads no dataset folders: set TORCHFLEET_DATA_ROOTS to allow {field}"
        )
    candidate = Path(path) if Path(path).is_absolute() else limits.roots[0] / path
    if not any(
        candidate.is_relative_to(r) for root in limits.roots for r in (root, root.resolve())
    ):
        roots = ", ".join(str(r) for r in limits.roots)
        raise PathNotAllowed(
            f"{field} {path!r} is outside this worker's data roots ({roots}); put the data "
            "under one of them or add its folder to TORCHFLEET_DATA_ROOTS"
        )
    return candidate


def subfolders(folder: Path, limits: DataLimits) -> list[Path]:
    """The visible sub-folders of ``folder`` (links only when they stay under a root), sorted."""
    found = []
    with os.scandir(folder) as entries:
        for count, entry in enumerate(entries, start=1):
            if count > limits.max_files:
                raise _too_many(limits)
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not within_roots(path.resolve(), limits):
                raise PathNotAllowed(
                    f"sub-folder {entry.name!r} of the dataset links outside the data roots"
                )
            found.append(path)
    return sorted(found, key=lambda p: p.name)


def walk_files(folder: Path, limits: DataLimits, budget: list[int]) -> Iterator[Path]:
    """Every visible file under ``folder``, in sorted order, without following folder links.

    ``budget`` holds the entries still allowed (shared across folders of one dataset); a
    file that is a link must resolve under a data root.
    """
    top = len(folder.parts)
    for current, dirs, files in os.walk(folder, followlinks=False):
        budget[0] -= len(dirs) + len(files)
        if budget[0] < 0:
            raise _too_many(limits)
        depth = len(Path(current).parts) - top
        dirs[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(current, name)
            if path.is_symlink() and not within_roots(path.resolve(), limits):
                raise PathNotAllowed(
                    f"{path.relative_to(folder.parent)} links outside the data roots"
                )
            yield path


def _too_many(limits: DataLimits) -> InvalidJob:
    return InvalidJob(
        f"the dataset folder holds more than {limits.max_files} entries "
        "(TORCHFLEET_MAX_DATASET_FILES); use a smaller folder or raise the limit"
    )
