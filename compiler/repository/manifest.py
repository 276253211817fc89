"""manifest.json: a build's record of itself, written by build and updated by tune through this module."""

import json
from pathlib import Path

from compiler.core.artifacts import MANIFEST
from compiler.core.contract import Contract

BUILD_FORMAT, BUILD_VERSION = "stca-build", 1


def is_build(directory: Path) -> bool:
    """An earlier build: its manifest says so and every file in it is one the manifest lists."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != BUILD_FORMAT:
        return False
    ours = set(manifest.get("files", {})) | {MANIFEST}
    return all(
        str(p.relative_to(directory)) in ours
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts  # bytecode an older server wrote beside model.py
    )


def cut_entries(cut, contract: Contract) -> dict:
    """The manifest's view of a Cut: each crossing tensor with its bytes per request at the served maximum dims."""
    return {
        "cut": [
            {"name": t.name, "source": t.source, "dtype": t.dtype, "shape": list(t.shape),
             "bytes_per_request": t.bytes_per_request(contract.limits)}
            for t in cut.tensors
        ],
        "cut_bytes_per_request": cut.bytes_per_request(contract.limits),
        "cut_at_history_length": contract.max_history,
        "shared_weights": [{"name": w.name, "bytes": w.bytes} for w in cut.shared_weights],
    }


def thread_budget(cpu_threads: int, placements: dict, chosen_by: str, **details) -> dict:
    """The manifest's record of the CPU thread budget the repository's configs hold (compiler.repository.budget)."""
    return {"cpu_threads": cpu_threads, "chosen_by": chosen_by,
            "placements": {model: p.to_dict() for model, p in sorted(placements.items())}, **details}
