"""Calibration sets: generated or from your requests, one request per file, hashed, validated."""

import json

import numpy as np
import pytest

from compiler.core.contract import INPUT_NAMES
from compiler.core.errors import CompilerError
from compiler.precision import calibrate
from compiler.stca.data import sample_requests
from compiler.stca.model import preset


def test_generated_sets_follow_kuairand_lengths_and_are_reproducible(tmp_path):
    config = preset("tiny")
    a = calibrate.generate(tmp_path / "a", config, count=40, n_candidates=16, seed=3)
    b = calibrate.generate(tmp_path / "b", config, count=40, n_candidates=16, seed=3)
    assert a.sha256 == b.sha256 and a.count == 40
    assert max(a.lengths) == config.max_history and sum(L == config.max_history for L in a.lengths) >= 8  # ~40% at the cap
    assert len(list((tmp_path / "a").glob("request-*.npz"))) == 40  # one request per file: read one at a time
    first = next(a.requests())
    assert set(first) == set(INPUT_NAMES) and first["history_item_ids"].shape == (a.lengths[0],)
    assert calibrate.generate(tmp_path / "c", config, count=40, n_candidates=16, seed=4).sha256 != a.sha256


def test_your_own_requests_from_json_lines(tmp_path):
    config = preset("tiny")
    lines = []
    for r in sample_requests(config, [5, 70], seed=1, n_candidates=4):
        lines.append(json.dumps({k: v.tolist() for k, v in r.inputs.items()}))
    source = tmp_path / "mine.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = calibrate.from_jsonl(tmp_path / "set", source, config)
    assert result.lengths == (5, 70)
    loaded = calibrate.load(tmp_path / "set")
    assert loaded.sha256 == result.sha256
    np.testing.assert_array_equal(list(loaded.requests())[1]["history_age_s"], json.loads(lines[1])["history_age_s"])


def test_bad_requests_are_refused_with_the_line(tmp_path):
    config = preset("tiny")
    good = json.dumps({k: v.tolist() for k, v in next(sample_requests(config, [5], seed=1, n_candidates=4)).inputs.items()})
    bad = json.loads(good)
    bad["history_age_s"][0] = -1.0
    (tmp_path / "r.jsonl").write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(CompilerError, match=r"request 1: history_age_s: value -1.0 is negative"):
        calibrate.from_jsonl(tmp_path / "set", tmp_path / "r.jsonl", config)
    (tmp_path / "s.jsonl").write_text("{not json\n")
    with pytest.raises(CompilerError, match="s.jsonl line 1: not JSON"):
        calibrate.from_jsonl(tmp_path / "set2", tmp_path / "s.jsonl", config)
    assert not (tmp_path / "set").exists() and not (tmp_path / "set2").exists()


def test_loading_a_directory_that_is_not_a_set(tmp_path):
    with pytest.raises(CompilerError, match="no readable calibration.json"):
        calibrate.load(tmp_path)
