"""Client: score one request on the served `stca` ensemble (HTTP or gRPC) and rank its candidates.

    client = ScoringClient("127.0.0.1:8000")            # reads the contract and task names from the server
    ranking = client.rank(inputs)                        # inputs: {name: numpy array}, as compiler.core.contract
    print(ranking.table(k=10))

The request is validated here, before anything is sent, with the contract the server's models were
built with; the server validates again, so a client that skips this still gets a named error.

Every request carries its user's routing key (compiler.serving.routing: `user_id` where the caller passes one, else a
hash of the request's user inputs), so a proxy in front of several servers keeps each user on the one whose history
row cache holds that user's rows.

Scoring is idempotent, so a request that fails for a reason that passes (the server restarting, a model being
reloaded after its process died, a full queue) is sent again, up to `retries` times with doubling waits; a request
the server refuses for what it is (the contract, a model error) is not.
"""

import json
import time
from dataclasses import dataclass

import numpy as np

from compiler.core.contract import CONTRACT_PARAMETER, Contract, RequestError
from compiler.core.errors import CompilerError
from compiler.core.names import ENSEMBLE
from compiler.serving.routing import USER_KEY_HEADER, user_key

# What Triton says while a model cannot answer for now: its process died (until the supervisor reloads it), it is
# being unloaded or loaded, or its queue is full.
RETRYABLE = ("is not healthy", "not ready", "unknown model", "unavailable", "queue")
MAX_BACKOFF_S = 4.0


def retryable(error: Exception) -> bool:
    """Whether a failed scoring request may succeed if sent again: one of RETRYABLE, or the connection refused or
    reset. Not a timeout: the request may still be running, and sending it again adds to the load that delayed it."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return any(text in f"{error.status()} {error.message()}".lower() for text in RETRYABLE)
    return isinstance(error, OSError) and not isinstance(error, TimeoutError)


@dataclass(frozen=True)
class Ranking:
    candidates: np.ndarray  # (N,) what names each candidate: its item id where the model has one, else its position
    scores: np.ndarray  # (N, T)
    tasks: tuple[str, ...]  # the columns of scores
    label: str = "item id"

    def top(self, task: str, k: int = 10) -> list[tuple[int, int, float]]:
        """(rank, candidate, score) of the k best candidates for a task."""
        t = self.tasks.index(task)
        order = np.argsort(-self.scores[:, t], kind="stable")[:k]
        return [(r + 1, int(self.candidates[i]), float(self.scores[i, t])) for r, i in enumerate(order)]

    def table(self, k: int = 10) -> str:
        """Side-by-side top-k per task, as text."""
        columns = [self.top(task, k) for task in self.tasks]
        header = "rank  " + "  ".join(f"{task + f' ({self.label}: score)':>28}" for task in self.tasks)
        rows = [header, "-" * len(header)]
        for r in range(min(k, len(self.candidates))):
            rows.append(f"{r + 1:>4}  " + "  ".join(f"{col[r][1]:>18}: {col[r][2]:.4f}" for col in columns))
        return "\n".join(rows)


class ScoringClient:
    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", model: str = ENSEMBLE, timeout_s: float = 60.0,
                 retries: int = 5, backoff_s: float = 0.25):
        """`retries`: how many times a request that failed for a passing reason is sent again, waiting backoff_s, then
        twice that, and so on up to MAX_BACKOFF_S (the defaults wait up to 7.75 s in all); 0 sends each request once."""
        if retries < 0 or backoff_s < 0:
            raise CompilerError(f"client: retries {retries} and backoff {backoff_s}s must be at least 0")
        self.retries, self.backoff_s, self.retried = retries, backoff_s, 0  # retried: sends beyond the first, over all requests
        self.timeout_s = timeout_s  # over HTTP the connection's timeout; over gRPC each request's deadline
        if protocol not in ("http", "grpc"):
            raise CompilerError(f"protocol: {protocol!r} is not http or grpc")
        if "://" in url:
            raise CompilerError(f"url {url!r}: give host:port without the scheme (the protocol is chosen apart: {protocol})")
        self.protocol, self.model, self.url = protocol, model, url
        if protocol == "http":
            import tritonclient.http as triton
            self._client = triton.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as triton
            self._client = triton.InferenceServerClient(url)
        self._triton = triton
        self.contract, self.tasks = self._model_parameters()

    def _model_parameters(self) -> tuple[Contract, tuple[str, ...]]:
        from tritonclient.utils import InferenceServerException

        try:
            config = self._client.get_model_config(self.model)
        except InferenceServerException as e:
            raise CompilerError(f"client: cannot read model {self.model!r} from {self.protocol}://{self.url} ({e.message()})") from e
        except Exception as e:  # noqa: BLE001  (connection refused and friends differ by protocol)
            raise CompilerError(f"client: no Triton server answers at {self.protocol}://{self.url} ({e})") from e
        if self.protocol == "grpc":
            params = {k: v.string_value for k, v in config.config.parameters.items()}
        else:
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if CONTRACT_PARAMETER not in params:
            raise CompilerError(f"client: model {self.model!r} has no {CONTRACT_PARAMETER} parameter; was it built by this "
                                "version of stca-compiler?")
        return Contract.from_dict(json.loads(params[CONTRACT_PARAMETER])), tuple(filter(None, params.get("tasks", "").split(",")))

    def score(self, inputs: dict, user_id: str | int | None = None) -> np.ndarray:
        """Scores (N, T) of one request; a request that breaks the contract raises before it is sent. `user_id`: the
        routing key, where the caller knows the user (default: a hash of the request's user inputs)."""
        try:
            self.contract.validate(inputs)
        except RequestError as e:
            raise CompilerError(f"request: {e}") from e
        return self.infer(inputs, user_id)

    def infer(self, inputs: dict, user_id: str | int | None = None) -> np.ndarray:
        """The model's first output, sent as is, without client-side validation (tests use it to reach the server's own
        checks)."""
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, value in inputs.items():
            tensor = self._triton.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        output = self.contract.outputs[0]
        key = user_key(inputs, self.contract, user_id)
        headers = {USER_KEY_HEADER: key} if key else None
        for attempt in range(self.retries + 1):
            try:
                deadline = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
                result = self._client.infer(self.model, tensors, outputs=[self._triton.InferRequestedOutput(output)],
                                            headers=headers, **deadline)
                return result.as_numpy(output)
            except Exception as e:  # noqa: BLE001  (tritonclient raises its own and the transport's errors)
                if attempt == self.retries or not retryable(e):
                    raise
                self.retried += 1
                time.sleep(min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S))

    def rank(self, inputs: dict, user_id: str | int | None = None) -> Ranking:
        """The candidates ordered by each column of the first output (one row per candidate)."""
        scores = self.score(inputs, user_id)
        scores = scores.reshape(len(scores), -1)
        tasks = self.tasks if len(self.tasks) == scores.shape[1] else tuple(f"{self.contract.outputs[0]}[{t}]" for t in range(scores.shape[1]))
        if "candidate_item_ids" in inputs:
            return Ranking(inputs["candidate_item_ids"], scores, tasks)
        return Ranking(np.arange(len(scores)), scores, tasks, label="candidate")

    def close(self) -> None:
        self._client.close()
