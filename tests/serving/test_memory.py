"""The memory limit read from the container or the machine, the row caches' budgets refused before a server starts,
and the measured report's verdict (the e2e tier measures a real server: tests/e2e/test_faults.py)."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from compiler.core.errors import CompilerError
from compiler.repository.reader import write_config
from compiler.serving import memory
from compiler.serving.server import StubProcess


def machine(tmp_path, cgroup: dict[str, str], mem_total_kib: int = 8 << 20):
    for name, text in cgroup.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_total_kib} kB\nMemFree:        1000 kB\n")
    return tmp_path


@pytest.mark.parametrize("cgroup, expected, source", [
    ({"sys/fs/cgroup/memory.max": "2147483648"}, 2 << 30, "/sys/fs/cgroup/memory.max"),  # cgroup v2 with a limit
    ({"sys/fs/cgroup/memory.max": "max"}, 8 << 30, "/proc/meminfo MemTotal"),  # v2 without: the machine's
    ({"sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912"}, 512 << 20, "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ({"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"}, 8 << 30, "/proc/meminfo MemTotal"),  # v1's "none"
])
def test_the_limit_is_the_containers_else_the_machines(tmp_path, cgroup, expected, source):
    limit = memory.memory_limit(machine(tmp_path, cgroup))
    assert (limit.bytes, limit.source) == (expected, source)


def repository(tmp_path, budgets: dict[str, int]):
    for name, budget in budgets.items():
        config = mc.ModelConfig(name=name, backend="python")
        config.parameters["history_cache_bytes"].string_value = str(budget)
        write_config(tmp_path, config)
    write_config(tmp_path, mc.ModelConfig(name="stca", platform="ensemble"))
    return tmp_path


def test_row_cache_budgets_that_alone_exceed_the_limit_are_refused_before_the_server_starts(tmp_path):
    repo = repository(tmp_path, {"stca_split": 3 << 30, "stca_history_encoder": 0})
    assert memory.cache_budgets(repo) == {"stca_split": 3 << 30}
    memory.check_budgets(repo, memory.MemoryLimit(4 << 30, "test"))
    with pytest.raises(CompilerError, match=r"stca_split 3,072 MiB\) exceed the memory limit, 2,048 MiB \(test\)"):
        memory.check_budgets(repo, memory.MemoryLimit(2 << 30, "test"))


def test_the_report_adds_every_process_the_memory_they_share_once_and_the_caches_still_to_fill():
    report = memory.MemoryReport((memory.ModelMemory("stca_split", (300 << 20, 310 << 20), 1025 << 20, 0),
                                  memory.ModelMemory("stca_encoder", (150 << 20,), 0, 1 << 30),
                                  memory.ModelMemory("stca_fused", (200 << 20,), 0, 0)), 100 << 20,
                                 memory.MemoryLimit(4 << 30, "test"), "2 requests")
    assert report.total == (300 + 310 + 1025 + 150 + 1024 + 200 + 100) << 20
    report.check()
    tight = memory.MemoryReport(report.models, report.server, memory.MemoryLimit(1 << 30, "test"), "2 requests")
    with pytest.raises(CompilerError, match="needs 3,109 MiB once its row caches fill, more than the memory limit 1,024 MiB"):
        tight.check()
    assert "| stca_split | 2 | 300, 310 | 1025 | 0 | 1635 |" in report.table()
    assert "| stca_encoder | 1 | 150 | 0 | 1024 | 1174 |" in report.table()


def test_a_shared_cache_is_to_come_beside_its_populated_region_and_a_private_one_beside_its_rows_alone():
    MiB = 1 << 20
    region, pool = 1024 * MiB, 300 * MiB  # a populated 1 GiB region; the Python backend's tensor pool
    two = [StubProcess(i, "stca_split", f"stca_split_0_{i}", "S", (200 * MiB) + region, region) for i in range(2)]
    shared = memory.model_memory("stca_split", two, 1 << 30, held=100 * MiB)
    assert shared.resident == (200 * MiB, 200 * MiB) and shared.shared == region and shared.cache_to_come == 0
    # one instance: its cache is private, its 100 MiB of rows in its own memory; the pool in shared is not the cache's
    one = [StubProcess(1, "stca_history_encoder", "stca_history_encoder_0_0", "S", 250 * MiB + pool, pool)]
    private = memory.model_memory("stca_history_encoder", one, 1 << 30, held=100 * MiB)
    assert private.resident == (250 * MiB,) and private.shared == pool and private.cache_to_come == 924 * MiB
    assert private.total == 250 * MiB + pool + 924 * MiB
