"""Which face_pipelines source a piece of code runs, and a digest of it.

A training run's identity includes the digest of the source it runs (`engine.fit` compares it before
resuming or reusing `train_state/last.pt`), and the DVC dependency test checks each stage's deps
against the same file set.

The file set is the *static import closure* inside the package: start from some modules (the
training step's, the engine's, the models'), read every `import` / `from ... import` in them with
`ast` (function-level imports included), follow those that land in face_pipelines, and add the
`__init__.py` of every package on the way (importing `a.b.c` runs `a/__init__.py` and
`a/b/__init__.py`). Why this and not the alternatives:

- Not "the modules loaded at call time" (`sys.modules`): that set depends on what the process
  happened to import before - a `kedro run` imports every pipeline through the registry, a torchrun
  worker or a notebook far fewer - so the same run would get different digests in different
  processes, and DDP ranks could disagree on whether to resume.
- Not the whole package tree: editing a reporting figure or another generator's pipeline would
  throw away an interrupted paper-scale recognizer run that does not execute that code.
- The closure depends only on file contents, so it is the same in every process and on every
  machine with the same files, and it costs one `ast.parse` per file (parses are cached per
  process by path, size and mtime; the mtime is a cache key only and never enters a digest).

The digest hashes each file's bytes (CRLF read as LF, so a Windows checkout matches) under its path
relative to the package root: no absolute paths, no mtimes. Imports built from strings at run time
(`importlib.import_module(name)`) are invisible to it; the package has none.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "face_pipelines"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

_IMPORTS_CACHE: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}


@dataclass(frozen=True)
class SourceDigest:
    """The face_pipelines files some code runs and one digest over them.

    Attributes:
        digest: sha256 (hex) over the sorted (path, content hash) pairs.
        files: {path relative to the package root, POSIX ("training/engine.py"): sha256 of its
            content, first 16 hex digits}.
    """

    digest: str
    files: dict[str, str] = field(default_factory=dict)

    def changed_files(self, recorded: Mapping[str, str]) -> list[str]:
        """Files added, removed or edited relative to an earlier `files` mapping, sorted."""
        return sorted(
            set(self.files) ^ set(recorded)
            | {p for p in set(self.files) & set(recorded) if self.files[p] != recorded[p]}
        )


def module_file(name: str) -> Path | None:
    """The source file of face_pipelines module or package `name`, or None if there is none."""
    if not _in_package(name):
        return None
    base = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(modules: Iterable[str]) -> dict[str, Path]:
    """Every face_pipelines module the given modules import, directly or not, with its file.

    Args:
        modules: dotted module names. Modules outside the package (a test, a user script) are not
            part of the result but their face_pipelines imports are followed; those whose source
            cannot be found are skipped.

    Returns:
        {module name: source file}, the roots inside the package and all parent packages included.
    """
    todo: list[str] = []
    for name in modules:
        if _in_package(name):
            todo.append(name)
        elif (outside := _outside_module_file(name)) is not None:
            todo.extend(_imports(outside, name))
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in found or not _in_package(name) or (path := module_file(name)) is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(path, name))
    return found


def source_files(modules: Iterable[str]) -> dict[str, Path]:
    """`import_closure` keyed by path relative to the package root (POSIX), sorted by that path."""
    files = {p.relative_to(PACKAGE_ROOT).as_posix(): p for p in import_closure(modules).values()}
    return dict(sorted(files.items()))


def source_digest(modules: Iterable[str]) -> SourceDigest:
    """The digest of the face_pipelines source that `modules` run (see the module docstring)."""
    files = {rel: _content_hash(path) for rel, path in source_files(modules).items()}
    blob = "".join(f"{rel}\0{digest}\n" for rel, digest in files.items())
    return SourceDigest(hashlib.sha256(blob.encode()).hexdigest(), files)


def _in_package(name: str) -> bool:
    return name.split(".")[0] == PACKAGE


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()[:16]


def _outside_module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return Path(file) if file and file.endswith(".py") and Path(file).is_file() else None


def _imports(path: Path, name: str) -> frozenset[str]:
    """Modules named by the import statements of `path` (module `name`), candidates included:
    `from a import b` yields both `a` and `a.b` (b may be a submodule; a name that is not a
    module simply has no file and is dropped by the caller)."""
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _IMPORTS_CACHE.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, name, is_package)
            if base is None:
                continue
            if base:
                out.add(base)
            out.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    result = frozenset(out)
    _IMPORTS_CACHE[path] = (key, result)
    return result


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str | None:
    """The absolute name of `from <level dots><module> import ...` inside module `importer`."""
    if level == 0:
        return module
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 > len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)
