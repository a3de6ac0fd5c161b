"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temp_home():
    """A throw-away LATBENCH_HOME, set for the duration of the block (and the old one restored)."""
    old = os.environ.get("LATBENCH_HOME")
    with tempfile.TemporaryDirectory(prefix="latbench-bench-") as tmp:
        os.environ["LATBENCH_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("LATBENCH_HOME", None)
            else:
                os.environ["LATBENCH_HOME"] = old


def collect_into(store_path: Path, device: str, items, *, rounds: int | None = None,
                 cache_dir: Path | None = None):
    """Collect `items` on `device` into the store at `store_path`; returns (store table, report)."""
    from latbench.collect import Collector
    from latbench.profiles import load_profile
    from latbench.store import Store

    profile = load_profile(device)
    with Store(store_path) as store, Collector(profile, store, rounds=rounds, cache_dir=cache_dir) as col:
        plan = col.plan(items)
        report = col.run(plan)
        table = {row["key"]: row for row in store.table(plan.context)}
    return table, report, plan


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.start
