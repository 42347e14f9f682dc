"""Writing into a Triton model repository, all or nothing.

Everything of a version is built in a staging folder inside ``alexnet/`` (Triton ignores
non-numeric folders there), checked, then renamed into place; ``labels.txt`` and the
class count in the configs follow by write-to-temporary-and-rename.  A failure at any
step removes what this export added and leaves the repository as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROJECT_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
MODEL = "alexnet"
ENSEMBLE = "classify"
# The cpu config's python backend loads <version>/model.py; the code itself lives in the
# installed project, so a version folder never holds a stale copy of it.
PYTHON_SHIM = (
    '"""alexnet, configs/cpu.pbtxt: python backend + ONNX Runtime (written by alexnet-export)."""\n'
    "from server.triton_models.alexnet_onnx import TritonPythonModel  # noqa: F401\n"
)
_PROBS_DIMS = re.compile(r'(name:\s*"PROBS"[^}]*?dims:\s*\[\s*)(-?\d+)(\s*\])', re.S)


class RepositoryError(RuntimeError):
    """The repository cannot take this export; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; Triton may run as another user and must read them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions(repository: Path) -> list[int]:
    folder = repository / MODEL
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def config_files(repository: Path) -> list[Path]:
    """Every config whose PROBS dims carry the class count: alexnet's variants and the ensemble."""
    model = repository / MODEL
    files = [model / "config.pbtxt", *sorted((model / "configs").glob("*.pbtxt")), repository / ENSEMBLE / "config.pbtxt"]
    return [f for f in files if f.is_file()]


def prepare(repository: Path) -> Path:
    """Check the repository is writable; give a new one the project's configs and python models."""
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a folder")
    try:
        repository.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=repository, prefix=".write-test.")
        probe.close()
    except OSError as exc:
        raise RepositoryError(f"cannot write to repository {repository}: {exc.strerror or exc}") from None
    if repository.resolve() != PROJECT_REPOSITORY.resolve() and not (repository / MODEL / "config.pbtxt").is_file():
        # A fresh repository gets the project's layout: configs, labels-free, no versions.
        def skip(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if (n.isdigit() and Path(folder).name == MODEL) or n in ("labels.txt", "__pycache__") or n.startswith(".")]

        for item in PROJECT_REPOSITORY.iterdir():
            if item.is_dir() and not (repository / item.name).exists():
                shutil.copytree(item, repository / item.name, ignore=skip)
    (repository / MODEL).mkdir(exist_ok=True)
    return repository


def choose_version(repository: Path, requested: int | None, force: bool) -> int:
    existing = versions(repository)
    version = requested if requested is not None else (max(existing, default=0) + 1)
    if version < 1:
        raise RepositoryError(f"--version must be >= 1, got {version}")
    if version in existing and not force:
        raise RepositoryError(f"{repository / MODEL / str(version)} already exists (pass --force to replace it, or --version N)")
    return version


@contextmanager
def staging(repository: Path) -> Iterator[Path]:
    """A scratch folder beside the versions, removed whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=repository / MODEL))
    _readable(folder, directory=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_labels(repository: Path, classes: list[str], version: int, force: bool) -> None:
    """labels.txt is shared by all versions: refuse to relabel other versions silently."""
    labels = repository / MODEL / "labels.txt"
    others = [v for v in versions(repository) if v != version]
    if labels.is_file() and others and not force:
        current = labels.read_text(encoding="utf-8").splitlines()
        if current != classes:
            raise RepositoryError(
                f"{labels} lists {len(current)} classes for version(s) {others}, this model has {len(classes)} different ones "
                "(export into another --repository, or --force to relabel)"
            )


def commit(repository: Path, stage: Path, version: int, classes: list[str]) -> Path:
    """Move the staged version into place, then labels and class counts; undo on failure."""
    target = repository / MODEL / str(version)
    backup = None
    if target.exists():
        backup = target.with_name(f".replaced-{version}-{os.getpid()}")
        os.replace(target, backup)
    os.replace(stage, target)
    stage.mkdir()  # the staging context removes it again
    originals = {p: p.read_text(encoding="utf-8") for p in config_files(repository)}
    labels = repository / MODEL / "labels.txt"
    old_labels = labels.read_text(encoding="utf-8") if labels.is_file() else None
    try:
        _atomic_write(labels, "".join(f"{name}\n" for name in classes))
        for path, text in originals.items():
            updated, count = _PROBS_DIMS.subn(lambda m: f"{m.group(1)}{len(classes)}{m.group(3)}", text)
            if count == 0:
                raise RepositoryError(f"{path} has no PROBS output with dims to set the class count in")
            _atomic_write(path, updated)
    except BaseException:
        for path, text in originals.items():
            _atomic_write(path, text)
        if old_labels is None:
            labels.unlink(missing_ok=True)
        else:
            _atomic_write(labels, old_labels)
        shutil.rmtree(target, ignore_errors=True)
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return target


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "model.py").write_text(PYTHON_SHIM, encoding="utf-8")
    (folder / "export.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
