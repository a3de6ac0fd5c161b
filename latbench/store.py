"""The measurement store: one SQLite file (WAL), one row per (device, runtime and version,
settings, key, round). A batch is written in one transaction, so a crash loses at most
the batch in flight, and the unique key makes re-running idempotent."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from latbench.errors import StoreError
from latbench.measurement import Measurement, round_spread

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (hash TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, runtime TEXT NOT NULL, runtime_version TEXT NOT NULL,
    settings_hash TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, error TEXT, items INTEGER NOT NULL,
    started_at REAL NOT NULL, finished_at REAL NOT NULL,
    state_before TEXT, state_after TEXT, runner TEXT
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, runtime TEXT NOT NULL, runtime_version TEXT NOT NULL,
    settings_hash TEXT NOT NULL, key TEXT NOT NULL, round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,
    mean_ms REAL NOT NULL, std_ms REAL NOT NULL, count INTEGER NOT NULL,
    samples BLOB NOT NULL,
    batch_id INTEGER REFERENCES batches(id), position INTEGER, unit TEXT NOT NULL DEFAULT '',
    temperature_c REAL, measured_at REAL NOT NULL,
    UNIQUE (device, runtime, runtime_version, settings_hash, key, round)
);
CREATE INDEX IF NOT EXISTS measurements_by_context
    ON measurements (device, runtime, runtime_version, settings_hash);
CREATE TABLE IF NOT EXISTS failures (
    device TEXT NOT NULL, settings_hash TEXT NOT NULL, key TEXT NOT NULL, stage TEXT NOT NULL,
    error TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (device, settings_hash, key, stage)
);
"""


@dataclass(frozen=True)
class Context:
    """Everything that must match for two numbers to be comparable."""

    device: str
    runtime: str
    runtime_version: str
    settings_hash: str

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.device, self.runtime, self.runtime_version, self.settings_hash)

    @property
    def runtime_label(self) -> str:
        """The runtime as printed: "onnxruntime 1.32.0", but "tflite (benchmark_model 2.16.1)"
        when the version label names another program than the runtime."""
        if self.runtime_version.split(" ", 1)[0] == self.runtime:
            return self.runtime_version
        return f"{self.runtime} ({self.runtime_version})"

    @property
    def table_id(self) -> str:
        """A short name for the table of this context on its device, for `--table`: the
        runtime, its version and the settings, hashed (the device is the command's)."""
        import hashlib

        blob = "\0".join((self.runtime, self.runtime_version, self.settings_hash))
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Row:
    """One stored measurement (summary; samples on request)."""

    key: str
    round: int
    kind: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    count: int
    temperature_c: float | None
    measured_at: float


@dataclass(frozen=True)
class ContextInfo:
    context: Context
    settings: dict
    measurements: int
    keys: int
    last_measured_at: float
    networks: int = 0  # of the keys, whole networks


def _encode_samples(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<f4").tobytes()


def decode_samples(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float64)


class Store:
    """A SQLite measurement store. Open with `Store(path)`; close or use as a context manager."""

    def __init__(self, path: Path | str, timeout_s: float = 10.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}",
                             "set LATBENCH_HOME to a writable directory") from None
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            version = self._schema_version()
            if version is not None and version > SCHEMA_VERSION:
                self.conn.close()
                raise StoreError(f"the database {self.path} was written by a newer latbench "
                                 f"(schema {version} > {SCHEMA_VERSION})", "upgrade latbench")
            self.conn.executescript(_SCHEMA)  # IF NOT EXISTS: takes no write lock once created
            if version is None:
                with self._write() as conn:
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            self.conn.close()
            raise self._error(exc) from None

    def _schema_version(self) -> int | None:
        """The stored schema version, None for a new database. Read before the schema script
        runs: a newer latbench's tables may differ from ours, and an older latbench must
        neither write its tables into that database nor fail on them ("no such column")
        before it says to upgrade."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
            return None
        found = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(found[0]) if found else None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreError(f"the database {self.path} is locked by another process",
                              "wait for the other latbench command to finish, then re-run")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreError(f"the database {self.path} is corrupt ({text})",
                              "move it aside and re-run; `latbench collect` measures again what is missing")
        if "full" in text:  # "database or disk is full"
            return StoreError(f"the disk that holds {self.path} is full ({text})",
                              "free space there and re-run: what was stored before is kept, and "
                              "`latbench collect` measures only what is missing")
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return StoreError(f"cannot write the database {self.path} ({text})",
                              "check its permissions or set LATBENCH_HOME to a writable directory")
        return StoreError(f"database error in {self.path}: {text}")

    class _Tx:
        def __init__(self, store: "Store"):
            self.store = store

        def __enter__(self):
            try:
                self.store.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self.store._error(exc) from None
            return self.store.conn

        def __exit__(self, typ, exc, tb):
            conn = self.store.conn
            if typ is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as err:
                    self._rollback(conn)
                    raise self.store._error(err) from None
            else:
                self._rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise self.store._error(exc) from None
            return False

        @staticmethod
        def _rollback(conn: sqlite3.Connection) -> None:
            # SQLite may have rolled back already (a full disk, an I/O error): a second ROLLBACK
            # would raise "no transaction is active" and hide the error that says why
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error being raised says more than this one

    def _write(self) -> "Store._Tx":
        return Store._Tx(self)

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------

    def context(self, device: str, runtime: str, runtime_version: str, settings: dict) -> Context:
        """Register `settings` and return the context measurements are stored under."""
        from latbench.profiles import DeviceProfile

        digest = DeviceProfile.settings_hash(settings)
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)",
                         (digest, json.dumps(settings, sort_keys=True)))
        return Context(device, runtime, runtime_version, digest)

    def save_batch(self, ctx: Context, *, results: list[tuple[str, int, str, Measurement, dict]],
                   status: str, items: int, started_at: float, error: str | None = None,
                   state_before: dict | None = None, state_after: dict | None = None,
                   runner: dict | None = None, unit: str = "") -> int:
        """Write one batch and its measurements atomically; returns how many measurements were
        new (another collection may have stored some of them meanwhile).

        `results` holds (key, round, kind, measurement, extra) where extra may carry
        ``position`` and ``temperature_c``. Rows already stored are kept, not duplicated.
        """
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO batches (device, runtime, runtime_version, settings_hash, unit, status,"
                " error, items, started_at, finished_at, state_before, state_after, runner)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*ctx.as_tuple(), unit, status, error, items, started_at, now,
                 json.dumps(state_before), json.dumps(state_after), json.dumps(runner)))
            batch_id = cur.lastrowid
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO measurements (device, runtime, runtime_version, settings_hash,"
                " key, round, kind, median_ms, p10_ms, p90_ms, mean_ms, std_ms, count, samples,"
                " batch_id, position, unit, temperature_c, measured_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(*ctx.as_tuple(), key, rnd, kind, m.median_ms, m.p10_ms, m.p90_ms, m.mean_ms,
                  m.std_ms, m.count, _encode_samples(m.samples_ms), batch_id, extra.get("position"),
                  unit, extra.get("temperature_c"), now)
                 for key, rnd, kind, m, extra in results])
            inserted = conn.total_changes - before
            conn.executemany(  # measured: an earlier export or run failure of it is over
                "DELETE FROM failures WHERE device=? AND settings_hash=? AND key=?",
                [(ctx.device, ctx.settings_hash, key) for key, *_ in results])
        return inserted

    def save_imported(self, ctx: Context, rows: list[dict], *, source: str) -> int:
        """Store measurements made elsewhere (no raw samples); returns how many were new.

        Each row needs ``key``, ``kind`` and ``median_ms``; ``round`` (default 0), ``p10_ms``,
        ``p90_ms``, ``mean_ms``, ``std_ms`` (default: the median, 0) and ``count`` (default 1)
        are optional. The batch records `source`.
        """
        now = time.time()
        with self._write() as conn:
            batch_id = conn.execute(
                "INSERT INTO batches (device, runtime, runtime_version, settings_hash, unit, status,"
                " error, items, started_at, finished_at, state_before, state_after, runner)"
                " VALUES (?,?,?,?,'','imported',NULL,?,?,?,NULL,NULL,?)",
                (*ctx.as_tuple(), len(rows), now, now, json.dumps({"source": source}))).lastrowid
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO measurements (device, runtime, runtime_version, settings_hash,"
                " key, round, kind, median_ms, p10_ms, p90_ms, mean_ms, std_ms, count, samples,"
                " batch_id, position, unit, temperature_c, measured_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL,'',NULL,?)",
                [(*ctx.as_tuple(), r["key"], int(r.get("round", 0)), r["kind"], float(r["median_ms"]),
                  float(r.get("p10_ms", r["median_ms"])), float(r.get("p90_ms", r["median_ms"])),
                  float(r.get("mean_ms", r["median_ms"])), float(r.get("std_ms", 0.0)),
                  int(r.get("count", 1)), b"", batch_id, now) for r in rows])
            return conn.total_changes - before

    def record_failure(self, ctx: Context, key: str, stage: str, error: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?,?)",
                         (ctx.device, ctx.settings_hash, key, stage, error, time.time()))

    # ---- reading --------------------------------------------------------------------------

    def measured(self, ctx: Context) -> set[tuple[str, int]]:
        """(key, round) pairs already stored under `ctx`."""
        return {(k, r) for k, r in self._query(
            "SELECT key, round FROM measurements WHERE device=? AND runtime=? AND runtime_version=?"
            " AND settings_hash=?", ctx.as_tuple())}

    def failures(self, ctx: Context, since: float | None = None) -> dict[str, tuple[str, str]]:
        """key -> (stage, error) of ops that could not be exported or run under `ctx`; `since`
        (a time.time()) keeps those recorded then or later, so a run can tell its own."""
        sql = "SELECT key, stage, error FROM failures WHERE device=? AND settings_hash=?"
        params: tuple = (ctx.device, ctx.settings_hash)
        if since is not None:
            sql, params = sql + " AND at >= ?", params + (since,)
        return {k: (s, e) for k, s, e in self._query(sql, params)}

    def rows(self, ctx: Context, kind: str | None = None, unit: str | None = None) -> list[Row]:
        """Rows of `ctx`; `unit` keeps those one farm unit measured (None: every unit)."""
        sql = ("SELECT key, round, kind, median_ms, p10_ms, p90_ms, mean_ms, std_ms, count,"
               " temperature_c, measured_at FROM measurements WHERE device=? AND runtime=?"
               " AND runtime_version=? AND settings_hash=?")
        params = list(ctx.as_tuple())
        if kind:
            sql += " AND kind=?"
            params.append(kind)
        if unit is not None:
            sql += " AND unit=?"
            params.append(unit)
        return [Row(*r) for r in self._query(sql + " ORDER BY key, round", params)]

    def samples(self, ctx: Context, key: str, round: int) -> np.ndarray:
        found = self._query("SELECT samples FROM measurements WHERE device=? AND runtime=?"
                            " AND runtime_version=? AND settings_hash=? AND key=? AND round=?",
                            (*ctx.as_tuple(), key, round))
        if not found:
            raise KeyError((key, round))
        return decode_samples(found[0][0])

    def batches(self, device: str | None = None) -> list[dict]:
        cols = ("id", "device", "runtime", "runtime_version", "settings_hash", "unit", "status",
                "error", "items", "started_at", "finished_at")
        sql = f"SELECT {', '.join(cols)} FROM batches"
        rows = self._query(sql + (" WHERE device=?" if device else "") + " ORDER BY id",
                           (device,) if device else ())
        return [dict(zip(cols, r)) for r in rows]

    def contexts(self, device: str | None = None) -> list[ContextInfo]:
        """Measured contexts, most recently measured first."""
        sql = ("SELECT m.device, m.runtime, m.runtime_version, m.settings_hash, s.json, COUNT(*),"
               " COUNT(DISTINCT m.key), MAX(m.measured_at),"
               " COUNT(DISTINCT CASE WHEN m.kind = 'network' THEN m.key END) FROM measurements m"
               " JOIN settings s ON s.hash = m.settings_hash")
        params: tuple = ()
        if device:
            sql += " WHERE m.device=?"
            params = (device,)
        sql += " GROUP BY m.device, m.runtime, m.runtime_version, m.settings_hash ORDER BY MAX(m.measured_at) DESC"
        return [ContextInfo(Context(d, r, v, h), json.loads(s), n, k, t, nets)
                for d, r, v, h, s, n, k, t, nets in self._query(sql, params)]

    def latest_context(self, device: str) -> ContextInfo | None:
        found = self.contexts(device)
        return found[0] if found else None

    def units(self, ctx: Context) -> dict[str, int]:
        """Rows of `ctx` per unit that measured them ('' for a device not on a farm)."""
        return dict(self._query("SELECT unit, COUNT(*) FROM measurements WHERE device=? AND runtime=?"
                                " AND runtime_version=? AND settings_hash=? GROUP BY unit ORDER BY unit",
                                ctx.as_tuple()))

    def table(self, ctx: Context, unit: str | None = None) -> list[dict]:
        """One row per key: the median over rounds of each round's median, and the spread.
        `unit`: only what that farm unit measured (None pools every unit)."""
        by_key: dict[str, list[Row]] = {}
        for row in self.rows(ctx, unit=unit):
            by_key.setdefault(row.key, []).append(row)
        return [summarize_rounds(key, rows) for key, rows in sorted(by_key.items())]

    def iter_all(self) -> Iterator[tuple]:
        yield from self._query("SELECT device, key, round, median_ms FROM measurements ORDER BY id")


def summarize_rounds(key: str, rows: list[Row]) -> dict:
    medians = np.array([r.median_ms for r in rows])
    median = float(np.median(medians))
    return {
        "key": key, "kind": rows[0].kind, "median_ms": median,
        "p10_ms": float(np.median([r.p10_ms for r in rows])),
        "p90_ms": float(np.median([r.p90_ms for r in rows])),
        "round_spread": round_spread(medians),
        "rounds": len(rows), "count": int(sum(r.count for r in rows)),
    }


def _no_measurements(device: str, measured: list[str]) -> Exception:
    """The error for a device with nothing stored: collect it if a profile has that name,
    else (a typo, or an import under another name) a usage error naming what there is."""
    from latbench.errors import LatbenchError, UsageError, did_you_mean
    from latbench.profiles import list_profiles

    listed = f"; measured devices: {', '.join(measured)}" if measured else ""
    if device in list_profiles():
        return LatbenchError(f"no measurements for device {device!r}",
                             f"run `latbench collect --device {device}`{listed}")
    hint = did_you_mean(device, measured)
    return UsageError(f"no measurements and no device profile named {device!r}",
                      (hint + " " if hint else "") + f"measure it with `latbench collect` (see `latbench devices`) or bring its "
                        f"measurements with `latbench import`{listed}")


def device_tables(device: str, db_path: Path | None = None) -> list[ContextInfo]:
    """A device's tables (one per context), most recently measured first, or a LatbenchError
    saying how to get measurements."""
    from latbench import home
    from latbench.errors import LatbenchError

    db_path = db_path or home.db_path()
    if not db_path.exists():
        raise LatbenchError(f"no measurements yet ({db_path} does not exist)",
                            f"run `latbench collect --device {device}` or `latbench import`")
    with Store(db_path) as store:
        found = store.contexts(device)
        if not found:
            raise _no_measurements(device, sorted({c.context.device for c in store.contexts()}))
    return found


def profile_settings(device: str) -> dict | None:
    """The settings `collect --device DEVICE` would store under now, or None for a name with
    no (valid) profile: an imported device, or a profile that does not load."""
    from latbench.profiles import list_profiles, load_profile

    if device not in list_profiles():
        return None
    try:
        from latbench.export import exporter_tag

        profile = load_profile(device)
        return profile.settings(exporter_tag(profile.format))
    except Exception:  # a broken profile or missing converter: say nothing, use the newest
        return None


def what_differs(now: dict, then: dict) -> str:
    """The first settings that differ, "threads: 2 in the table, 1 now; ..." (torch's version
    is in `exporter`: an upgrade changes it too)."""
    from latbench.profiles import settings_differences

    found = settings_differences(now, then, labels=("now", "then"))
    return "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")


def device_table(device: str, table: str | None = None, db_path: Path | None = None,
                 unit: str | None = None, settings_hash: str | None = None
                 ) -> tuple[ContextInfo, list[dict], int]:
    """The per-key table of one of a device's contexts: the one whose `table_id` starts with
    `table`; else the newest measured with `settings_hash` (the profile's settings now, so
    that going back to an earlier setting finds its numbers again); else the newest. Of one
    farm `unit`, or of every unit pooled. Returns it with the number of tables the device has."""
    from latbench import home
    from latbench.errors import LatbenchError

    found = device_tables(device, db_path)
    if table is not None:
        info = _pick_table(device, table, found)
    else:
        info = next((c for c in found if c.context.settings_hash == settings_hash), found[0])
    with Store(db_path or home.db_path()) as store:
        if unit is not None:
            units = [u for u in store.units(info.context) if u]
            if unit not in units:
                raise LatbenchError(f"unit {unit!r} measured nothing for device {device!r} "
                                    f"({info.context.runtime_label})",
                                    f"use one of: {', '.join(units)}" if units else
                                    "these measurements were not made on a farm; drop --unit")
        return info, store.table(info.context, unit=unit), len(found)


def table_choice_note(device: str, info: ContextInfo, n_tables: int, current: dict | None,
                      picked: bool) -> str | None:
    """Says which of several tables a command read and how to read another, and when none
    matches the profile's `current` settings (None for one table that does)."""
    from latbench.profiles import DeviceProfile

    settings_hash = DeviceProfile.settings_hash(current) if current is not None else None
    if not picked and settings_hash is not None and info.context.settings_hash != settings_hash:
        differs = what_differs(current, info.settings) if current else ""
        return (f"no table of {device!r} was measured with its profile's current settings"
                + (f" ({differs})" if differs else "") + f"; table {info.context.table_id} is the newest "
                f"of {n_tables}: its numbers are for the settings it was measured with "
                f"(`latbench lut --device {device} --tables`)")
    if n_tables < 2:
        return None
    why = ("the one --table named" if picked else
           "the newest measured with the profile's current settings"
           if info.context.settings_hash == settings_hash else "the newest")
    return (f"table {info.context.table_id} is {why} of the {n_tables} tables of {device!r}; "
            f"read another with --table ID (`latbench lut --device {device} --tables` lists them)")


def _pick_table(device: str, table: str, found: list[ContextInfo]) -> ContextInfo:
    from latbench.errors import UsageError

    matches = [c for c in found if c.context.table_id.startswith(table.lower())] if table else []
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(f"{c.context.table_id} ({c.context.runtime_label}, {c.keys} keys)" for c in found)
    what = "matches several tables" if matches else "names no table"
    raise UsageError(f"--table {table!r} {what} of device {device!r}; its tables: {listed}",
                     f"give one of those ids (`latbench lut --device {device} --tables` lists them)")
