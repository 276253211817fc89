"""The request contract that client, server and verify share."""

import numpy as np
import pytest

from compiler.data import sample_requests
from compiler.model import preset
from compiler.contract import RequestError, RequestLimits, load_request, save_request

LIMITS = RequestLimits(max_history=100, max_candidates=10, n_user_fields=4, n_candidate_fields=3, n_actions=8)


@pytest.fixture
def request_inputs():
    return next(sample_requests(preset("tiny"), [20], seed=0, n_candidates=5)).inputs


def test_a_good_request_passes_and_reports_its_sizes(request_inputs):
    assert LIMITS.validate(request_inputs) == (20, 5)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(history_item_ids=r["history_item_ids"][:0], history_actions=r["history_actions"][:0], history_age_s=r["history_age_s"][:0]), r"history length 0 is outside 1\.\.100"),
        (lambda r: r.update({k: np.resize(r[k], 101) for k in ("history_item_ids", "history_actions", "history_age_s")}), r"history length 101 is outside 1\.\.100 \(the built maximum\)"),
        (lambda r: r.update(candidate_item_ids=r["candidate_item_ids"][:0], candidate_features=r["candidate_features"][:0]), r"0 candidates is outside 1\.\.10"),
        (lambda r: r.update(history_age_s=r["history_age_s"].astype(np.float64)), "history_age_s: dtype float64 is not float32"),
        (lambda r: r.update(history_item_ids=r["history_item_ids"][None]), r"history_item_ids: rank 2 .* is not 1"),
        (lambda r: r.update(history_actions=r["history_actions"][:-1]), "history_actions: length 19 does not match history_item_ids length 20"),
        (lambda r: r["history_age_s"].__setitem__(3, np.nan), "history_age_s: 1 value\\(s\\) are NaN"),
        (lambda r: r["history_age_s"].__setitem__(3, -5.0), "history_age_s: value -5.0 is negative"),
        (lambda r: r["candidate_item_ids"].__setitem__(0, -1), "candidate_item_ids: value -1 is negative"),
        (lambda r: r.update(user_features=r["user_features"][:2]), "user_features: dim 0 is 2, the model has K = 4"),
        (lambda r: r["history_item_ids"].__setitem__(slice(None), 0), "every item is padding"),
        (lambda r: r.pop("history_actions"), "missing input"),
        (lambda r: r["history_actions"].__setitem__(4, 8), r"history_actions: action 8 is outside 0\.\.7 \(the model has 8 action types\)"),
    ],
)
def test_bad_requests_name_the_input_and_the_limit(request_inputs, mutate, message):
    mutate(request_inputs)
    with pytest.raises(RequestError, match=message):
        LIMITS.validate(request_inputs)


def test_a_subset_of_inputs_is_checked_alone(request_inputs):
    """The scorer checks only the candidate inputs it receives."""
    only = {k: request_inputs[k] for k in ("candidate_item_ids", "candidate_features")}
    assert LIMITS.validate(only, names=only) == (0, 5)


def test_json_round_trip(tmp_path, request_inputs):
    save_request(tmp_path / "r.json", request_inputs)
    loaded = load_request(tmp_path / "r.json")
    for name, value in request_inputs.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype


def test_json_with_unknown_input_or_bad_values(tmp_path):
    (tmp_path / "a.json").write_text('{"history_ids": [1]}')
    with pytest.raises(RequestError, match=r"unknown input\(s\) \['history_ids'\]"):
        load_request(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"history_item_ids": ["x"]}')
    with pytest.raises(RequestError, match="history_item_ids is not a int64 array"):
        load_request(tmp_path / "b.json")


def test_the_client_imports_neither_torch_nor_onnx():
    """A scoring client needs numpy and tritonclient only: the model names come from compiler.names."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, compiler.client; print(sorted(m for m in ('torch', 'onnx', "
                             "'onnxruntime', 'tritonclient.grpc.model_config_pb2') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_model_and_the_exported_graph_follow_the_declared_contract():
    """The forward signature is the contract's input order; the export's inputs have its dtypes and dims."""
    import inspect

    import onnx

    from compiler.contract import INPUT_NAMES, SPECS
    from compiler.export import export
    from compiler.load import seeded_model
    from compiler.model import STCA

    assert tuple(inspect.signature(STCA.forward).parameters)[1:] == INPUT_NAMES
    config = preset("tiny")
    fixed = {"K": config.n_user_fields, "F": config.n_candidate_fields}
    graph = export(seeded_model(config)).model.graph
    for value in graph.input:
        spec = SPECS[value.name]
        assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(spec.dtype)
        dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        assert [fixed.get(d, "symbolic") for d in spec.dims] == [d if isinstance(d, int) else "symbolic" for d in dims], value.name
    assert [v.name for v in graph.input] == list(INPUT_NAMES)


def test_limits_of_a_repository_built_before_the_action_check_still_load(request_inputs):
    """A served config's request_limits without n_actions (an older build) skip only that check."""
    older = RequestLimits(**{k: v for k, v in LIMITS.to_dict().items() if k != "n_actions"})
    request_inputs["history_actions"][4] = 8
    assert older.validate(request_inputs) == (20, 5)
