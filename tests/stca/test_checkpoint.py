"""Checkpoints: a round trip keeps the weights; bad checkpoints are refused with a named problem."""

import json

import numpy as np
import pytest
import torch

from compiler.core.errors import CompilerError
from compiler.stca.checkpoint import load_model, save_checkpoint, seeded_model
from compiler.stca.model import preset


def test_round_trip_keeps_config_and_weights(tmp_path):
    model = seeded_model(preset("tiny", attention="reordered"), seed=5)
    loaded = load_model(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_overrides_change_serving_fields_only(tiny_checkpoint):
    model = load_model(tiny_checkpoint, attention="reordered", max_history=2_000)
    assert (model.config.attention, model.config.max_history) == ("reordered", 2_000)


def test_missing_directory(tmp_path):
    with pytest.raises(CompilerError, match="no such directory"):
        load_model(tmp_path / "nope")


def test_missing_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(CompilerError, match="model.safetensors is missing"):
        load_model(tmp_path)


def test_truncated_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompilerError, match="unreadable or truncated"):
        load_model(tmp_path)


def test_weights_that_do_not_match_the_config(tmp_path, tiny_checkpoint):
    meta = json.loads((tiny_checkpoint / "config.json").read_text())
    meta["model_config"]["head_dim"] = 16  # the weights were saved for head_dim 8
    (tmp_path / "config.json").write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CompilerError, match=r"[\w.]+\.weight has shape \[16, 32\], its config implies \[32, 64\]"):
        load_model(tmp_path)


def test_config_that_is_not_json_or_not_ours(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CompilerError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768}))
    with pytest.raises(CompilerError, match="not an stca-checkpoint config"):
        load_model(tmp_path)


def test_saving_over_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CompilerError, match="exists and is not a checkpoint"):
        save_checkpoint(seeded_model(preset("tiny")), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_seeded_models_are_reproducible():
    a, b = seeded_model(preset("tiny"), seed=1), seeded_model(preset("tiny"), seed=1)
    assert all(np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_checkpoint_written_before_the_fusion_field_loads_as_the_direct_form(tmp_path):
    """Older checkpoints have no `fusion` in their config and SwiGLUs that read the concatenation: they load
    as fusion="direct" and score as saved; a new model is the paper's projected form."""
    from compiler.stca.data import sample_requests

    older = seeded_model(preset("tiny", fusion="direct"), seed=3)
    path = save_checkpoint(older, tmp_path / "older")
    meta = json.loads((path / "config.json").read_text())
    del meta["model_config"]["fusion"]
    (path / "config.json").write_text(json.dumps(meta))
    loaded = load_model(path)
    assert loaded.config.fusion == "direct"
    request = next(sample_requests(loaded.config, [30], seed=0, n_candidates=5)).inputs
    np.testing.assert_array_equal(loaded.score(request), older.score(request))
    assert preset("tiny").fusion == "projected"
    with pytest.raises(CompilerError, match="weights do not match its config"):  # never read as the other form
        meta["model_config"]["fusion"] = "projected"
        (path / "config.json").write_text(json.dumps(meta))
        load_model(path)
