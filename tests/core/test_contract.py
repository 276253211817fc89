"""The request contract that client, server and verify share."""

import numpy as np
import pytest

from compiler.core.contract import (
    CANDIDATE,
    REQUEST,
    Contract,
    Input,
    RequestError,
    load_request,
    load_requests,
    save_request,
    stca_contract,
)
from compiler.stca.data import sample_requests
from compiler.stca.model import preset

LIMITS = stca_contract(preset("tiny", max_history=100, max_candidates=10, n_user_fields=4, n_candidate_fields=3, n_actions=8))


@pytest.fixture
def request_inputs():
    return next(sample_requests(preset("tiny"), [20], seed=0, n_candidates=5)).inputs


def test_a_good_request_passes_and_reports_its_sizes(request_inputs):
    assert LIMITS.validate(request_inputs) == {"L": 20, "N": 5}


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
        (lambda r: r["history_actions"].__setitem__(4, 8), r"history_actions: value 8 is outside 0\.\.7 \(the model has 8 action types\)"),
    ],
)
def test_bad_requests_name_the_input_and_the_limit(request_inputs, mutate, message):
    mutate(request_inputs)
    with pytest.raises(RequestError, match=message):
        LIMITS.validate(request_inputs)


def test_a_subset_of_inputs_is_checked_alone(request_inputs):
    """The scorer checks only the candidate inputs it receives."""
    only = {k: request_inputs[k] for k in ("candidate_item_ids", "candidate_features")}
    assert LIMITS.validate(only, names=only) == {"N": 5}


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
    """A scoring client needs numpy and tritonclient only: the model names come from compiler.core.names."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, compiler.serving.client; print(sorted(m for m in ('torch', 'onnx', "
                             "'onnxruntime', 'tritonclient.grpc.model_config_pb2') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_model_and_the_exported_graph_follow_the_declared_contract():
    """The forward signature is the contract's input order; the export's inputs have its dtypes and dims."""
    import inspect

    import onnx

    from compiler.core.contract import INPUT_NAMES, SPECS
    from compiler.passes.export import export
    from compiler.stca.checkpoint import seeded_model
    from compiler.stca.model import STCA

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


def test_the_contract_survives_json_as_the_served_configs_carry_it(request_inputs):
    import json

    again = Contract.from_dict(json.loads(json.dumps(LIMITS.to_dict())))
    assert again == LIMITS
    request_inputs["history_actions"][4] = 8
    with pytest.raises(RequestError, match="history_actions: value 8"):
        again.validate(request_inputs)


# A user's model: its own names, a fixed int dim, one declared range, no padding rule.
USER = Contract(
    (Input("clicks", "int64", ("hist", 2), REQUEST, high=99), Input("items", "int32", ("cands",), CANDIDATE),
     Input("price", "float32", ("cands",), CANDIDATE)),
    ("p",), limits={"hist": 50, "cands": 8}, candidate_dim="cands", history_dim="hist", output_candidate_axis=0)


def test_a_user_contract_checks_its_own_dims_and_declared_ranges_only():
    good = USER.generate({"hist": 5, "cands": 3}, seed=1)
    assert {k: v.shape for k, v in good.items()} == {"clicks": (5, 2), "items": (3,), "price": (3,)}
    assert USER.validate(good) == {"hist": 5, "cands": 3}
    assert good["clicks"].max() <= 99  # generated within the declared range
    with pytest.raises(RequestError, match=r"clicks: dim 1 is 3, the model has 2"):
        USER.validate({**good, "clicks": np.zeros((5, 3), np.int64)})
    with pytest.raises(RequestError, match=r"clicks: value 100 is above 99$"):
        USER.validate({**good, "clicks": np.full((5, 2), 100, np.int64)})
    with pytest.raises(RequestError, match=r"items: 9 candidates is outside 1\.\.8"):
        USER.validate({**USER.generate({"hist": 5, "cands": 9}), "items": np.zeros(9, np.int32)})
    assert USER.validate({**good, "items": np.full(3, -7, np.int32)})  # no range declared: any id goes
    padded = USER.left_pad(good, 2)
    assert padded["clicks"].shape == (7, 2) and (padded["clicks"][:2] == 0).all()


def test_requests_as_json_lines_take_the_contract_dtypes(tmp_path):
    good = USER.generate({"hist": 4, "cands": 2}, seed=3)
    (tmp_path / "r.jsonl").write_text("\n".join([__import__("json").dumps({k: v.tolist() for k, v in good.items()})] * 2) + "\n\n")
    loaded = load_requests(tmp_path / "r.jsonl", USER)
    assert len(loaded) == 2 and loaded[1]["items"].dtype == np.int32
    (tmp_path / "bad.jsonl").write_text('{"clicks": [[1, 2]]}\n{"nope": 1}\n')
    with pytest.raises(RequestError, match=r"line 2: unknown input\(s\) \['nope'\]"):
        load_requests(tmp_path / "bad.jsonl", USER)
