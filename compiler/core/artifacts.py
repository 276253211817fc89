"""Atomic output directories and file hashes: a stage writes into a temporary directory beside its
target and renames it into place, so a failed run leaves nothing half-written, and replaces only a
directory it can prove it wrote earlier."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compiler.core.errors import CompilerError

MANIFEST = "manifest.json"  # a build's record of itself, at the root of every repository it writes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root, sorted."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def check_replaceable(target: Path, replaceable: Callable[[Path], bool], what: str) -> None:
    """Raise unless `target` is absent, an empty directory, or one `replaceable` vouches for."""
    target = Path(target)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or replaceable(target))):
        raise CompilerError(f"{target}: exists and is not {what}; choose another --out or remove it")


@contextmanager
def atomic_directory(target: Path, replaceable: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes `target` when the block succeeds.

    An existing `target` must be empty or pass `replaceable` (e.g. "it is an earlier build"); otherwise
    nothing is written and a CompilerError names the directory.
    """
    target = Path(target)
    check_replaceable(target, replaceable, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
        os.replace(tmp, target)
        shutil.rmtree(old)  # only reached for an empty target or one `replaceable` vouched for
    else:
        os.replace(tmp, target)
