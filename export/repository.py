"""Building the served Triton model repository from the tracked template, all or nothing.

The template (``model_repository/``, tracked) is never written.  The served repository
(``contract.layout.default_repository()`` unless ``--repository``) is the template's files
plus version folders plus the values that follow from the model:

- the class count in every ``PROBS`` dims (alexnet's configs and the ensemble's),
- ``labels.txt`` (index order, for Triton's classification extension),
- the TensorRT config's ``max_batch_size``: the engine's optimisation profile of the latest
  version (Triton refuses a config that promises more than the engine takes), and the
  ensemble's, which may not exceed it.

A version is built in a staging folder inside ``alexnet/`` (Triton ignores non-numeric
folders), checked, then renamed into place; the configs and labels follow, each written
atomically.  A failure at any step restores what was there and removes what this export
added.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alexnet_server.contract import ENSEMBLE, MODEL, PROBS, files, layout
from alexnet_server.runtime import Version

# Triton loads <version>/model.py; the code is the template's, copied, never generated.
MODEL_CODE = Path(MODEL) / "model.py"
_PROBS_DIMS = re.compile(rf'(name:\s*"{PROBS}"[^}}]*?dims:\s*\[\s*)(-?\d+)(\s*\])', re.S)
_MAX_BATCH = re.compile(r"^(max_batch_size:\s*)(\d+)", re.M)
TENSORRT_CONFIG = Path(MODEL) / "config.pbtxt"
ENSEMBLE_CONFIG = Path(ENSEMBLE) / "config.pbtxt"


class RepositoryError(RuntimeError):
    """The repository cannot take this export; the message says why and what to do."""


def _template_files(template: Path = layout.TEMPLATE) -> list[Path]:
    """Every tracked template file, relative to the template (no versions, caches or dot-files)."""
    out = []
    for path in sorted(template.rglob("*")):
        rel = path.relative_to(template)
        if path.is_file() and not any(part.startswith(".") and part != ".gitkeep" or part == "__pycache__" for part in rel.parts):
            if rel != MODEL_CODE and not (rel.parts[0] == MODEL and len(rel.parts) > 2 and rel.parts[1].isdigit()):
                out.append(rel)  # alexnet's model.py goes into each version instead
    return out


def _is_config(rel: Path) -> bool:
    return rel.suffix == ".pbtxt" and rel.parts[0] in (MODEL, ENSEMBLE)


def render(rel: Path, text: str, num_classes: int, plan_max_batch: int | None) -> str:
    """A template config with the model's values in it (see the module doc)."""
    if not _is_config(rel):
        return text
    text, count = _PROBS_DIMS.subn(lambda m: f"{m.group(1)}{num_classes}{m.group(3)}", text)
    if count == 0:
        raise RepositoryError(f"template {rel} has no PROBS output with dims to set the class count in")
    if plan_max_batch is not None and rel in (TENSORRT_CONFIG, ENSEMBLE_CONFIG):
        def limit(m: re.Match) -> str:
            value = plan_max_batch if rel == TENSORRT_CONFIG else min(int(m.group(2)), plan_max_batch)
            return f"{m.group(1)}{value}"

        text = _MAX_BATCH.sub(limit, text, count=1)
    return text


def plan_max_batch(repository: Path) -> int | None:
    """The latest version's engine profile maximum, from its export.json (None: no engine)."""
    latest = Version.latest(repository)
    if latest is None or not latest.has("plan"):
        return None
    record = latest.record.tensorrt or {}
    return int(record["max_batch"]) if "max_batch" in record else None


def prepare(repository: Path) -> Path:
    """Check the served repository can be written (never the tracked template)."""
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a folder")
    if repository.resolve() == layout.TEMPLATE.resolve():
        raise RepositoryError(f"{repository} is the tracked template; export into a served repository (default {layout.default_repository()})")
    try:
        (repository / MODEL).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=repository, prefix=".write-test.")
        probe.close()
    except OSError as exc:
        raise RepositoryError(f"cannot write to repository {repository}: {exc.strerror or exc}") from None
    return repository


def choose_version(repository: Path, requested: int | None, force: bool) -> int:
    existing = layout.versions(repository)
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
    files.make_readable(folder, directory=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_labels(repository: Path, classes: list[str], version: int, force: bool) -> None:
    """labels.txt is shared by all versions: refuse to relabel other versions silently."""
    labels = repository / MODEL / layout.LABELS
    others = [v for v in layout.versions(repository) if v != version]
    if labels.is_file() and others and not force:
        current = labels.read_text(encoding="utf-8").splitlines()
        if current != classes:
            raise RepositoryError(
                f"{labels} lists {len(current)} classes for version(s) {others}, this model has {len(classes)} different ones "
                "(export into another --repository, or --force to relabel)"
            )


def write_version_files(staged: Version) -> None:
    """The python model's code (a copy of the template's) and export.json into a staged version."""
    shutil.copyfile(layout.TEMPLATE / MODEL_CODE, staged.file("code"))
    files.make_readable(staged.file("code"))
    staged.record.write(staged.folder)


def sync_template(repository: Path, num_classes: int) -> None:
    """Write the template's files into ``repository`` with the model's values, each atomically.

    On failure every file is put back as it was (or removed, if this call created it)."""
    max_batch = plan_max_batch(repository)
    targets = {rel: repository / rel for rel in _template_files()}
    originals = {rel: path.read_bytes() if path.is_file() else None for rel, path in targets.items()}
    try:
        for rel, path in targets.items():
            text = (layout.TEMPLATE / rel).read_bytes()
            if _is_config(rel):
                text = render(rel, text.decode("utf-8"), num_classes, max_batch).encode("utf-8")
            if originals[rel] != text:
                files.atomic_write(path, text)
    except BaseException:
        for rel, old in originals.items():
            if old is None:
                targets[rel].unlink(missing_ok=True)
            elif targets[rel].is_file() and targets[rel].read_bytes() != old:
                files.atomic_write(targets[rel], old)
        raise


def commit(repository: Path, stage: Path, version: int, classes: list[str]) -> Path:
    """Move the staged version into place, then labels and the template's files; undo on failure."""
    target = repository / MODEL / str(version)
    backup = None
    if target.exists():
        backup = target.with_name(f".replaced-{version}-{os.getpid()}")
        os.replace(target, backup)
    os.replace(stage, target)
    stage.mkdir()  # the staging context removes it again
    labels = repository / MODEL / layout.LABELS
    old_labels = labels.read_bytes() if labels.is_file() else None
    try:
        files.atomic_write(labels, "".join(f"{name}\n" for name in classes))
        sync_template(repository, len(classes))
    except BaseException:
        if old_labels is None:
            labels.unlink(missing_ok=True)
        else:
            files.atomic_write(labels, old_labels)
        shutil.rmtree(target, ignore_errors=True)
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return target
