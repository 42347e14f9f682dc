"""What a stage imports, read from the code: the project's modules it reaches and every other package they import.

A stage is named by its entry modules (``alexnet_server.train``, or a file such as a Triton
model's ``model.py``).  The walk parses each module (``ast``, nothing is imported), follows every
import of a project module -- module-level and inside functions, so it over-approximates what a
run touches -- and records each import of another package with where it stands:

- ``eager``: executed whenever the entry is imported: at module level (class bodies and
  module-level ``if`` blocks included; ``if TYPE_CHECKING:`` blocks are never run and are
  skipped) of a module the entry reaches through module-level imports alone;
- lazy (not eager): inside a function, or in a module only a function imports -- executed
  only when that code runs;
- ``guarded``: inside a ``try`` that catches ImportError (or a parent of it): the code copes
  without the package.

The GPU check's pre-flight imports what this finds in the interpreter each stage will run, and
its bundle carries the packages the GPU machine is not known to have (scripts/gpu_check.py).
Standard library only, so it runs under any Python the check meets.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS = "alexnet_server"  # the one import name; alexnet_server.<folder> is the checkout's top-level <folder>
_CATCHES_IMPORT_ERROR = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


@dataclass(frozen=True)
class Use:
    """One import of another package: ``module`` (dotted, as written) at ``where`` (file:line)."""

    module: str
    where: str
    scope: str  # "module level" or "in <function>"
    guarded: bool
    eager: bool  # runs whenever the entry is imported (see the module's docstring)

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


@dataclass
class Walk:
    modules: list[str] = field(default_factory=list)  # project modules reached, dotted, in the order found
    eager: list[str] = field(default_factory=list)  # those importing the entries imports (file entries as "<path>")
    files: dict[str, Path] = field(default_factory=dict)  # module -> its file (entry files by their path)
    uses: list[Use] = field(default_factory=list)  # imports of other packages


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (``alexnet_server.runtime.version`` -> runtime/version.py), None if not the project's."""
    parts = module.split(".")
    if parts[0] != NS:
        return None
    base = root / NS if len(parts) == 1 else root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``: importing a submodule runs its packages' ``__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "__future__"


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, is_package: bool) -> None:
        self.module, self.path, self.is_package = module, path, is_package
        self.scope: list[str] = []
        self.guards = 0
        self.found: list[tuple[str, list[str], int, str, bool]] = []  # (module, names, line, scope, guarded)

    def _record(self, module: str, names: list[str], line: int) -> None:
        scope = f"in {'.'.join(self.scope)}" if self.scope else "module level"
        self.found.append((module, names, line, scope, self.guards > 0))

    def visit_FunctionDef(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = lambda self, node: None  # noqa: E731 - no imports in a lambda

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        catches = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            catches |= {k.id if isinstance(k, ast.Name) else getattr(k, "attr", "") for k in kinds if k is not None}
            if handler.type is None:
                catches.add("BaseException")
        guarded = bool(catches & _CATCHES_IMPORT_ERROR)
        self.guards += guarded
        for child in node.body:
            self.visit(child)
        self.guards -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._record(alias.name, [], node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolved against this module's package
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self._record(base, [a.name for a in node.names], node.lineno)


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int, str, bool]]:
    visitor = _Visitor(module, path, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor.found


def _reach(entries: list[str | Path], root: Path, eager_only: bool) -> dict[str, Path]:
    """Project modules (and entry files) reached from ``entries``, in the order found."""
    files: dict[str, Path] = {}
    queue: list[tuple[str, Path]] = []

    def add(module: str) -> None:
        for name in [*_parents(module), module]:
            path = module_file(name, root)
            if path is not None and name not in files:
                files[name] = path
                queue.append((name, path))

    for entry in entries:
        if isinstance(entry, Path):
            name = f"<{entry.relative_to(root) if entry.is_relative_to(root) else entry}>"
            files[name] = entry
            queue.append((name, entry))
        else:
            add(entry)
            if module_file(entry, root) is not None and module_file(entry, root).name == "__init__.py":
                add(f"{entry}.__main__")  # python -m runs the package's __main__
    while queue:
        module, path = queue.pop(0)
        for target, names, _line, scope, _guarded in _imports(path, module):
            if target.split(".")[0] != NS or (eager_only and scope != "module level"):
                continue
            add(target)
            for name in names:  # "from alexnet_server.runtime import version": a submodule, or a name in the package
                if module_file(f"{target}.{name}", root):
                    add(f"{target}.{name}")
    return files


def walk(entries: list[str | Path], root: Path = ROOT) -> Walk:
    """Walk from ``entries``: dotted project modules (``alexnet_server.server``: its ``__init__`` and,
    for a package run with ``python -m``, its ``__main__``) or paths of files run directly."""
    eager = _reach(entries, root, eager_only=True)
    files = _reach(entries, root, eager_only=False)
    result = Walk(modules=list(files), eager=list(eager), files=files)
    # A file run directly imports the modules beside it (its folder is sys.path[0]): not packages.
    beside = {p.stem for entry in entries if isinstance(entry, Path) for p in entry.parent.glob("*.py")}
    for module, path in files.items():
        where = path.relative_to(root) if path.is_relative_to(root) else path
        for target, _names, line, scope, guarded in _imports(path, module):
            top = target.split(".")[0]
            if target and top != NS and not _stdlib(top) and top not in beside:
                result.uses.append(Use(target, f"{where}:{line}", scope, guarded, module in eager and scope == "module level"))
    return result


if __name__ == "__main__":
    # python scripts/import_walk.py alexnet_server.server [path/to/model.py ...]: what they import, by package
    found = walk([Path(a).resolve() if a.endswith(".py") else a for a in sys.argv[1:]] or [NS])
    print(f"{len(found.modules)} project modules")
    print(f"{len(found.eager)} of them imported by the entries themselves")
    for use in sorted(found.uses, key=lambda u: (u.top, not u.eager, u.where)):
        kind = "eager" if use.eager else "lazy"
        print(f"  {use.top:<16} {use.module:<40} {use.where:<42} {kind:<6}{use.scope}{' (guarded)' if use.guarded else ''}")
