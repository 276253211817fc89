"""The names of the models in an emitted Triton repository: the one place they are spelled.

Numpy-free and import-free, so a client that only needs the ensemble's name loads nothing else.
"""

ENSEMBLE = "stca"  # what clients call: the encoder, then the scorer on its outputs
ENCODER = "stca_history_encoder"  # per request: history + user inputs -> the cut tensors
SCORER = "stca_candidate_scorer"  # per candidate set: cut tensors + candidate inputs -> scores
SPLIT = "stca_split"  # python target, the halves in one process: the encoder, then the scorer, the cut handed over in memory
VALIDATOR = "stca_request_validator"  # first step where the composing models cannot check a request themselves
FUSED = "stca_fused"  # baseline: the unsplit graph
NAIVE = "stca_naive"  # baseline: point-wise, the history re-encoded for every candidate
TORCH = "stca_torch"  # baseline: the PyTorch model, eager
INDUCTOR = "stca_inductor"  # baseline: the PyTorch model under torch.compile (inductor, CPU), what a PyTorch user tries first
PYTORCH = (TORCH, INDUCTOR)  # the baselines that run the PyTorch model itself (python target, from the checkpoint)
BASELINES = (FUSED, NAIVE, *PYTORCH)  # --baselines' models (PYTORCH on the python target only), in benchmark tables' order

# Each model's short name: the key of its graph in the manifest and report, and its label in benchmark tables
SHORT_NAMES = {ENCODER: "encoder", SCORER: "scorer", SPLIT: "split", FUSED: "fused", NAIVE: "point-wise", TORCH: "torch",
               INDUCTOR: "inductor"}
HALVES = (ENCODER, SCORER)

# Each model a client can call, and the models that do its work (whose instances, threads and statistics count).
# The ensemble's are the halves in two processes, or SPLIT alone where one process runs both (compiler.repository.writer.composing
# reads which from a built repository).
COMPOSING = {ENSEMBLE: HALVES, FUSED: (FUSED,), NAIVE: (NAIVE, FUSED), TORCH: (TORCH,), INDUCTOR: (INDUCTOR,)}
