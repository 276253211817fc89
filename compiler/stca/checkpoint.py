"""Load stage: a checkpoint directory (config JSON + safetensors weights) -> an STCA module.

    ckpt/config.json        {"format": "stca-checkpoint", "version": 1, "model_config": {...}}
    ckpt/model.safetensors  the state dict
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compiler.core.artifacts import atomic_directory
from compiler.core.errors import CompilerError
from compiler.stca.model import STCA, STCAConfig

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "stca-checkpoint", 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_checkpoint(model: STCA, directory: Path, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically; an existing directory is replaced only if it is a checkpoint."""
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_config": model.config.to_dict(), **(extra or {})}
    with atomic_directory(directory, _is_checkpoint, "a checkpoint") as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    return Path(directory)


def load_config(directory: Path) -> STCAConfig:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CompilerError(f"checkpoint {directory}: no such directory")
    if not path.is_file():
        raise CompilerError(f"checkpoint {directory}: {CONFIG_FILE} is missing (a checkpoint is {CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompilerError(f"checkpoint {directory}: {CONFIG_FILE} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or "model_config" not in meta:
        raise CompilerError(f"checkpoint {directory}: {CONFIG_FILE} is not an stca-checkpoint config (no format/model_config)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CompilerError(f"checkpoint {directory}: version {meta.get('version')} is not {CHECKPOINT_VERSION}")
    try:
        return STCAConfig.from_dict(meta["model_config"])
    except TypeError as e:
        raise CompilerError(f"checkpoint {directory}: model_config does not fit STCAConfig ({e})") from e


def load_model(directory: Path, **overrides) -> STCA:
    """The checkpoint's model in eval mode; `overrides` replace config fields that do not change weights."""
    directory = Path(directory)
    config = load_config(directory)
    if overrides:
        config = STCAConfig.from_dict({**config.to_dict(), **overrides})
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CompilerError(f"checkpoint {directory}: {WEIGHTS_FILE} is missing")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise CompilerError(f"checkpoint {directory}: {WEIGHTS_FILE} is unreadable or truncated ({e})") from e
    model = STCA(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CompilerError(
            f"checkpoint {directory}: weights do not match its config: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CompilerError(
                f"checkpoint {directory}: {name} has shape {list(tensor.shape)}, "
                f"its config implies {list(expected[name].shape)}"
            )
    model.load_state_dict(weights)
    return model.eval()


def seeded_model(config: STCAConfig, seed: int = 0) -> STCA:
    """An untrained model with deterministic weights (tests, shapes, cost studies)."""
    torch.manual_seed(seed)
    return STCA(config).eval()


def _is_checkpoint(directory: Path) -> bool:
    return {p.name for p in directory.iterdir()} <= {CONFIG_FILE, WEIGHTS_FILE}
