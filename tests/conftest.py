"""Shared fixtures: small checkpoints and builds are made once per session (they cost seconds each)."""

from pathlib import Path

import pytest

from compiler.stca.checkpoint import save_checkpoint, seeded_model
from compiler.stca.model import preset


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained, seeded tiny model (D=16) as a checkpoint directory."""
    return save_checkpoint(seeded_model(preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained briefly on the synthetic world: enough signal for AUC-based checks."""
    from compiler.stca.train import TrainConfig, train

    # ~40 s; the paper's projected form learns a little slower at D=16 than the direct one did at 3,000 steps
    cfg = TrainConfig(preset="tiny", steps=4_000, train_window=512, n_candidates=64, eval_requests=16, eval_lengths=(256,))
    return train(cfg, tmp_path_factory.mktemp("ckpt") / "trained").checkpoint
