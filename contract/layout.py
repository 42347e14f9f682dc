"""The model repository: the tracked template, the served copy export builds, and its versions.

``model_repository/`` (tracked) is a template that nothing writes to: configs, the python
models' code, the ensemble.  ``alexnet-export`` builds the *served* repository from it --
template + version folders + the values that follow from the model (class count, the
engine's batch limit) -- in a git-ignored folder, which ``alexnet-serve``, ``alexnet-bench``
and the demo use by default (``served/`` in the working directory).  ``ALEXNET_REPOSITORY``
(or ``--repository``) names another.  The template ships inside the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

import alexnet_server
from alexnet_server.contract import MODEL

# The folder holding the package's subpackages: the checkout's root, or site-packages/alexnet_server
# when installed (the template ships inside it as package data).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PACKAGE_ROOT / "model_repository"
# Where ``alexnet_server`` is importable from: what Triton's python-backend stubs need on PYTHONPATH.
IMPORT_ROOT = Path(alexnet_server.__file__).resolve().parent.parent
DEFAULT_SERVED = Path("served")  # in the working directory: never inside an installed package
REPOSITORY_ENV = "ALEXNET_REPOSITORY"

LABELS = "labels.txt"  # beside alexnet's config: class_count -> "score:index:label"


def default_repository() -> Path:
    """The served repository: $ALEXNET_REPOSITORY, else ``served/`` in the working directory."""
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
