"""The SQLite store: WAL, one row per (context, key, round), idempotent batches, clear errors."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from latbench.errors import StoreError
from latbench.measurement import Measurement
from latbench.store import Context, Store

SETTINGS = {"runner": "python", "protocol": {"runs": 5}, "exporter": "test"}


@pytest.fixture
def db(tmp_path):
    return tmp_path / "latbench.db"


@pytest.fixture
def store(db):
    with Store(db) as s:
        yield s


def ctx_of(store: Store, device: str = "dev", version: str = "onnxruntime 1.0", settings=None) -> Context:
    return store.context(device, "onnxruntime", version, settings or SETTINGS)


def results(keys, rnd: int, base_ms: float = 1.0):
    return [(k, rnd, "op", Measurement(k, [base_ms + i, base_ms + i + 0.5, base_ms + i + 1.0]),
             {"position": i, "temperature_c": 40.0}) for i, k in enumerate(keys)]


def save(store, ctx, res, **kw):
    return store.save_batch(ctx, results=res, status="ok", items=len(res), started_at=time.time(), **kw)


def count_rows(db, table="measurements") -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_the_database_is_in_wal_mode(store, db):
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_measured_returns_what_was_saved(store):
    ctx = ctx_of(store)
    assert store.measured(ctx) == set()
    save(store, ctx, results(["a", "b"], 0) + results(["a"], 1))
    assert store.measured(ctx) == {("a", 0), ("b", 0), ("a", 1)}
    rows = {(r.key, r.round): r for r in store.rows(ctx)}
    assert rows["b", 0].median_ms == 2.5 and rows["b", 0].count == 3
    assert rows["b", 0].p10_ms == pytest.approx(np.percentile([2.0, 2.5, 3.0], 10))
    assert rows["b", 0].temperature_c == 40.0 and rows["b", 0].kind == "op"
    np.testing.assert_allclose(store.samples(ctx, "b", 0), [2.0, 2.5, 3.0])
    with pytest.raises(KeyError):
        store.samples(ctx, "b", 7)


def test_saving_the_same_batch_twice_adds_no_rows(store, db):
    ctx = ctx_of(store)
    res = results(["a", "b", "c"], 0)
    assert save(store, ctx, res) == 3
    first = store.rows(ctx)
    # same (key, round), new numbers: none is new, so a collection does not count them measured
    assert save(store, ctx, results(["a", "b", "c", "d"], 0, base_ms=9.0)) == 1
    assert count_rows(db) == 4
    assert [r for r in store.rows(ctx) if r.key != "d"] == first  # the first numbers are kept
    assert count_rows(db, "batches") == 2


def test_each_part_of_the_context_keeps_rows_apart(store, db):
    """Device, runtime version, settings and round each make a new row for the same key."""
    contexts = [ctx_of(store), ctx_of(store, device="other"), ctx_of(store, version="onnxruntime 2.0"),
                ctx_of(store, settings=SETTINGS | {"protocol": {"runs": 6}})]
    assert len({c.settings_hash for c in contexts}) == 2
    for ctx in contexts:
        save(store, ctx, results(["a"], 0) + results(["a"], 1))
    assert count_rows(db) == 8
    for ctx in contexts:
        assert store.measured(ctx) == {("a", 0), ("a", 1)}
    ids = [c.table_id for c in contexts]  # a table is named within its device
    assert ids[0] == ids[1] and len(set(ids[1:])) == 3 and all(len(i) == 8 for i in ids)


def test_a_context_is_the_same_for_the_same_settings(store):
    a = ctx_of(store, settings={"x": 1, "y": {"b": 2, "a": 1}})
    b = ctx_of(store, settings={"y": {"a": 1, "b": 2}, "x": 1})
    assert a == b


def test_the_runtime_label_names_the_runtime_once():
    assert Context("d", "onnxruntime", "onnxruntime 1.32.0", "h").runtime_label == "onnxruntime 1.32.0"
    assert (Context("d", "tflite", "benchmark_model 2.16.1", "h").runtime_label
            == "tflite (benchmark_model 2.16.1)")
    assert Context("d", "imported", "hwnasbench-raspi4", "h").runtime_label == "imported (hwnasbench-raspi4)"


def test_table_takes_the_median_over_rounds(store):
    ctx = ctx_of(store)
    for rnd, median in enumerate([1.0, 5.0, 2.0]):
        save(store, ctx, [("a", rnd, "op", Measurement("a", [median - 0.1, median, median + 0.1]), {})])
    save(store, ctx, [("net:x:1", 0, "network", Measurement("n", [7.0]), {})])
    table = {r["key"]: r for r in store.table(ctx)}
    assert table["a"]["median_ms"] == pytest.approx(2.0)  # median of 1, 5, 2
    assert table["a"]["rounds"] == 3 and table["a"]["count"] == 9
    assert table["a"]["round_spread"] == pytest.approx((5.0 - 1.0) / 2.0)
    assert table["net:x:1"]["kind"] == "network" and table["net:x:1"]["median_ms"] == 7.0
    assert table["net:x:1"]["round_spread"] is None  # one round: no spread, not a perfect 0
    assert [r.key for r in store.rows(ctx, kind="network")] == ["net:x:1"]


def test_the_store_reopens_with_its_rows(db):
    with Store(db) as s:
        ctx = ctx_of(s)
        save(s, ctx, results(["a", "b"], 0))
    with Store(db) as s:
        assert s.measured(ctx) == {("a", 0), ("b", 0)}
        assert s.latest_context("dev").context == ctx
        assert s.latest_context("nobody") is None


def test_failures_are_recorded_and_cleared_by_a_later_success(store):
    ctx = ctx_of(store)
    store.record_failure(ctx, "a", "run", "boom")
    assert store.failures(ctx) == {"a": ("run", "boom")}
    save(store, ctx, results(["a"], 0))
    assert store.failures(ctx) == {}


def test_a_corrupt_database_file_is_a_store_error(db):
    db.write_bytes(b"this is not sqlite at all\x00\xff" * 200)
    with pytest.raises(StoreError) as info:
        Store(db)
    assert "corrupt" in info.value.message and str(db) in info.value.message
    assert "move it aside" in info.value.hint
    assert "\n" not in str(info.value)


def test_a_locked_database_is_a_store_error_that_says_locked(db):
    with Store(db, timeout_s=0.2) as store:
        ctx = ctx_of(store)
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            t0 = time.perf_counter()
            with pytest.raises(StoreError) as info:
                save(store, ctx, results(["a"], 0))
            assert time.perf_counter() - t0 < 5
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert "locked" in info.value.message and str(db) in info.value.message
        assert "re-run" in info.value.hint
        # nothing half-written, and the store works once the lock is gone
        assert store.measured(ctx) == set()
        save(store, ctx, results(["a"], 0))
        assert store.measured(ctx) == {("a", 0)}


def test_a_full_disk_is_a_store_error_that_says_so_and_keeps_what_was_stored(store, db):
    ctx = ctx_of(store)
    save(store, ctx, results(["kept"], 0))
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # as a disk with 2 pages left
    with pytest.raises(StoreError) as info:
        for rnd in range(1, 200):  # raw samples fill the pages in a few batches
            save(store, ctx, [(f"k{rnd}-{i}", rnd, "op", Measurement(f"k{rnd}-{i}", np.arange(1.0, 400.0)), {})
                              for i in range(20)])
    assert "is full" in info.value.message and str(db) in info.value.message  # not "no transaction"
    assert "free space" in info.value.hint
    assert ("kept", 0) in store.measured(ctx)
    assert not store.conn.in_transaction  # the store stays usable once there is room


def test_a_database_under_a_regular_file_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the database"):
        Store(blocker / "sub" / "latbench.db")


def test_a_database_from_a_newer_latbench_is_refused(db):
    with Store(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="newer latbench"):
        Store(db)


def test_a_newer_database_whose_tables_changed_is_refused_untouched(db):
    """A newer schema may rename what ours has: the refusal must come first (it was 'no such
    column: device' from our schema script), and nothing of ours is written into that file."""
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                           "INSERT INTO meta VALUES ('schema_version', '2');"
                           "CREATE TABLE measurements (id INTEGER PRIMARY KEY, context_id INTEGER);")
    with pytest.raises(StoreError) as info:
        Store(db)
    assert "newer latbench (schema 2 > 1)" in info.value.message and info.value.hint == "upgrade latbench"
    with sqlite3.connect(db) as conn:
        tables = {name for name, in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "measurements"}


def test_opening_a_database_another_process_holds_exclusively_says_locked(db):
    """A rollback-journal database under an exclusive lock cannot even be read."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(StoreError) as info:
            Store(db, timeout_s=0.2)
        assert "locked" in info.value.message
    finally:
        other.execute("ROLLBACK")
        other.close()
