"""Tiny models for the tests, in one registry (like Polygraphy's tests/models/meta.py).

Besides STCA: two structurally different ranking models the partition pass must split without knowing
them, and hand-written ONNX graphs whose scorer reads a request-level shape.
"""

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from compiler.passes.export import export
from compiler.stca.checkpoint import seeded_model
from compiler.stca.model import preset


class DINStyle(nn.Module):
    """DIN-style target attention: each candidate weights the history through a small MLP on
    [h, c, h * c]; only the history embedding and a projection of it are request-level."""

    def __init__(self, vocab=500, d=8):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.history_proj = nn.Linear(d, d)
        self.attention_mlp = nn.Sequential(nn.Linear(3 * d, 16), nn.ReLU(), nn.Linear(16, 1))
        self.head = nn.Linear(2 * d, 1)
        self.vocab = vocab

    def forward(self, history_item_ids, candidate_item_ids):
        h = self.history_proj(self.embedding(history_item_ids % self.vocab))  # (L, d), request-level
        c = self.embedding(candidate_item_ids % self.vocab)  # (N, d)
        L, N = h.size(0), c.size(0)
        hh, cc = h.unsqueeze(0).expand(N, L, -1), c.unsqueeze(1).expand(N, L, -1)
        w = torch.softmax(self.attention_mlp(torch.cat([hh, cc, hh * cc], -1)).squeeze(-1), -1)  # (N, L)
        interest = w @ h  # (N, d)
        return torch.sigmoid(self.head(torch.cat([interest, c], -1)))  # (N, 1)


class TwoTower(nn.Module):
    """A user tower over profile features and pooled history, an item tower, a dot product."""

    def __init__(self, vocab=500, d=8):
        super().__init__()
        self.user_embedding = nn.Embedding(vocab, d)
        self.item_embedding = nn.Embedding(vocab, d)
        self.user_tower = nn.Sequential(nn.Linear(2 * d, 16), nn.ReLU(), nn.Linear(16, d))
        self.item_tower = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d))
        self.vocab = vocab

    def forward(self, user_ids, history_item_ids, candidate_item_ids):
        profile = self.user_embedding(user_ids % self.vocab).mean(0)  # (d,)
        history = self.item_embedding(history_item_ids % self.vocab).mean(0)  # (d,)
        user_vec = self.user_tower(torch.cat([profile, history]))  # (d,)
        item_vecs = self.item_tower(self.item_embedding(candidate_item_ids % self.vocab))  # (N, d)
        return torch.sigmoid(item_vecs @ user_vec).unsqueeze(-1)  # (N, 1)


def export_small(module: nn.Module, inputs: dict, dynamic: dict) -> onnx.ModelProto:
    """Export a test module the way compiler.passes.export does: dynamo, named symbolic dims."""
    dims = {name: torch.export.Dim(name, min=1, max=10_000) for name in {d for spec in dynamic.values() for d in spec.values()}}
    shapes = {k: {axis: dims[name] for axis, name in dynamic.get(k, {}).items()} or None for k in inputs}
    program = torch.onnx.export(
        module.eval(), tuple(torch.from_numpy(v) for v in inputs.values()), dynamo=True,
        dynamic_shapes=shapes, input_names=list(inputs), output_names=["scores"], opset_version=18,
    )
    return program.model_proto


# The two non-STCA ranking models: (module class, seed, example inputs, dynamic axes, request-level inputs).
RANKING_MODELS = {
    "din": (DINStyle, 1, {"history_item_ids": np.arange(1, 9, dtype=np.int64), "candidate_item_ids": np.arange(3, 7, dtype=np.int64)},
            {"history_item_ids": {0: "L"}, "candidate_item_ids": {0: "N"}}, {"history_item_ids"}),
    "two_tower": (TwoTower, 2, {"user_ids": np.array([3, 5, 7], dtype=np.int64), "history_item_ids": np.arange(1, 9, dtype=np.int64),
                                "candidate_item_ids": np.arange(3, 7, dtype=np.int64)},
                  {"history_item_ids": {0: "L"}, "candidate_item_ids": {0: "N"}}, {"user_ids", "history_item_ids"}),
}


def ranking_model(name: str) -> tuple[onnx.ModelProto, set[str]]:
    module_class, seed, inputs, dynamic, request_inputs = RANKING_MODELS[name]
    torch.manual_seed(seed)
    return export_small(module_class(), inputs, dynamic), request_inputs


def ranking_program(name: str) -> tuple[torch.export.ExportedProgram, set[str]]:
    """The same model (same seed, same weights) as a torch.export program, as a user would torch.export.save it."""
    module_class, seed, inputs, dynamic, request_inputs = RANKING_MODELS[name]
    torch.manual_seed(seed)
    dims = {d: torch.export.Dim(d, min=1, max=10_000) for spec in dynamic.values() for d in spec.values()}
    shapes = {k: {axis: dims[d] for axis, d in dynamic.get(k, {}).items()} or None for k in inputs}
    program = torch.export.export(module_class().eval(), tuple(torch.from_numpy(v) for v in inputs.values()), dynamic_shapes=shapes)
    return program, request_inputs


def din_model() -> tuple[onnx.ModelProto, set[str]]:
    return ranking_model("din")


def two_tower_model() -> tuple[onnx.ModelProto, set[str]]:
    return ranking_model("two_tower")


def shape_read_model(scorer_sees_length: bool = True) -> tuple[onnx.ModelProto, set[str]]:
    """The scorer divides by L = Shape(history)[0], a shape-only read of a request-level input.

    scorer_sees_length=True : hist_emb (L, 4) crosses the cut, so L is rebuilt from Shape(hist_emb).
    scorer_sees_length=False: only a pooled scalar crosses; no scorer-side tensor has L, so the shape
                              itself (an int64[1]) has to be shipped.
    """
    const = lambda name, array: numpy_helper.from_array(np.asarray(array), name)  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["history"], ["hist_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["hist_f", "axis1"], ["hist_col"]),
        helper.make_node("Mul", ["hist_col", "w_row"], ["hist_emb"]),  # (L, 4), request-level
        helper.make_node("Shape", ["history"], ["length"], start=0, end=1),  # shape-only
        helper.make_node("Cast", ["length"], ["length_f"], to=onnx.TensorProto.FLOAT),
    ]
    if scorer_sees_length:
        nodes += [
            helper.make_node("Unsqueeze", ["cand", "axis1"], ["cand_col"]),  # (N, 1)
            helper.make_node("MatMul", ["cand_col", "ones_1x4"], ["cand_mat"]),  # (N, 4)
            helper.make_node("Transpose", ["hist_emb"], ["hist_t"], perm=[1, 0]),  # (4, L)
            helper.make_node("MatMul", ["cand_mat", "hist_t"], ["att"]),  # (N, L)
            helper.make_node("ReduceSum", ["att", "axis1"], ["pooled"], keepdims=0),  # (N,)
        ]
    else:
        nodes += [
            helper.make_node("ReduceSum", ["hist_emb"], ["total"], keepdims=0),  # scalar, request-level
            helper.make_node("Mul", ["cand", "total"], ["pooled"]),  # (N,)
        ]
    nodes += [
        helper.make_node("Div", ["pooled", "length_f"], ["mean"]),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_read",
        [helper.make_tensor_value_info("history", onnx.TensorProto.INT64, ["L"]),
         helper.make_tensor_value_info("cand", onnx.TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 1])],
        initializer=[const("axis1", np.array([1], np.int64)), const("w_row", np.arange(1, 5, dtype=np.float32)[None]),
                     const("ones_1x4", np.ones((1, 4), np.float32))],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
    return model, {"history"}


def stca(name: str = "tiny", **overrides):
    """A seeded STCA model of a preset and its exported graph."""
    model = seeded_model(preset(name, **overrides))
    return model, export(model).model


class HistorySelfAttention(nn.Module):
    """Target attention over a history that first attends to itself: each encoded row reads every other row,
    so no row can be cached on its own key."""

    def __init__(self, vocab=500, d=8):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.W_Q, self.W_K = nn.Linear(d, d), nn.Linear(d, d)
        self.vocab = vocab

    def forward(self, history_item_ids, candidate_item_ids):
        h = self.embedding(history_item_ids % self.vocab)  # (L, d)
        h = torch.softmax(self.W_Q(h) @ self.W_K(h).T, -1) @ h  # (L, d): history self-attention mixes rows
        c = self.embedding(candidate_item_ids % self.vocab)  # (N, d)
        return torch.sigmoid(torch.softmax(c @ h.T, -1) @ h @ c.T).diagonal().unsqueeze(-1)  # (N, 1)


class PositionalHistory(nn.Module):
    """Target attention over a history with a learned position embedding: a row depends on where it sits."""

    def __init__(self, vocab=500, d=8, max_len=64):
        super().__init__()
        self.embedding, self.position = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.vocab = vocab

    def forward(self, history_item_ids, candidate_item_ids):
        L = history_item_ids.size(0)
        h = self.embedding(history_item_ids % self.vocab) + self.position(torch.arange(L))  # (L, d)
        c = self.embedding(candidate_item_ids % self.vocab)  # (N, d)
        return torch.sigmoid((torch.softmax(c @ h.T, -1) @ h * c).sum(-1, keepdim=True))  # (N, 1)


def history_model(module_class) -> tuple[onnx.ModelProto, set[str]]:
    """A history-and-candidates test model (HistorySelfAttention, PositionalHistory) exported with L and N dynamic."""
    torch.manual_seed(3)
    inputs = {"history_item_ids": np.arange(1, 9, dtype=np.int64), "candidate_item_ids": np.arange(3, 7, dtype=np.int64)}
    return export_small(module_class(), inputs, {"history_item_ids": {0: "L"}, "candidate_item_ids": {0: "N"}}), {"history_item_ids"}
