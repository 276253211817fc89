"""Whether a served repository can score: one small scoring request through the ensemble, the Python standard library only.

    python probe.py --url 127.0.0.1:8000                 # readiness: exit 0 only if a request was scored
    python probe.py --url 127.0.0.1:8000 --liveness      # liveness: exit 1 only if a model answered that it cannot score

Triton's own health endpoints do not say this: when a Python-backend model's process dies, /v2/health/ready and the
model's ready endpoint still answer 200 while every request through the ensemble fails. The probe asks the model's
config for its request contract (the `request_contract` parameter every stca-compiler config carries), sends the
smallest request the contract allows (one of each symbolic dim, each value the lowest valid one, none padding) and
checks that the first output is finite numbers. `compiler serve`'s supervisor, the test servers and the Kubernetes
probes (docs/deploy/) all run this check; it needs nothing beyond the standard library, so it runs in any container
that has Python (copied in with `kubectl create configmap stca-probe --from-file=compiler/serving/probe.py`).

Liveness is narrower than readiness, so that a busy server is never restarted: an overloaded one answers slowly
or refuses (a timeout, HTTP 429 or 503), which fails readiness and takes the server out of rotation, but only a
model's own failure (any other error answer, such as a dead stub's) fails liveness.
"""

import argparse
import json
import math
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

ENSEMBLE = "stca"  # compiler.core.names.ENSEMBLE (this file imports nothing of the package)
CONTRACT_PARAMETER = "request_contract"  # compiler.core.contract.CONTRACT_PARAMETER
TRITON_DTYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float16": "FP16", "float64": "FP64", "bool": "BOOL"}
OVERLOADED = (429, 503)  # HTTP statuses of a refused request: too many queued, or the server not taking more


@dataclass(frozen=True)
class ProbeResult:
    ok: bool  # a request was scored and its output is finite
    status: int | None  # the HTTP status of the scoring request (None: no answer: refused connection or timeout)
    detail: str  # what failed, as the server or the network said it

    @property
    def model_failed(self) -> bool:
        """The server answered that it cannot score (not a refusal for load, not silence): what liveness fails on."""
        return not self.ok and self.status is not None and self.status not in OVERLOADED


def smallest_request(contract: dict) -> dict:
    """A Triton HTTP/JSON inference body: every input of the contract at one of each symbolic dim (the fixed dims at
    their size), every value the smallest of its valid range (an id every embedding table has), never the padding
    value."""
    inputs = []
    for spec in contract["inputs"]:
        shape = [d if isinstance(d, int) else contract["fixed"].get(d, 1) for d in spec["dims"]]
        lo = spec["low"] if spec.get("low") is not None else (spec.get("sample_range") or (0, 99))[0]
        if spec["dtype"] == "bool":
            value = False
        elif spec["dtype"].startswith("float"):
            value = float(lo)
        else:
            value = int(lo) + (int(lo) == spec.get("padding"))
        inputs.append({"name": spec["name"], "datatype": TRITON_DTYPES[spec["dtype"]], "shape": shape,
                       "data": [value] * math.prod(shape)})
    return {"inputs": inputs, "outputs": [{"name": contract["outputs"][0]}]}


def probe(url: str, model: str = ENSEMBLE, timeout_s: float = 10.0, requests: int = 3) -> ProbeResult:
    """Score the smallest valid request `requests` times on `model` at host:port `url` (HTTP): ok if every one is.
    Several, because of a model with several instances only the dead one fails (and, failing at once, it is the
    one most often idle to take the next request)."""
    try:
        config = _call(f"http://{url}/v2/models/{model}/config", None, timeout_s)
        body = smallest_request(json.loads(config["parameters"][CONTRACT_PARAMETER]["string_value"]))
        for _ in range(requests):
            answer = _call(f"http://{url}/v2/models/{model}/infer", body, timeout_s)
            result = _scored(model, answer)
            if not result.ok:
                return result
    except urllib.error.HTTPError as e:
        return ProbeResult(False, e.code, _error_text(e))
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        return ProbeResult(False, None, f"no answer from {url}: {getattr(e, 'reason', e)}")
    except (KeyError, ValueError) as e:
        return ProbeResult(False, 200, f"{model} has no stca-compiler request contract ({e})")
    return ProbeResult(True, 200, f"{requests} requests scored")


def _scored(model: str, answer: dict) -> ProbeResult:
    values = [v for output in answer.get("outputs", []) for v in output.get("data", [])]
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return ProbeResult(False, 200, f"{model} answered {values[:4]}: not finite scores")
    return ProbeResult(True, 200, "scored")


def _call(address: str, body: dict | None, timeout_s: float) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def _error_text(error: urllib.error.HTTPError) -> str:
    text = error.read().decode(errors="replace")
    try:
        return json.loads(text).get("error", text)
    except ValueError:
        return text or str(error)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--model", default=ENSEMBLE)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each call")
    parser.add_argument("--requests", type=int, default=3, help="small requests to score, each of which must be")
    parser.add_argument("--liveness", action="store_true", help="fail only where a model answered that it cannot score")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = probe(args.url, args.model, args.timeout, args.requests)
    print(f"{'ok' if result.ok else 'FAILED'}: {result.detail}", file=sys.stdout if result.ok else sys.stderr)
    failed = result.model_failed if args.liveness else not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
