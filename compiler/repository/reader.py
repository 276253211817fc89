"""Reading a built repository: which models do the ensemble's work, where its graphs are, which process holds the
row cache, and its configs, parsed with Triton's schema (and written back the same way)."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.artifacts import MANIFEST
from compiler.core.names import COMPOSING, ENCODER, ENSEMBLE, SCORER, SPLIT

SPLIT_ENCODER_FILE = "encoder.onnx"  # beside stca_split's model.onnx (the scorer): the graph that runs first
CACHE_MODELS = (SPLIT, ENCODER, SCORER)  # the models whose process may hold the history row cache


def composing(repo: Path) -> dict[str, tuple[str, ...]]:
    """names.COMPOSING as a built repository serves it: the ensemble's work is stca_split's where the halves share a
    process."""
    return {**COMPOSING, ENSEMBLE: (SPLIT,)} if (Path(repo) / SPLIT).is_dir() else COMPOSING


def half_files(repo: Path) -> tuple[Path, Path]:
    """The history encoder's and the scorer's ONNX files in a built repository (python or onnxruntime target), whether
    its halves are one model (stca_split) or two."""
    split = Path(repo) / SPLIT / "1"
    if split.is_dir():
        return split / SPLIT_ENCODER_FILE, split / "model.onnx"
    return Path(repo) / ENCODER / "1" / "model.onnx", Path(repo) / SCORER / "1" / "model.onnx"


def cache_holder(repo: Path) -> str | None:
    """The model of a built repository whose process serves the history row cache (history_cache_bytes > 0), if any."""
    for model in CACHE_MODELS:
        path = Path(repo) / model / "config.pbtxt"
        param = read_config(path).parameters.get("history_cache_bytes") if path.is_file() else None
        if param is not None and int(param.string_value or 0) > 0:
            return model
    return None


def cache_multiplicity(repo: Path) -> str | None:
    """Where a built repository's row cache sends each distinct history row once, the output that counts a repeated
    row (compiler.passes.history_multiset); None where it sends every row, or serves no cache."""
    holder = cache_holder(repo)
    if holder is None:
        return None
    return json.loads(read_config(Path(repo) / holder / "config.pbtxt").parameters["history_cache"].string_value).get("multiplicity")


def linked_copy(repo: Path, copy: Path, models: tuple[str, ...] | None = None, with_manifest: bool = False) -> Path:
    """A copy of a repository's model directories (every one, or those of `models` it has), hard-linked: the graphs
    are large. Change its configs with update_config, which replaces a file instead of writing through the link.
    `with_manifest`: the build record too, copied (a later step may rewrite it: compiler.measure.tune)."""
    for model in sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt")):
        if models is None or model in models:
            shutil.copytree(Path(repo) / model, Path(copy) / model, copy_function=os.link)
    if with_manifest:
        shutil.copy2(Path(repo) / MANIFEST, Path(copy) / MANIFEST)
    return Path(copy)


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's schema; an unknown field or enum raises ParseError."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def write_config(repo: Path, config: mc.ModelConfig) -> list[Path]:
    path = repo / config.name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = text_format.MessageToString(config)
    # proto3 leaves default values out; say max_batch_size 0 (no batch dim: L and N are -1 dims) explicitly.
    text = text.replace(f'name: "{config.name}"\n', f'name: "{config.name}"\nmax_batch_size: 0\n', 1)
    path.write_text(text)
    return [path]


# The Python-backend stub starts its interpreter with an isolated config (PYTHONDONTWRITEBYTECODE is ignored) and
# imports model.py before any line of it runs, so Python would write __pycache__/ beside it and the served repository
# would no longer match its manifest. A plain file of that name makes the write fail, which Python skips silently.


def update_config(repo: Path, model: str, change: Callable[[mc.ModelConfig], None]) -> list[Path]:
    """Read `model`'s config in `repo`, let `change` edit it, and replace the file (validated by Triton's schema).
    Replaced, never edited in place: a copied repository's files may be hard links to the original's."""
    path = Path(repo) / model / "config.pbtxt"
    config = read_config(path)
    change(config)
    path.unlink()
    return write_config(repo, config)
