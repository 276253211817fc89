"""Calibration sets for INT8: requests at the lengths the model will serve, written and read one at a time.

A calibration set is a directory:

    calibration.json          {"format": "stca-calibration", "count", "lengths", "candidates", "source", "sha256"}
    request-00000.npz ...     one request each: the model's inputs, named as in its contract

`python -m compiler calibrate` makes one from the synthetic generator (history lengths drawn from
KuaiRand-1K, clipped at the served maximum) or from your own requests: a JSON-lines file with one
request per line, each line the JSON `python -m compiler score --request` reads ({input name: list}).
Either way one request is in memory at a time, and `sha256` (over the request files, in order) goes
into the manifest of every build calibrated with it.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.core.artifacts import atomic_directory, sha256_file
from compiler.core.contract import Contract, RequestError, read_requests, stca_contract
from compiler.core.errors import CompilerError
from compiler.core.log import Progress, stage
from compiler.stca.data import kuairand_lengths, sample_requests
from compiler.stca.model import STCAConfig

CALIBRATION_FORMAT = "stca-calibration"
INDEX = "calibration.json"


@dataclass(frozen=True)
class CalibrationSet:
    path: Path
    count: int
    sha256: str
    lengths: tuple[int, ...]

    def requests(self) -> Iterator[dict]:
        """The requests in order, loaded one at a time."""
        for i in range(self.count):
            with np.load(self.path / _name(i)) as shard:
                yield {name: shard[name] for name in shard.files}


def generate(out: Path, config: STCAConfig, count: int = 32, n_candidates: int = 128, seed: int = 1_234) -> CalibrationSet:
    """Synthetic requests with KuaiRand-1K history lengths up to config.max_history."""
    lengths = kuairand_lengths(count, config.max_history, seed=seed)
    requests = (r.inputs for r in sample_requests(config, lengths, seed=seed + 1, n_candidates=min(n_candidates, config.max_candidates)))
    return write(out, requests, count, {"generator": "compiler.stca.data (KuaiRand-1K lengths)", "seed": seed}, stca_contract(config))


def from_jsonl(out: Path, source: Path, config: STCAConfig) -> CalibrationSet:
    """Your own requests: one JSON object per line, {input name: list}; each is validated against the model."""
    source = Path(source)
    if not source.is_file():
        raise CompilerError(f"calibrate: {source}: no such file")
    contract, count = stca_contract(config), sum(1 for line in source.open() if line.strip())
    if count == 0:
        raise CompilerError(f"calibrate: {source} holds no requests (one JSON object per line)")

    def requests():
        try:
            yield from read_requests(source, contract)
        except RequestError as e:
            raise CompilerError(f"calibrate: {e}") from e

    return write(out, requests(), count, {"file": str(source), "sha256": sha256_file(source)}, contract)


def load(path: Path) -> CalibrationSet:
    path = Path(path)
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompilerError(f"calibration {path}: no readable {INDEX}; make one with `python -m compiler calibrate`") from e
    if index.get("format") != CALIBRATION_FORMAT:
        raise CompilerError(f"calibration {path}: {INDEX} is not a calibration set index")
    missing = [_name(i) for i in range(index["count"]) if not (path / _name(i)).is_file()]
    if missing:
        raise CompilerError(f"calibration {path}: {len(missing)} request file(s) missing, first {missing[0]}")
    return CalibrationSet(path, index["count"], index["sha256"], tuple(index["lengths"]))


def write(out: Path, requests, count: int, source: dict, contract: Contract) -> CalibrationSet:
    """`count` requests (each validated against `contract`) as a calibration set in `out`; `source` says where they came from."""
    lengths, candidates, digest = [], [], hashlib.sha256()
    with stage(f"calibrate: {count} requests -> {out}") as s, atomic_directory(out, _is_calibration, "a calibration set") as tmp:
        progress = Progress("request", count)
        for i, inputs in enumerate(requests):
            try:
                sizes = contract.validate(inputs)
            except RequestError as e:
                raise CompilerError(f"calibrate: request {i}: {e}") from e
            np.savez(tmp / _name(i), **inputs)
            digest.update(sha256_file(tmp / _name(i)).encode())
            lengths.append(sizes.get(contract.history_dim, 0))
            candidates.append(sizes[contract.candidate_dim])
            progress.advance()
        index = {"format": CALIBRATION_FORMAT, "count": len(lengths), "lengths": lengths, "candidates": candidates,
                 "source": source, "contract": contract.to_dict(), "sha256": digest.hexdigest()}
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        s.summary = f"L from {min(lengths)} to {max(lengths)} (median {int(np.median(lengths))}), sha256 {digest.hexdigest()[:12]}"
    return CalibrationSet(Path(out), len(lengths), digest.hexdigest(), tuple(lengths))


def _name(i: int) -> str:
    return f"request-{i:05d}.npz"


def _is_calibration(directory: Path) -> bool:
    return (directory / INDEX).is_file() and all(p.name == INDEX or p.name.startswith("request-") for p in directory.iterdir())
