"""Training learns the planted signal and leaves a loadable checkpoint that records its AUC."""

import json
import subprocess
import sys

import pytest

from compiler.stca.checkpoint import load_model

pytestmark = pytest.mark.slow  # trains models


def test_a_short_training_run_beats_chance(trained_checkpoint):
    meta = json.loads((trained_checkpoint / "config.json").read_text())
    auc = meta["training"]["auc"]["256"]
    assert set(auc) == {"finish", "skip", "like"}
    assert min(auc.values()) > 0.54, auc  # a tiny model after 4,000 requests: weak, but ~3 standard errors above chance
    assert load_model(trained_checkpoint).config.n_heads == 2


def test_train_cli_writes_a_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-m", "compiler", "train", "--preset", "tiny", "--steps", "20", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "held-out AUC" in result.stderr
    assert "this model has not learned the signal in its data" in result.stderr  # 20 steps: it has not
    assert load_model(out).config.n_layers == 2
