"""What `python -m compiler cut` prints: the tensors crossing the cut, and the history row cache the encoder allows.

    subject, _, parts = compiler.build.load_and_split(cfg)
    print("\\n".join(describe_cut(parts, subject.contract)))
"""

import onnx

from compiler.core.contract import Contract
from compiler.passes import row_locality
from compiler.passes.partition import Split
from compiler.repository.report import cut_table
from compiler.runtime.row_cache import entry_bytes


def describe_cut(parts: Split, contract: Contract) -> list[str]:
    """The cut as markdown table lines (bytes per request at the served maximum dims), a blank line, and the row cache."""
    return [*cut_table(parts.cut, contract), "", history_cache_line(parts.encoder, contract)]


def history_cache_line(encoder: onnx.ModelProto, contract: Contract) -> str:
    """One line: what the history row cache would hold per history item and how many rows fit a GiB, or why there is none."""
    try:
        if contract.history_dim is None:
            raise row_locality.NotRowLocal("no request input has a history dim")
        cache = row_locality.row_graphs(encoder, contract.history_dim)
    except row_locality.NotRowLocal as e:
        return f"History row cache: none ({e})"
    entry = entry_bytes(cache.bytes_per_row, len(cache.keys))
    return (f"History row cache: {len(cache.cached)} tensors cached per history item, keyed on "
            f"{', '.join(k.source for k in cache.keys)}; {cache.bytes_per_row:,} bytes a row, "
            f"{(1 << 30) // entry:,} rows per GiB of --history-cache-bytes")
