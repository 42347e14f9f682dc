"""The model repository: the tracked template, the served copy export builds, and its versions.

``model_repository/`` (tracked) is a template that nothing writes to: configs, the python
models' code, the ensemble.  ``alexnet-export`` builds the *served* repository from it --
template + version folders + the values that follow from the model (class count, the
engine's batch limit) -- in a git-ignored folder, which ``alexnet-serve``, ``alexnet-bench``
and the demo use by default.  ``ALEXNET_REPOSITORY`` (or ``--repository``) names another.
"""

from __future__ import annotations

import os
from pathlib import Path

from contract import MODEL

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT_ROOT / "model_repository"
DEFAULT_SERVED = PROJECT_ROOT / "served"
REPOSITORY_ENV = "ALEXNET_REPOSITORY"

LABELS = "labels.txt"  # beside alexnet's config: class_count -> "score:index:label"


def default_repository() -> Path:
    """The served repository: $ALEXNET_REPOSITORY, else ``served/`` in the project."""
    return Path(os.environ.get(REPOSITORY_ENV) or DEFAULT_SERVED)


def versions(repository: str | os.PathLike, model: str = MODEL) -> list[int]:
    """The model's numeric version folders, ascending (Triton ignores every other name)."""
    folder = Path(repository) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def latest_version(repository: str | os.PathLike, model: str = MODEL) -> Path | None:
    """The newest version folder: the one Triton's default version policy (latest 1) serves."""
    existing = versions(repository, model)
    return Path(repository) / model / str(existing[-1]) if existing else None
