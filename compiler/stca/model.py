"""STCA: Stacked Target-to-History Cross Attention, as a PyTorch module.

Reference: "Make It Long, Keep It Fast" (ByteDance/Douyin, arXiv 2511.06077); the RankMixer head
follows "RankMixer: Scaling Up Ranking Models in Industrial Recommenders" (arXiv 2507.15551).
Equations, one request at a time (L history items, N candidates, D = h * d_h):

    X     = E_item[id] + E_action[a] + E_age[bucket(age)]          history tokens        (L, D)
    x_t   = E_item[cand] + sum_f E_cand_f[feature_f]                target tokens         (N, D)
    Xt_i  = LN(SwiGLU_i(X))                                         i = 1..M, from the same X
    q_1   = LN(SwiGLU(x_t))
    o_i   = W_O softmax(q_i W_Q (Xt_i W_K)^T / sqrt(d_h)) Xt_i W_V   one query per candidate
    q_i+1 = LN(SwiGLU([o_1 .. o_i, x_t] W_C))                       W_C: (i+1)D -> D
    z     = SwiGLU([o_1 .. o_M, x_t] W_Z)                           W_Z: (M+1)D -> D; no LN
    p     = sigmoid(heads(RankMixer([z, user tokens, candidate tokens])))          (N, T)

With fusion="direct" (checkpoints written before the paper's W_C and W_Z were added) the SwiGLU reads the
(i+1)D concatenation itself: a superset of the paper's form (W_C folds into its first layer), with more
parameters. A config says which form it is; nothing is reinterpreted.

Nothing here depends on a training length: there is no positional term and no history
self-attention, so a model trained on ~2k items is served at 10k.
"""

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compiler.core.contract import INPUT_NAMES, PAD_ITEM_ID
from compiler.core.errors import CompilerError

ATTENTION_FORMS = ("kv", "reordered")
FUSION_FORMS = ("projected", "direct")  # the paper's W_C / W_Z, or SwiGLU straight on the concatenation
MASKED_LOGIT = -1e9  # finite, so exp() underflows to exactly 0 without inf - inf = NaN


@dataclass(frozen=True)
class STCAConfig:
    n_heads: int = 16  # h
    head_dim: int = 64  # d_h; the model width is D = h * d_h
    n_layers: int = 4  # M stacked cross-attention layers
    swiglu_mult: int = 2  # SwiGLU hidden width = swiglu_mult * D
    item_vocab: int = 131_072  # hashed item-id table rows (id % item_vocab); shared by history and candidates
    n_actions: int = 8  # action types (finish, skip, like, ...)
    n_age_buckets: int = 32  # bucket = floor(log2(1 + age_s)); 2^31 s is 68 years
    n_user_fields: int = 4  # K user-profile fields, one RankMixer token each
    user_vocab: int = 8_192  # hashed rows per user field
    n_candidate_fields: int = 3  # F candidate-side fields, one RankMixer token each
    candidate_vocab: int = 8_192  # hashed rows per candidate field
    mixer_layers: int = 2  # RankMixer blocks
    tasks: tuple[str, ...] = ("finish", "skip", "like")  # one sigmoid head each
    attention: str = "kv"  # "kv" or "reordered": same math, chosen per build
    fusion: str = "projected"  # how q_i+1 and z read [o_1 .. o_i, x_t]: "projected" (paper) or "direct"
    max_history: int = 10_000  # longest history served (L)
    max_candidates: int = 1_024  # most candidates per request (N)

    def __post_init__(self):
        if isinstance(self.tasks, list):  # from JSON
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.attention not in ATTENTION_FORMS:
            raise CompilerError(f"attention: {self.attention!r} is not one of {ATTENTION_FORMS}")
        if self.fusion not in FUSION_FORMS:
            raise CompilerError(f"fusion: {self.fusion!r} is not one of {FUSION_FORMS}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 1:
                raise CompilerError(f"model config: {f.name} = {value} must be at least 1")
        if not self.tasks:
            raise CompilerError("model config: tasks is empty; give at least one task name")
        if self.d_model % self.n_tokens:
            raise CompilerError(
                f"model config: width D = {self.d_model} must be divisible by the RankMixer token count "
                f"1 + n_user_fields + n_candidate_fields = {self.n_tokens}"
            )

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def n_tokens(self) -> int:
        return 1 + self.n_user_fields + self.n_candidate_fields

    def to_dict(self) -> dict:
        return {**asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: dict) -> "STCAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CompilerError(f"model config: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**{"fusion": "direct", **data})  # configs written before the field existed are the direct form


PRESETS = {
    "paper": STCAConfig(),  # D=1024, h=16, d_h=64, M=4, as in the paper; ~1.5 GB fp32, under ONNX's 2 GB file limit
    "small": STCAConfig(  # the CPU demo model: D=64
        n_heads=4, head_dim=16, item_vocab=16_384, user_vocab=1_024, candidate_vocab=1_024
    ),
    "medium": STCAConfig(  # the paper's proportions at CPU scale: D=256, encoder-heavy like the paper's regime
        n_heads=4, head_dim=64, item_vocab=32_768, user_vocab=1_024, candidate_vocab=1_024
    ),
    "tiny": STCAConfig(  # unit tests: D=16, two layers
        n_heads=2, head_dim=8, n_layers=2, item_vocab=1_024, user_vocab=64, candidate_vocab=64, mixer_layers=1
    ),
}


def preset(name: str, **overrides) -> STCAConfig:
    if name not in PRESETS:
        raise CompilerError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class SwiGLU(nn.Module):
    """SwiGLU(x) = W_2 (silu(W_1 x) * W_3 x), from d_in to d_out through swiglu_mult * d_out."""

    def __init__(self, d_in: int, d_out: int, mult: int):
        super().__init__()
        self.W_1 = nn.Linear(d_in, mult * d_out)
        self.W_3 = nn.Linear(d_in, mult * d_out)
        self.W_2 = nn.Linear(mult * d_out, d_out)

    def forward(self, x):
        return self.W_2(F.silu(self.W_1(x)) * self.W_3(x))


class NormedSwiGLU(nn.Module):
    """LN(SwiGLU(x)): the history projection Xt_i and the query q_i."""

    def __init__(self, d_in: int, d_out: int, mult: int):
        super().__init__()
        self.swiglu = SwiGLU(d_in, d_out, mult)
        self.ln = nn.LayerNorm(d_out)

    def forward(self, x):
        return self.ln(self.swiglu(x))


class CrossAttention(nn.Module):
    """Multi-head single-query cross attention: each candidate's query attends over the L history tokens.

    o = W_O softmax(q W_Q (Xt W_K)^T / sqrt(d_h) + key_bias) Xt W_V, in one of two identical forms:
      kv        : K = Xt W_K and V = Xt W_V are computed once per request (target-independent).
      reordered : u = (q W_Q) W_K^T, alpha = softmax(u Xt^T / sqrt(d_h)), out = (alpha Xt) W_V;
                  K and V are never materialised, so only Xt is per-request.
    """

    def __init__(self, config: STCAConfig):
        super().__init__()
        D, self.h, self.d_h = config.d_model, config.n_heads, config.head_dim
        self.W_Q = nn.Linear(D, D, bias=False)
        self.W_K = nn.Linear(D, D, bias=False)
        self.W_V = nn.Linear(D, D, bias=False)
        self.W_O = nn.Linear(D, D, bias=False)
        self.form = config.attention

    def forward(self, q, Xt, key_bias):
        # q: (N, D) one query per candidate; Xt: (L, D); key_bias: (L,) 0 or MASKED_LOGIT
        if self.form == "kv":
            return self.W_O(self._kv(q, Xt, key_bias))
        return self.W_O(self._reordered(q, Xt, key_bias))

    def _kv(self, q, Xt, key_bias):
        N, L, h, d_h = q.size(0), Xt.size(0), self.h, self.d_h
        Q = self.W_Q(q).view(N, h, d_h).transpose(0, 1) / math.sqrt(d_h)  # (h, N, d_h)
        K = self.W_K(Xt).view(L, h, d_h).transpose(0, 1)  # (h, L, d_h)
        V = self.W_V(Xt).view(L, h, d_h).transpose(0, 1)  # (h, L, d_h)
        alpha = torch.softmax(Q @ K.transpose(1, 2) + key_bias, dim=-1)  # (h, N, d_h) x (h, d_h, L) -> (h, N, L)
        return (alpha @ V).transpose(0, 1).reshape(N, h * d_h)  # (h, N, L) x (h, L, d_h) -> (N, D)

    def _reordered(self, q, Xt, key_bias):
        N, h, d_h = q.size(0), self.h, self.d_h
        D = h * d_h
        Q = self.W_Q(q).view(N, h, d_h).transpose(0, 1) / math.sqrt(d_h)  # (h, N, d_h)
        u = Q @ self.W_K.weight.view(h, d_h, D)  # (h, N, d_h) x (h, d_h, D) -> (h, N, D): q W_Q W_K^T per head
        alpha = torch.softmax(u @ Xt.transpose(0, 1) + key_bias, dim=-1)  # (h, N, D) x (D, L) -> (h, N, L)
        context = alpha @ Xt  # (h, N, L) x (L, D) -> (h, N, D)
        out = context @ self.W_V.weight.view(h, d_h, D).transpose(1, 2)  # (h, N, D) x (h, D, d_h) -> (h, N, d_h)
        return out.transpose(0, 1).reshape(N, D)


class RankMixer(nn.Module):
    """Mix the T tokens [z, user tokens, candidate tokens] of each candidate, then pool them.

    Token mixing is parameter-free: each token is cut into T heads and output token j gathers head j of
    every token. Each token then has its own feed-forward network (per-token FFN). Both are residual + LN.
    """

    def __init__(self, config: STCAConfig):
        super().__init__()
        T, D = config.n_tokens, config.d_model
        hidden = config.swiglu_mult * D
        self.T = T
        self.W_in = nn.ParameterList(nn.Parameter(torch.randn(T, D, hidden) / math.sqrt(D)) for _ in range(config.mixer_layers))
        self.W_out = nn.ParameterList(nn.Parameter(torch.randn(T, hidden, D) / math.sqrt(hidden)) for _ in range(config.mixer_layers))
        self.ln_mix = nn.ModuleList(nn.LayerNorm(D) for _ in range(config.mixer_layers))
        self.ln_ffn = nn.ModuleList(nn.LayerNorm(D) for _ in range(config.mixer_layers))

    def forward(self, tokens):
        N, T, D = tokens.shape  # (N, T, D)
        x = tokens
        for W_in, W_out, ln_mix, ln_ffn in zip(self.W_in, self.W_out, self.ln_mix, self.ln_ffn):
            mixed = x.view(N, T, T, D // T).transpose(1, 2).reshape(N, T, D)  # token j <- head j of every token
            x = ln_mix(x + mixed)
            per_token = x.transpose(0, 1)  # (T, N, D): token t uses its own W_in[t], W_out[t]
            ffn = (F.gelu(per_token @ W_in) @ W_out).transpose(0, 1)  # (T, N, D) x (T, D, H) x (T, H, D) -> (N, T, D)
            x = ln_ffn(x + ffn)
        return x.mean(dim=1)  # (N, D)


class PaddingBias(nn.Module):
    """key_bias = MASKED_LOGIT where the history item is padding (id 0), else 0; added to attention logits."""

    def forward(self, history_item_ids):
        return (history_item_ids == PAD_ITEM_ID).float() * MASKED_LOGIT  # (L,)


def fusion(c: STCAConfig, width: int) -> nn.Module:
    """W_C or W_Z: the paper's bias-free projection of a width-wide concatenation to D (identity where the input
    is already D wide, or for the direct form)."""
    if c.fusion == "direct" or width == c.d_model:
        return nn.Identity()
    return nn.Linear(width, c.d_model, bias=False)


class STCA(nn.Module):
    """One request in, one score per (candidate, task) out; inputs are named as in compiler/core/contract.py."""

    def __init__(self, config: STCAConfig):
        super().__init__()
        c, D = config, config.d_model
        self.config = config
        self.item_embedding = nn.Embedding(c.item_vocab, D)
        self.action_embedding = nn.Embedding(c.n_actions, D)
        self.age_embedding = nn.Embedding(c.n_age_buckets, D)
        self.user_embedding = nn.Embedding(c.n_user_fields * c.user_vocab, D)  # one block of rows per field
        self.candidate_embedding = nn.Embedding(c.n_candidate_fields * c.candidate_vocab, D)
        self.history_proj = nn.ModuleList(NormedSwiGLU(D, D, c.swiglu_mult) for _ in range(c.n_layers))
        fused_width = (lambda n: D) if c.fusion == "projected" else (lambda n: n * D)  # what the SwiGLU reads
        self.W_C = nn.ModuleList(fusion(c, (i + 1) * D) for i in range(c.n_layers))  # q_1 reads x_t: W_C[0] is identity
        self.query_proj = nn.ModuleList(NormedSwiGLU(fused_width(i + 1), D, c.swiglu_mult) for i in range(c.n_layers))
        self.attn = nn.ModuleList(CrossAttention(c) for _ in range(c.n_layers))
        self.W_Z = fusion(c, (c.n_layers + 1) * D)
        self.z_proj = SwiGLU(fused_width(c.n_layers + 1), D, c.swiglu_mult)
        self.mixer = RankMixer(c)
        self.heads = nn.Linear(D, len(c.tasks))
        self.key_bias = PaddingBias()
        for table in (self.user_embedding, self.candidate_embedding):
            # Field tokens enter the RankMixer beside z, whose norm at init is about 1; unit-variance rows
            # (norm sqrt(D)) would drown the history signal that z carries.
            nn.init.normal_(table.weight, std=0.1)
        self.register_buffer("user_field_offset", torch.arange(c.n_user_fields) * c.user_vocab, persistent=False)
        self.register_buffer(
            "candidate_field_offset", torch.arange(c.n_candidate_fields) * c.candidate_vocab, persistent=False
        )

    def age_bucket(self, history_age_s):
        bucket = torch.floor(torch.log2(1.0 + history_age_s))  # log-spaced: seconds, minutes, days, months
        return bucket.clamp(0, self.config.n_age_buckets - 1).long()

    def forward(
        self,
        history_item_ids,  # (L,) int64, most recent last; 0 = padding
        history_actions,  # (L,) int64
        history_age_s,  # (L,) float32
        user_features,  # (K,) int64
        candidate_item_ids,  # (N,) int64
        candidate_features,  # (N, F) int64
    ):
        c = self.config
        N = candidate_item_ids.size(0)
        X = (
            self.item_embedding(history_item_ids % c.item_vocab)
            + self.action_embedding(history_actions)  # a closed set: the request contract refuses a >= n_actions
            + self.age_embedding(self.age_bucket(history_age_s))
        )  # (L, D)
        key_bias = self.key_bias(history_item_ids)  # (L,): padding gets no attention
        user_tokens = self.user_embedding(user_features % c.user_vocab + self.user_field_offset)  # (K, D)
        candidate_tokens = self.candidate_embedding(
            candidate_features % c.candidate_vocab + self.candidate_field_offset
        )  # (N, F, D)
        x_t = self.item_embedding(candidate_item_ids % c.item_vocab) + candidate_tokens.sum(dim=1)  # (N, D)

        Xt = [proj(X) for proj in self.history_proj]  # Xt_i = LN(SwiGLU_i(X)); M x (L, D), target-independent
        o = []
        for W_C, query_proj, attn, Xt_i in zip(self.W_C, self.query_proj, self.attn, Xt):
            q = query_proj(W_C(torch.cat([*o, x_t], dim=-1)))  # q_1 = LN(SwiGLU(x_t)); q_{i+1} = LN(SwiGLU([o_1..o_i, x_t] W_C))
            o.append(attn(q, Xt_i, key_bias))  # o_i: (N, D), one query per candidate over L keys
        z = self.z_proj(self.W_Z(torch.cat([*o, x_t], dim=-1)))  # z = SwiGLU([o_1..o_M, x_t] W_Z), no LN; (N, D)

        tokens = torch.cat(
            [z.unsqueeze(1), user_tokens.unsqueeze(0).expand(N, -1, -1), candidate_tokens], dim=1
        )  # (N, 1 + K + F, D)
        return torch.sigmoid(self.heads(self.mixer(tokens)))  # (N, T): one probability per task

    @torch.no_grad()
    def score(self, request: dict) -> np.ndarray:
        """Scores (N, T) of one request given as numpy arrays keyed by input name (compiler.core.contract)."""
        return self(*[torch.from_numpy(request[name]) for name in INPUT_NAMES]).numpy()

    # Paper names for the tensors that cross the history/candidate cut, keyed by the module that makes them.
    # The partition pass is generic; these names only label its report, manifest and Triton configs.
    def cut_tensor_names(self) -> dict[str, str]:
        names = {"user_embedding": "user_tokens", "key_bias": "key_bias"}
        for i in range(self.config.n_layers):
            names[f"history_proj.{i}"] = f"Xt_{i + 1}"
            names[f"attn.{i}.W_K"] = f"K_{i + 1}"
            names[f"attn.{i}.W_V"] = f"V_{i + 1}"
        return names


def with_attention(model: STCA, form: str) -> STCA:
    """The same weights computing attention in the other form (the forms share every parameter)."""
    other = STCA(replace(model.config, attention=form)).eval()
    other.load_state_dict(model.state_dict())
    return other

