"""Copies of a built repository: graphs hard-linked, what a later step rewrites (configs, the build record) never
written through a link to the original."""

from pathlib import Path

from compiler.core.artifacts import MANIFEST
from compiler.core.names import ENCODER, SCORER
from compiler.measure.bench_repeated import uncached_copy
from compiler.repository.reader import linked_copy, read_config


def built(repo: Path) -> Path:
    """The files of a repository that these functions touch: two models' configs and graphs, and the build record."""
    for model in (ENCODER, SCORER):
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "1" / "model.onnx").write_bytes(b"graph of " + model.encode())
        (repo / model / "config.pbtxt").write_text(
            f'name: "{model}"\nbackend: "python"\nparameters {{ key: "history_cache_bytes" value {{ string_value: "1024" }} }}\n')
    (repo / MANIFEST).write_text('{"record": 1}')
    return repo


def test_a_linked_copy_links_the_graphs_and_copies_the_build_record_only_when_asked(tmp_path):
    repo = built(tmp_path / "repo")
    plain, with_record = linked_copy(repo, tmp_path / "plain"), linked_copy(repo, tmp_path / "with", with_manifest=True)
    for copy in (plain, with_record):
        for model in (ENCODER, SCORER):
            assert (copy / model / "1" / "model.onnx").stat().st_ino == (repo / model / "1" / "model.onnx").stat().st_ino
    assert not (plain / MANIFEST).exists()
    record = with_record / MANIFEST
    assert record.read_text() == '{"record": 1}' and record.stat().st_ino != (repo / MANIFEST).stat().st_ino
    record.write_text("rewritten")
    assert (repo / MANIFEST).read_text() == '{"record": 1}'


def test_the_uncached_copy_turns_off_the_encoders_cache_in_the_copy_alone(tmp_path):
    repo = built(tmp_path / "repo")
    copy = uncached_copy(repo, tmp_path / "copy")
    budget = {r: read_config(r / ENCODER / "config.pbtxt").parameters["history_cache_bytes"].string_value for r in (repo, copy)}
    assert budget == {repo: "1024", copy: "0"}
    assert (copy / MANIFEST).read_text() == '{"record": 1}'
