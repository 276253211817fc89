"""report.md of a build: its tables say what the build holds. The cut table and the history-cache lines are checked on
hand-made inputs; the verification table and report.md as a whole on one real tiny build (slow)."""

from dataclasses import replace

import numpy as np
import pytest

from compiler.build import BuildConfig, build
from compiler.core.contract import CANDIDATE, REQUEST, Contract, Input, stca_contract
from compiler.passes.row_locality import RowLocality
from compiler.passes.partition import Cut, CutTensor, SharedWeight
from compiler.repository import report
from compiler.repository.report import cached_attention_lines, cut_table, history_cache_lines
from compiler.stca.model import preset
from compiler.verify.gates import CaseResult, Thresholds, Verification, VerifyConfig

CONTRACT = stca_contract(preset("tiny", max_history=100, max_candidates=10))  # L <= 100, N <= 10
QUICK = VerifyConfig(lengths=(7, 300), candidates=(3, 32), requests_per_case=1, auc_requests=0)


def cut(*tensors: CutTensor, shared=()) -> Cut:
    return Cut(tuple(tensors), tuple(shared), placement={}, request_inputs=(), candidate_inputs=())


def rows(table: list[str]) -> list[list[str]]:
    """A markdown table's body rows (past its header and |---| lines) as cells, up to its first blank line."""
    body = []
    for line in table[2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip().strip("|").split("|")])
    return body


def test_the_cut_table_lists_each_tensor_with_its_bytes_at_the_served_maximum():
    table = cut_table(cut(CutTensor("K_1", "linear_10", "float32", ("L", 16)), CutTensor("V_1", "linear_11", "float16", ("L", 16)),
                          CutTensor("user_tokens", "embedding_3", "float32", (4, 16))), CONTRACT)
    assert table[0] == "| tensor | dtype | shape | bytes/request at L=100 |"  # N is per candidate: not a cut dim
    assert rows(table) == [
        ["`K_1`", "float32", "['L', 16]", "6,400"],  # 100 x 16 x 4 bytes
        ["`V_1`", "float16", "['L', 16]", "3,200"],  # 100 x 16 x 2 bytes
        ["`user_tokens`", "float32", "[4, 16]", "256"],  # 4 x 16 x 4 bytes
        ["**total**", "", "", "**9,856**"],
    ]


def test_a_tensor_with_a_dim_the_contract_does_not_bound_has_unknown_bytes_and_so_has_the_total():
    table = cut_table(cut(CutTensor("K_1", "k", "float32", ("L", 16)), CutTensor("odd", "o", "float32", ("Q", 2))), CONTRACT)
    assert rows(table) == [["`K_1`", "float32", "['L', 16]", "6,400"], ["`odd`", "float32", "['Q', 2]", "?"],
                           ["**total**", "", "", "?"]]


def test_weights_both_halves_hold_get_their_own_table_and_none_means_no_table():
    table = cut_table(cut(CutTensor("K_1", "k", "float32", ("L", 16)), shared=(SharedWeight("item_embedding.weight", 65_536),
                                                                              SharedWeight("bias", 64))), CONTRACT)
    start = table.index("| weight both halves hold | bytes |")
    assert table[start + 2:] == ["| `item_embedding.weight` | 65,536 |", "| `bias` | 64 |"]
    assert not any("weight both halves hold" in line for line in cut_table(cut(CutTensor("K_1", "k", "float32", ("L", 16))), CONTRACT))


def test_a_contract_with_only_a_candidate_dim_reports_bytes_at_any_size():
    contract = Contract((Input("user", "float32", (8,), REQUEST), Input("items", "float32", ("N", 4), CANDIDATE)), ("y",), {"N": 16})
    table = cut_table(cut(CutTensor("u", "u", "float32", (8,))), contract)
    assert table[0] == "| tensor | dtype | shape | bytes/request at any size |"
    assert rows(table)[-1] == ["**total**", "", "", "**32**"]  # 8 x 4 bytes


def test_the_history_cache_section_of_a_model_that_is_not_row_local_says_why():
    lines = history_cache_lines(RowLocality(False, why="history_item_ids rows mix in MatMul 'node_matmul'"))
    assert lines == ["## History row cache", "",
                     "None: history_item_ids rows mix in MatMul 'node_matmul'. Every request encodes its whole history."]


def row_local(served: bool, budget_bytes: int = 0) -> RowLocality:
    row_graphs = {"keys": [{"name": "row_key_0", "source": "history_actions", "dtype": "int64"},
                     {"name": "row_key_1", "source": "remainder", "dtype": "int64"}],
            "cached": {"K_1": {"dtype": "float32", "row_shape": [16]}, "V_1": {"dtype": "float32", "row_shape": [16]}},
            "passthrough": ["user_tokens"], "keys_of": {"K_1": ["history_actions", "remainder"], "V_1": ["history_actions", "remainder"]},
            "bytes_per_row": 128}
    return RowLocality(True, "", row_graphs, {"user_tokens": 0.0, "K_1": 1.5e-7, "V_1": 2.5e-7}, (1, 64, 2000), served, budget_bytes)


def test_the_history_cache_section_of_a_row_local_record_names_its_keys_rows_and_check():
    lines = history_cache_lines(row_local(served=True, budget_bytes=64 << 20))
    assert lines[:2] == ["## History row cache", ""]
    assert lines[2] == ("Each row of `K_1`, `V_1` is a function of one key per history item: `history_actions` (int64), "
                        "`remainder` (int64) (128 bytes a row). Checked against the encoder at L = 1, 64, 2000 and a left-padded "
                        "request: largest difference 2.5e-07.")
    assert lines[4].startswith("Served: the history encoder keeps up to 64 MiB of rows (over its instances)")
    assert lines[6] == "Repeated rows: every row reaches the scorer (not checked)."  # a record from before the check


def test_the_history_cache_section_says_whether_repeated_rows_reach_the_scorer_once_and_what_the_check_saw():
    record = row_local(served=True, budget_bytes=64 << 20)
    once = replace(record, row_graphs={**record.row_graphs, "multiplicity": "key_bias"}, multiplicity_check="largest difference 6.0e-08")
    assert history_cache_lines(once)[6] == (
        "Repeated rows: each distinct key's rows reach the scorer once, `key_bias` raised by the log of the key's count "
        "(the scorer reads the history as a multiset; checked on repeated and reordered rows: largest difference 6.0e-08).")
    refused = replace(record, multiplicity_check="with key_bias raised by log(count), scores differs by 0.3")
    assert history_cache_lines(refused)[6] == ("Repeated rows: every row reaches the scorer "
                                               "(with key_bias raised by log(count), scores differs by 0.3).")


def test_a_row_local_encoder_whose_cache_is_not_served_says_so():
    lines = history_cache_lines(row_local(served=False))
    assert lines[-1].startswith("Not served by this repository")
    assert not any(line.startswith("Served:") for line in lines)


def test_the_cached_attention_table_prices_both_forms_rows_and_says_where_kv_wins():
    c = preset("tiny", max_history=100, max_candidates=10)  # D=16, h=2, M=2, kv
    lines = cached_attention_lines(c, row_local(served=True, budget_bytes=64 << 20), 100)
    # a kv row: K and V of 2 layers, 16 fp32 each, and the key bias: 260 bytes; reordered: Xt of 2 layers, 132 bytes.
    # An entry adds 8 bytes per key (2 keys) and 64 of overhead: 64 MiB // 340 and // 212 rows, per 100-item history.
    table = rows(lines[2:])
    assert [r[:3] for r in table] == [["`kv` (served)", "260", "197,379 (1,973)"], ["`reordered`", "132", "316,551 (3,165)"]]
    assert float(table[0][4]) < float(table[1][4])  # kv's scorer is cheaper per candidate...
    assert float(table[0][3]) > float(table[1][3])  # ...for the K and V its encoder computes per row
    # kv wins above N = D / (h - 1 + D/L) = 16 / 1.16 with no row cached, a tenth of that at a 90% hit rate
    assert "above N = 14 candidates when no row is cached, above N = 1 at a 90% hit rate" in lines[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_checkpoint):
    """One real tiny build (python target, the row cache served in stca_split), with a quick verification."""
    return build(BuildConfig(out=tmp_path_factory.mktemp("report") / "repo", checkpoint=tiny_checkpoint, verify=QUICK))


def section(lines: list[str], heading: str) -> list[str]:
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def table_after(lines: list[str], header_start: str) -> list[list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    return rows(lines[start:])


@pytest.mark.slow
def test_report_md_of_a_real_build_shows_its_cut_verification_cases_and_row_cache(built):
    lines = (built.out / "report.md").read_text().splitlines()
    assert lines[0] == "# stca-compiler build report"
    assert "## Verification: PASSED (fp32 thresholds)" in lines
    cases = table_after(lines, "| L | N | requests |")
    assert [c[:3] for c in cases] == [["7", "3", "1"], ["7", "32", "1"], ["300", "3", "1"], ["300", "32", "1"]]  # QUICK's cases
    L = built.contract.max_history
    expected, total = [], 0
    for t in built.cut.tensors:  # each tensor's bytes at the served maximum, counted here
        size = int(np.prod([L if d == "L" else d for d in t.shape])) * np.dtype(t.dtype).itemsize
        expected.append([f"`{t.name}`", t.dtype, str(list(t.shape)), f"{size:,}"])
        total += size
    assert table_after(lines, "| tensor | dtype | shape |") == expected + [["**total**", "", "", f"**{total:,}**"]]
    cache, record = section(lines, "## History row cache"), built.history_cache
    assert record.row_local and record.served  # the tiny encoder is row-local and the python target serves its cache
    assert cache[:7] == history_cache_lines(record)  # the record's own section, whole
    assert all(f"`{name}`" in cache[2] for name in record.row_graphs["cached"])
    assert cache[4].startswith(f"Served: the history encoder keeps up to {record.budget_bytes // 2**20} MiB of rows")
    # STCA's scorer reads the history as a multiset: its key bias counts a repeated row
    assert cache[6].startswith("Repeated rows: each distinct key's rows reach the scorer once, `key_bias` raised by the log")
    priced = cached_attention_lines(built.config, record, L)  # STCA's forms priced with the cache
    assert cache[8:8 + len(priced)] == priced


@pytest.mark.slow
def test_the_verification_table_shows_every_case_and_a_failed_gate_lists_its_failures(built, tmp_path):
    failure = "L=300 N=32: max abs error 2.00e-04 > 1e-04"
    v = Verification("fp32", Thresholds(max_abs_error=1e-4),
                     (CaseResult(7, 3, 1, 2.5e-05, 1.25e-05, 1.0, 1.0, 1.0, None),
                      CaseResult(300, 32, 2, 2.0e-04, 5.0e-05, 0.96, 0.9375, 0.95, 0.0125)),
                     auc={"finish": {"reference": 0.75, "compiled": 0.7375, "delta": -0.0125}}, failures=(failure,))
    lines = report.write(tmp_path, replace(built, verification=v), built.subject).read_text().splitlines()
    assert "## Verification: FAILED (fp32 thresholds)" in lines
    assert any(line.startswith("Gates: max abs error <= 0.0001.") for line in lines)
    assert table_after(lines, "| L | N | requests |") == [
        ["7", "3", "1", "2.50e-05", "1.25e-05", "1.0000 / 1.0000", "1.000", "-"],  # no AUC on 3 candidates
        ["300", "32", "2", "2.00e-04", "5.00e-05", "0.9600 / 0.9375", "0.950", "0.0125"],
    ]
    assert table_after(lines, "| task | PyTorch fp32 | compiled | delta |") == [["finish", "0.7500", "0.7375", "-0.01250"]]
    assert lines[lines.index("Failures:") + 2] == f"- {failure}"
