"""The history row cache: each history row encoded once, across requests and users, exactly.

    encoder = CachedEncoder(run_keys, run_rows, keys, RowCache(budget_bytes, rows, len(keys)))
    outputs = encoder(request_inputs)     # the history encoder's outputs, rows from the cache where it has them

A row of a cached encoder output is a function of its row key alone (compiler.passes.row_locality proves it from
the graph and the build confirms it numerically), so a row computed for one request is valid for any later
request with the same key, whoever sends it. Per request: the key graph gives one key per history row; rows
whose key is cached are copied from the cache; the row graph runs on the distinct missing keys only; the
outputs are assembled in request order.

The cache is content-addressed on the whole key (KeyIndex, a hash table in numpy arrays: a hash collision is
resolved by comparing keys, never trusted), bounded by a byte budget, and guarded by one lock; the instances of a
served model (processes) share one, in a SharedRegion. It holds rows of one set of
weights: the served encoder builds it for the weight digest it loaded. Only numpy: copied beside the encoder's
model.py as stca_row_cache.py.

Which rows it keeps: every computed row while there is room. Once full, a computed row replaces one of the least
recently used rows only if it has been asked for more often lately (TinyLFU's admission, Einziger et al. 2017:
a count-min sketch of every key looked up, halved as it fills, and the candidate admitted over the victim when its
count is higher), so rows seen once do not push out rows seen often, and traffic that never repeats stops paying
for copies into the cache. `admission="all"` keeps every computed row (plain LRU). Admission decides only what is
kept: the rows answered are computed or found, never estimated.

Repeated rows, once: where the scorer reads the history as a multiset (compiler.passes.history_multiset checks it
for the build), a request's rows with equal keys are sent once, and `multiplicity`, an output of one float a row
that the scorer adds to its attention logits (STCA's key bias), is raised by the log of each key's count: a row
repeated c times weighs c * exp(s) = exp(s + log c). The scorer's attention then runs on the distinct rows only.

When it is consulted: a request skips a full cache while going through it has cost more of late than skipping it
would have (CacheWorth), so traffic whose rows do not repeat pays for the lookups, the copies and the assembly on
one request in CacheWorth.PROBE_EVERY only. Skipping runs the whole encoder, or, where the scorer reads each
distinct row once, the row graph on the request's distinct keys, so that the scorer keeps that saving. Either path
answers what the cache's would.
"""

import contextlib
import fcntl
import functools
import glob
import json
import mmap
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

# The budget of the one cache a model's instances share. 1 GiB holds about
# 127,000 rows of the medium model's fp32 cut (8 KiB a row, plus key and index) or 470,000 of the demo's (2 KiB).
DEFAULT_HISTORY_CACHE_BYTES = 1 << 30
# Bytes an entry costs beyond its rows and its key's 8 bytes per column, at most: its stamp (8) and live flag (1), the
# index's buckets (int32, 2 to 4 per slot: 16) and the frequency sketch's counters (4 rows of 4 to 8 one-byte cells
# per slot: 32). All numpy arrays of the capacity, allocated up front.
ENTRY_OVERHEAD_BYTES = 64


def entry_bytes(row_bytes: int, key_width: int) -> int:
    """What one cached history row costs a budget: its rows' bytes, 8 per key column and ENTRY_OVERHEAD_BYTES."""
    return row_bytes + 8 * key_width + ENTRY_OVERHEAD_BYTES


# Slots a full cache looks at for each row it must evict (RowCache._least_recent).
VICTIM_SAMPLES = 8
# How long a process opening a SharedRegion waits for the one that made it to fill its arrays.
MADE_TIMEOUT_S = 60.0
# What a SharedRegion holds beyond the budget: the arrays' alignment and the smallest tables' minimum sizes.
SHARED_SLACK_BYTES = 1 << 20
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux's value; Python 3.11 does not name it


@dataclass(frozen=True)
class RowSpec:
    """One cached output: its dtype and the shape of one row (the output is [L, *row_shape])."""

    dtype: str
    row_shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def key_codes(columns: list[np.ndarray]) -> np.ndarray:
    """[L, k] int64 codes of k key columns: integers and bools by value, floats by their bits (exact either way)."""
    codes = []
    for c in columns:
        if c.dtype.kind == "f":
            c = c.view({2: np.int16, 4: np.int32, 8: np.int64}[c.dtype.itemsize])
        codes.append(c.astype(np.int64))
    return np.stack(codes, axis=1)


def from_codes(codes: np.ndarray, dtypes: list[str]) -> list[np.ndarray]:
    """The key columns back from their codes (key_codes' inverse)."""
    columns = []
    for j, dtype in enumerate(map(np.dtype, dtypes)):
        column = codes[:, j]
        if dtype.kind == "f":
            column = column.astype({2: np.int16, 4: np.int32, 8: np.int64}[dtype.itemsize]).view(dtype)
        columns.append(np.ascontiguousarray(column.astype(dtype)))
    return columns


ADMISSIONS = ("frequency", "all")


def mix(codes: np.ndarray) -> np.ndarray:
    """[M] uint64 hashes of [M, k] int64 codes: each column mixed into a running hash (multiply, xor-shift)."""
    mixed = np.zeros(len(codes), np.uint64)
    with np.errstate(over="ignore"):
        for column in codes.T.astype(np.uint64):
            mixed = (mixed ^ column) * np.uint64(0xBF58476D1CE4E5B9)
            mixed ^= mixed >> np.uint64(31)
    return mixed


class Cell:
    """An integer attribute held in its object's `_state` array (an Arena's), so that the processes sharing the arena
    share it: `size = Cell(0)` reads and writes `self._state[0]`."""

    def __init__(self, index: int):
        self.index = index

    def __get__(self, obj, owner=None) -> int:
        return int(obj._state[self.index])

    def __set__(self, obj, value: int) -> None:
        obj._state[self.index] = value


class SharedRegion:
    """Memory that the processes of one served model share: the first to open `name` makes it (a memfd of `nbytes`)
    and says where, in a file in the temporary directory, the others open it through /proc. Its lock (flock on each
    process's own open file) guards the cache across processes. Keyed by the Triton server's pid (the stubs' parent),
    so another server, or a restarted one, never finds it; freed by the kernel when its last process ends."""

    def __init__(self, name: str, nbytes: int, server: int | None = None):
        """`server`: the pid of the process whose children share the region (default: this process's parent)."""
        self.name, self.nbytes = f"stca-row-cache-{server or os.getppid()}-{name}", nbytes
        where = os.path.join(tempfile.gettempdir(), self.name)
        with open(where + ".lock", "a") as guard:  # one process decides at a time whether to make it
            fcntl.flock(guard, fcntl.LOCK_EX)
            self.fd = self._open(where)
            self.fresh = self.fd is None  # made here: this process fills its arrays
            if self.fresh:
                _remove_stale_region_files()
                self.fd = os.memfd_create(self.name)
                os.ftruncate(self.fd, nbytes)
                with open(where, "w") as f:
                    json.dump({"pid": os.getpid(), "fd": self.fd}, f)
        self.memory = mmap.mmap(self.fd, nbytes)
        # Resident in this process from the start: left to fault in as rows land, each new 4 KiB page of the region (no
        # transparent huge pages for shared memory on these hosts) cost the request that wrote it, more so with both
        # processes faulting at once (medium model, repeated users, 2 CPUs, concurrency 4: 12.1 req/s, 14.1 populated).
        # The memory check counts the whole budget anyway.
        with contextlib.suppress(OSError):  # Linux before 5.14 has no MADV_POPULATE_WRITE: pages fault in as written
            self.memory.madvise(MADV_POPULATE_WRITE)

    def _open(self, where: str) -> int | None:
        """The region another process of this model made, if it is alive and has it."""
        try:
            with open(where) as f:
                made = json.load(f)
            link = f"/proc/{made['pid']}/fd/{made['fd']}"
            if not os.readlink(link).startswith(f"/memfd:{self.name}"):
                return None  # the pid or the fd was reused
            fd = os.open(link, os.O_RDWR)
        except (OSError, ValueError, KeyError):
            return None
        if os.fstat(fd).st_size != self.nbytes:
            os.close(fd)
            return None
        return fd

    def lock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def region_files(server: int) -> list[str]:
    """The files in the temporary directory that say where the SharedRegions of a server's models are (a stopped
    server's are stale: its regions ended with its processes)."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"stca-row-cache-{server}-*"))


def _remove_stale_region_files() -> None:
    """Those of servers that are gone (a server killed without its stop() leaves them; its regions went with it)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "stca-row-cache-*")):
        server = os.path.basename(path).split("-")[3]
        if server.isdigit() and not os.path.exists(f"/proc/{server}"):
            with contextlib.suppress(OSError):
                os.unlink(path)


class Arena:
    """Where a row cache's arrays live: private memory, each array its own allocation (the default), or a SharedRegion,
    the arrays laid out in the order they are asked for, so every process building the same cache finds each array at
    the same place; only the process that made the region fills them."""

    PAGE = 4096

    def __init__(self, region: SharedRegion | None = None):
        self.region, self.used = region, 0

    def array(self, shape: tuple, dtype, fill=0) -> np.ndarray:
        if self.region is None:
            return np.full(shape, fill, dtype) if fill else np.zeros(shape, dtype)
        view = self._view(shape, np.dtype(dtype), align=64)
        if self.region.fresh and fill:  # the region starts zeroed
            view.fill(fill)
        return view

    def table(self, capacity: int, spec: RowSpec) -> np.ndarray:
        """[capacity, *row_shape] of rows, resident as they are written (_table)."""
        if self.region is None:
            return _table(capacity, spec)
        return self._view((capacity, *spec.row_shape), np.dtype(spec.dtype), align=self.PAGE)

    def _view(self, shape: tuple, dtype: np.dtype, align: int) -> np.ndarray:
        start = -(-self.used // align) * align
        count = int(np.prod(shape, dtype=np.int64))
        self.used = start + count * dtype.itemsize
        if self.used > self.region.nbytes:
            raise ValueError(f"row cache: its arrays need more than the {self.region.nbytes} bytes of {self.region.name}")
        return np.frombuffer(self.region.memory, dtype, count, start).reshape(shape)


class FrequencySketch:
    """How often each key was looked up lately: a count-min sketch (DEPTH rows of 4-bit counters, a key's count the
    least of its cells), every counter halved once `period` keys have been counted, so old popularity fades."""

    DEPTH = 4
    MAX_COUNT = 15
    # odd 64-bit multipliers: one hash a row, from the key's mixed 64 bits
    SEEDS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], np.uint64)

    def __init__(self, capacity: int, arena: "Arena | None" = None):
        arena = arena or Arena()
        self.bits = max(4, int(np.ceil(np.log2(max(16, 4 * capacity)))))  # about 4 counters a cached row, per row
        self.table = arena.array((self.DEPTH, 1 << self.bits), np.uint8)
        self.period = 10 * max(capacity, 1)
        self._state = arena.array((1,), np.int64)

    counted = Cell(0)  # keys counted since the last halving

    def clear(self) -> None:
        self.table.fill(0)
        self.counted = 0

    def _cells(self, codes: np.ndarray) -> np.ndarray:
        """[DEPTH, M] cell of each of M keys ([M, k] int64 codes) in each row."""
        with np.errstate(over="ignore"):
            return (mix(codes)[None, :] * self.SEEDS[:, None]) >> np.uint64(64 - self.bits)

    def count(self, codes: np.ndarray) -> np.ndarray:
        """Count each of these distinct keys once more; return their counts."""
        cells = self._cells(codes)
        rows = np.arange(self.DEPTH)[:, None]
        self.table[rows, cells] = np.minimum(self.table[rows, cells], self.MAX_COUNT - 1) + 1
        self.counted += len(codes)
        if self.counted >= self.period:
            self.table >>= 1
            self.counted //= 2
        return self.table[rows, cells].min(axis=0)

    def estimate(self, codes: np.ndarray) -> np.ndarray:
        cells = self._cells(codes)
        return self.table[np.arange(self.DEPTH)[:, None], cells].min(axis=0)


class KeyIndex:
    """Key codes -> slots, as numpy arrays and no Python object a key: open addressing over `buckets` (a power of two,
    at least twice the slots, so probe sequences stay short), linear probing, deletions marked as tombstones, which a
    rebuild clears once they are a quarter of the buckets. Every operation takes all of a request's keys at once: one
    numpy step a probe position, not a Python step a key."""

    EMPTY, DELETED = -1, -2

    def __init__(self, capacity: int, key_width: int, arena: "Arena | None" = None):
        arena = arena or Arena()
        self.bits = max(4, int(np.ceil(np.log2(max(8, 2 * capacity)))))
        self.buckets = arena.array((1 << self.bits,), np.int32, fill=self.EMPTY)
        self.codes = arena.array((capacity, key_width), np.int64)  # each slot's key
        self.live = arena.array((capacity,), bool)
        self._state = arena.array((2,), np.int64)

    size, deleted = Cell(0), Cell(1)  # keys held; buckets marked deleted

    def __len__(self) -> int:
        return self.size

    def clear(self) -> None:
        self.buckets.fill(self.EMPTY)
        self.live.fill(False)
        self.size = self.deleted = 0

    def find(self, codes: np.ndarray) -> np.ndarray:
        """The slot of each of [M, k] codes, -1 where absent."""
        return self._probe(codes)[0]

    def insert(self, codes: np.ndarray, slots: np.ndarray) -> None:
        """Index absent, distinct [M, k] codes at free `slots`."""
        self.codes[slots], self.live[slots] = codes, True
        self.size += len(slots)
        self._place(codes, slots.astype(np.int32))

    def remove(self, slots: np.ndarray) -> None:
        """Forget the keys of these slots."""
        found, positions = self._probe(self.codes[slots])
        self.buckets[positions[found >= 0]] = self.DELETED
        self.live[slots] = False
        self.size -= len(slots)
        self.deleted += int((found >= 0).sum())
        if self.deleted * 4 > len(self.buckets):
            self.buckets.fill(self.EMPTY)
            self.deleted = 0
            held = np.flatnonzero(self.live)
            self._place(self.codes[held], held.astype(np.int32))

    def _home(self, codes: np.ndarray) -> np.ndarray:
        return (mix(codes) >> np.uint64(64 - self.bits)).astype(np.int64)

    def _probe(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each key's slot or -1, the bucket where it was found or its probe ended)."""
        mask = len(self.buckets) - 1
        slots, positions = np.full(len(codes), -1, np.int64), self._home(codes)
        pending = np.arange(len(codes))
        while len(pending):
            held = self.buckets[positions[pending]]
            match = held >= 0
            match[match] = (self.codes[held[match]] == codes[pending[match]]).all(axis=1)
            slots[pending[match]] = held[match]
            going = ~match & (held != self.EMPTY)  # a tombstone or another key: look further
            pending = pending[going]
            positions[pending] = (positions[pending] + 1) & mask
        return slots, positions

    def _place(self, codes: np.ndarray, slots: np.ndarray) -> None:
        """Put each slot in the first free bucket of its key's probe sequence; keys that want the same bucket take it in
        turn."""
        mask = len(self.buckets) - 1
        positions, pending = self._home(codes), np.arange(len(codes))
        while len(pending):
            free = self.buckets[positions[pending]] < 0
            wanted, first = np.unique(positions[pending[free]], return_index=True)
            taken = self.buckets[wanted] == self.DELETED
            self.deleted -= int(taken.sum())
            self.buckets[wanted] = slots[pending[free][first]]
            placed = np.zeros(len(pending), bool)
            placed[np.flatnonzero(free)[first]] = True
            moving = pending[~free]
            positions[moving] = (positions[moving] + 1) & mask  # the others try the same bucket again: now taken
            pending = pending[~placed]


class RowCache:
    """Rows of the cached outputs by key within `budget_bytes`: least recently used rows are the victims, and once
    the cache is full a new row takes a victim's place only if it is asked for more often (module docstring).

    With a SharedRegion (`shared`), the processes of one served model hold one cache: its arrays and counts live in the
    region and its lock is the region's. A request holds the lock to find its rows (and copy out those found), computes
    the missing ones without it, and holds it again to keep them, so the processes compute in parallel. Should a
    process die holding the lock, the next one to take it finds the cache marked as being changed and empties it:
    a half-made change is never read. The budget is the whole cache's, however many processes share it."""

    def __init__(self, budget_bytes: int, rows: dict[str, RowSpec], key_width: int, admission: str = "frequency",
                 shared: SharedRegion | None = None):
        if admission not in ADMISSIONS:
            raise ValueError(f"row cache admission {admission!r} is not one of {ADMISSIONS}")
        arena = Arena(shared)
        self.key_width, self.shared = key_width, shared
        self.entry_bytes = entry_bytes(sum(s.nbytes for s in rows.values()), key_width)
        self.capacity = max(0, budget_bytes) // self.entry_bytes
        self._state = arena.array((4,), np.int64)
        self.sketch = FrequencySketch(self.capacity, arena) if admission == "frequency" else None
        self.stamp = arena.array((self.capacity,), np.int64)  # the request that last used each slot
        self.index = KeyIndex(self.capacity, key_width, arena)
        self.tables = {name: arena.table(self.capacity, s) for name, s in rows.items()}
        # this process's counters: distinct keys found, distinct keys computed, rows dropped (evicted, or emptied after a
        # process died changing the cache), computed rows kept, computed rows not kept (the cache full of more asked-for
        # rows, or the row kept meanwhile by another process)
        self.hits = self.misses = self.evictions = self.admitted = self.rejected = 0
        self.lock = threading.Lock()
        self._rng = np.random.default_rng(0)  # which slots _least_recent looks at
        if shared is None or shared.fresh:
            self.made = 1
        else:  # the process that made the region may still be filling its arrays
            deadline = time.monotonic() + MADE_TIMEOUT_S
            while not self.made:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"row cache: {shared.name} was not made within {MADE_TIMEOUT_S:.0f}s")
                time.sleep(0.01)

    # slots ever filled (the rest are free); requests; a change under way; the arrays filled by the process that made them
    used, clock, changing, made = Cell(0), Cell(1), Cell(2), Cell(3)

    @property
    def nbytes(self) -> int:
        return len(self.index) * self.entry_bytes

    @contextlib.contextmanager
    def _locked(self):
        """The cache to change, alone: this process's threads and, where shared, the other processes."""
        with self.lock:
            if self.shared is not None:
                self.shared.lock()
            try:
                if self.changing:  # a process died in the middle of a change: start again from empty
                    self.evictions += len(self.index)
                    self.index.clear()
                    self.stamp.fill(0)
                    self.used = 0
                    if self.sketch is not None:
                        self.sketch.clear()
                self.changing = 1
                yield
                self.changing = 0  # not reached where the change raised: the next one starts from empty
            finally:
                if self.shared is not None:
                    self.shared.unlock()

    def lookup(self, codes: np.ndarray, compute, once: bool = False) -> dict[str, np.ndarray]:
        """The rows for [L, k] key codes, in order; compute([M, k] codes of distinct missing keys) -> {name: [M, ...]}.
        `once`: the codes are distinct already (distinct()'s first answer), and each has its rows once."""
        unique, inverse = (codes, np.arange(len(codes))) if once else distinct(codes)
        with self._locked():
            self.clock += 1
            slots = self.index.find(unique)
            found = slots >= 0
            self.stamp[slots[found]] = self.clock
            missing = np.flatnonzero(~found)
            self.hits += len(unique) - len(missing)
            self.misses += len(missing)
            counts = self.sketch.count(unique) if self.sketch is not None else None
            if not len(missing):
                return self._gather(slots[inverse])
            # every request row copied now, while no one can evict it: the found ones from their slots, the others from
            # slot 0 as a placeholder, overwritten once computed (one take of all the rows: copying the found rows alone
            # into place, through a mask, made a lookup 8.4 ms against 6.1, in process, L=7,000, 94% found)
            rows = self._gather(np.where(found, slots, 0)[inverse])
        computed = compute(unique[missing])
        not_found = np.flatnonzero(~found[inverse])
        from_computed = np.searchsorted(missing, inverse[not_found])  # its key's place among the computed
        for name, out in rows.items():
            out[not_found] = computed[name][from_computed]
        if len(unique) <= self.capacity:  # a request larger than the cache keeps nothing: it would evict its own rows
            with self._locked():
                self._keep(unique, missing, counts, computed)
        else:
            self.rejected += len(missing)
        return rows

    def _keep(self, unique: np.ndarray, missing: np.ndarray, counts: np.ndarray | None, computed: dict) -> None:
        """Keep the computed rows of `missing` (indices into the request's distinct keys, ascending) that no other
        process kept meanwhile, as far as admission allows. A tick of its own: every row in the cache may be a victim,
        the request's own found rows too (they are copied out already), so there are always enough."""
        self.clock += 1
        absent = missing[self.index.find(unique[missing]) < 0]
        kept, victims = self._admit(absent, counts)
        self.admitted += len(kept)
        self.rejected += len(missing) - len(kept)
        if len(kept):
            slots = self._claim(unique[kept], victims)
            position = np.searchsorted(missing, kept)  # kept is a subset of missing, both ascending
            for name, table in self.tables.items():
                table[slots] = computed[name][position]

    def _admit(self, missing: np.ndarray, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Which computed keys to keep (indices into this request's distinct keys, ascending), and the rows they
        replace (None: the least recently used, as _claim picks them). All fit while there is room; past that, the
        least recently used rows this request does not use are the candidates for eviction, and the most asked-for
        new keys take the places of the least asked-for of them, each only where its count is higher."""
        room = self.capacity - len(self.index)
        if counts is None or len(missing) <= room:
            return missing, None
        lru = self._least_recent(len(missing) - room)
        victim_counts = self.sketch.estimate(self.index.codes[lru])
        order = np.argsort(victim_counts, kind="stable")
        by_count = missing[np.argsort(-counts[missing], kind="stable")]
        contenders = by_count[room:room + len(lru)]
        wins = counts[contenders] > victim_counts[order]  # a prefix: counts fall, victims' rise
        return np.sort(np.concatenate([by_count[:room], contenders[wins]])), lru[order][wins]

    def _least_recent(self, n: int) -> np.ndarray:
        """Up to n slots used least recently before this tick: exactly where the cache holds at most VICTIM_SAMPLES x n
        rows, else the n oldest of VICTIM_SAMPLES x n slots drawn at random (sampled LRU, as Redis evicts), so that
        choosing costs what the victims number, not what the cache holds: a scan of a full 1 GiB cache of the demo
        model's rows (500,000) took 5.5 of a 12 ms lookup, in process, a request of 2,000 rows with 300 new."""
        if self.used <= VICTIM_SAMPLES * n:
            candidates = np.arange(self.used)
        else:
            candidates = np.unique(self._rng.integers(0, self.used, VICTIM_SAMPLES * n))
        older = candidates[self.stamp[candidates] < self.clock]
        n = min(n, len(older))
        return older[np.argpartition(self.stamp[older], n - 1)[:n]] if n else older[:0]

    def _gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        # np.take copies whole rows; measured 6.4 ms against 7.7 for fancy indexing (medium model, L=10,000)
        return {name: np.take(table, slots, axis=0) for name, table in self.tables.items()}

    def _claim(self, codes: np.ndarray, victims: np.ndarray | None = None) -> np.ndarray:
        """Slots for new keys ([M, k] codes): free ones first, then `victims`, or where None those least recently used
        by earlier requests."""
        fresh = min(len(codes), self.capacity - self.used)
        slots = np.arange(self.used, self.used + fresh)
        if fresh < len(codes):  # the cache is full (fresh slots are all taken, so none of them can be a victim)
            victims = self._least_recent(len(codes) - fresh) if victims is None else victims
            self.index.remove(victims)
            self.evictions += len(victims)
            slots = np.concatenate([slots, victims])
        self.used += fresh
        self.index.insert(codes, slots)
        self.stamp[slots] = self.clock
        return slots

    def counters(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "admitted": self.admitted,
                "rejected": self.rejected, "entries": len(self.index), "bytes": self.nbytes, "capacity_entries": self.capacity}


def _table(capacity: int, spec: RowSpec) -> np.ndarray:
    """[capacity, *row_shape] of address space that becomes resident as rows are written, in 2 MiB pages where the
    kernel allows (transparent huge pages on madvise): with 4 KiB pages every new row's first write faulted its pages
    in, which doubled the cost of a computed row (medium model, in process: 49.6 us against 23.3 with the pages
    resident; the uncached encoder takes 24.1 a row). Private: Python maps anonymous memory shared by default, which
    Linux backs with shmem, whose huge pages follow shmem_enabled (often never), not the madvise, and which /proc
    counts as shared (RssShmem), not as the process's own."""
    if capacity * spec.nbytes == 0:
        return np.empty((capacity, *spec.row_shape), spec.dtype)
    # anonymous, zero-filled on first touch, like np.empty's large blocks
    memory = mmap.mmap(-1, capacity * spec.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, spec.dtype).reshape(capacity, *spec.row_shape)


@dataclass(frozen=True)
class RowKey:
    name: str  # the key graph's output and the row graph's input
    dtype: str  # numpy dtype name of the key column
    source: str = ""  # the encoder value it is (recorded by the build; the served cache does not need it)


def distinct(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of [L, k] codes, [U, k]; each input row's index among them, [L])."""
    flat = np.ascontiguousarray(codes).view(np.dtype((np.void, 8 * codes.shape[1])))[:, 0]
    unique, inverse = np.unique(flat, return_inverse=True)
    return unique.view(np.int64).reshape(len(unique), codes.shape[1]), inverse.reshape(-1)


class RowRate:
    """Milliseconds per row of a graph, as the ratio of exponentially weighted means of its runs' milliseconds and
    rows: a run's say is in proportion to its rows, so a small request's fixed cost (Triton's warmup sends one row:
    0.17 ms for it, against 0.002 a row at L=2,000) does not pass for a per-row cost."""

    def __init__(self, weight: float):
        self.weight, self.ms, self.rows = weight, 0.0, 0.0

    def add(self, rows: int, ms: float) -> None:
        self.ms += self.weight * (ms - self.ms) if self.rows else ms
        self.rows += self.weight * (rows - self.rows) if self.rows else rows

    @property
    def per_row(self) -> float | None:
        return self.ms / self.rows if self.rows else None


class CacheWorth:
    """Whether going through a full cache pays on the traffic of late, measured: a request through the cache costs
    what its path took (key graph, lookups, the row graph on its missing rows, copies, assembly); skipping the cache
    would have cost the rows it computes then times their time per row. Skipping runs the whole encoder on every row
    (its time per row timed on the requests that ran it; until one has, the row graph's time per computed row, the
    same rows' work), or, where the scorer reads each distinct row once (CachedEncoder's multiplicity), the row graph
    on the request's distinct keys, so that the scorer keeps that saving (timed on the row graph's runs). Both are
    exponentially weighted over requests. While the cache's path costs more, requests skip the cache, except one in
    PROBE_EVERY, which keeps the frequency sketch and this measure following the traffic: a service whose rows start
    repeating finds the cache again. A cache with room for a request (as many free slots as the last request had rows)
    is always consulted and not judged: its misses fill it, which pays only later."""

    WEIGHT = 0.1  # each request's share of the means
    PROBE_EVERY = 16
    # The whole encoder's first runs are not timed: ONNX Runtime's first runs of a session grow its arena (demo model,
    # L=2,000: 8.1, 7.4, 5.2 ms, then about 5), and one such time in the mean would send requests back to the cache,
    # after which the encoder would not run again to correct it.
    UNTIMED_RUNS = 3

    def __init__(self):
        self.encoder = RowRate(self.WEIGHT)  # the whole encoder, per history row
        self.row_graph = RowRate(self.WEIGHT)  # the row graph, per computed row
        self.margin_ms = 0.0  # mean of (the whole encoder's estimated time - the cache's path's time) per request
        self.passed = 0  # requests not sent through the cache since it last was
        self.whole_runs = 0

    def use_cache(self) -> bool:
        if self.margin_ms >= 0 or self.passed + 1 >= self.PROBE_EVERY:
            self.passed = 0
            return True
        self.passed += 1
        return False

    def cached(self, rows: int, computed: int, computed_ms: float, path_ms: float, full: bool = True) -> None:
        """A request went through the cache in path_ms, `computed` of its rows by the row graph in computed_ms; skipping
        the cache it would have computed `rows`; `full`: the cache had no room for it (only then does the request count
        for the cache's worth)."""
        if computed:
            self.row_graph.add(computed, computed_ms)
        row_ms = self.encoder.per_row if self.encoder.per_row is not None else self.row_graph.per_row
        if full and row_ms is not None:
            self.margin_ms += self.WEIGHT * (rows * row_ms - path_ms - self.margin_ms)

    def skipped(self, rows: int, ms: float) -> None:
        """A request skipped the cache, the row graph computing its `rows` distinct rows in ms."""
        self.row_graph.add(rows, ms)

    def whole(self, rows: int, encoder_ms: float) -> None:
        """A request of `rows` history rows ran the whole encoder in encoder_ms."""
        self.whole_runs += 1
        if self.whole_runs > self.UNTIMED_RUNS:
            self.encoder.add(rows, encoder_ms)


class CachedEncoder:
    """The history encoder as key graph + cache + row graph; outputs equal the encoder's (module docstring).

    run_keys(request inputs) -> {key names and passthrough outputs}; run_rows({key name: [M]}) -> {cached output: [M, ...]}.
    Without a cache (None) every row is computed, each distinct key once. With `multiplicity` (a cached output of one
    float a row), each distinct key's rows come once, that output raised by the log of the key's count (module
    docstring): not the encoder's outputs, but what the scorer answers the same on. With `skip`, a request skips a full
    cache while it does not pay (CacheWorth): with a multiplicity the row graph then runs on its distinct keys (the
    scorer keeps reading each distinct row once), else run_encoder (request inputs -> the encoder's outputs, the whole
    encoder) answers it.
    """

    def __init__(self, run_keys, run_rows, keys: list[RowKey], cache: RowCache | None, run_encoder=None,
                 multiplicity: str | None = None, skip: bool = False):
        if skip and multiplicity is None and run_encoder is None:
            raise ValueError("CachedEncoder: skipping the cache without a multiplicity needs run_encoder, the whole encoder")
        self.run_keys, self.run_rows, self.keys, self.cache, self.run_encoder = run_keys, run_rows, keys, cache, run_encoder
        self.multiplicity = multiplicity
        self.worth = CacheWorth() if skip and cache is not None and cache.capacity else None
        self.bypassed = 0  # requests that skipped the cache
        self.rows = 0  # the last request's history rows

    def __call__(self, inputs: dict) -> dict:
        start, full = time.perf_counter(), self.cache is not None and self.cache.capacity - self.cache.used < max(self.rows, 1)
        computed = []
        if self.worth is not None and full and not self.worth.use_cache():
            self.bypassed += 1
            if self.multiplicity is not None:  # the row graph on the distinct keys: the scorer still reads each row once
                outputs, self.rows, _ = self._assemble(self.run_keys(inputs), computed, consult=False)
                self.worth.skipped(*computed[0])
                return outputs
            outputs = self.run_encoder(inputs)
            self.rows = len(outputs[next(iter(self.cache.tables))])  # a cached output: one row per history row
            self.worth.whole(self.rows, 1e3 * (time.perf_counter() - start))
            return outputs
        outputs, self.rows, skip_rows = self._assemble(self.run_keys(inputs), computed)
        if self.worth is not None:
            self.worth.cached(skip_rows, *(computed[0] if computed else (0, 0.0)), path_ms=1e3 * (time.perf_counter() - start), full=full)
        return outputs

    def assemble(self, keyed: dict) -> dict:
        """The key graph's outputs (its key columns and passthrough values) -> the encoder's outputs: where the cache
        lives beside the scorer, the key graph runs in another process and only its outputs arrive here."""
        return self._assemble(keyed, [])[0]

    def counters(self) -> dict[str, int]:
        return {**(self.cache.counters() if self.cache is not None else {}), "bypassed": self.bypassed}

    def _assemble(self, keyed: dict, computed: list, consult: bool = True) -> tuple[dict, int, int]:
        """(assemble's answer, the request's history rows, the rows a request that skips the cache computes: each
        distinct key's with a multiplicity, else every row); the row graph's (rows, milliseconds) appended to computed.
        consult=False: the cache is neither read nor changed."""
        keyed = dict(keyed)
        codes = key_codes([keyed.pop(k.name) for k in self.keys])
        compute = functools.partial(self._compute, computed=computed)
        cached = consult and self.cache is not None and self.cache.capacity > 0
        if self.multiplicity is None and cached:
            return {**keyed, **self.cache.lookup(codes, compute)}, len(codes), len(codes)
        unique, inverse = distinct(codes)
        if self.multiplicity is None:
            return {**keyed, **{name: rows[inverse] for name, rows in compute(unique).items()}}, len(codes), len(codes)
        rows = self.cache.lookup(unique, compute, once=True) if cached else compute(unique)
        weight = rows[self.multiplicity]
        rows[self.multiplicity] = weight + np.log(np.bincount(inverse)).astype(weight.dtype)
        return {**keyed, **rows}, len(codes), len(unique)

    def _compute(self, codes: np.ndarray, computed: list) -> dict:
        start = time.perf_counter()
        columns = from_codes(codes, [k.dtype for k in self.keys])
        rows = self.run_rows({k.name: c for k, c in zip(self.keys, columns)})
        computed.append((len(codes), 1e3 * (time.perf_counter() - start)))
        return rows
