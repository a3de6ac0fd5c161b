"""Why one runner process measures a whole batch: the same ops, batched vs one process per model.

    python benchmarks/batching.py [--device local] [--ops 30]

Both sides use the device's own protocol and the same exported files (exported before the
clock starts); only batch_size differs (the profile's vs 1). Prints both wall-clock times,
their ratio (target: batched >= 5x faster) and how well the two sides' medians agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import temp_home  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local", help="device profile to measure (default local)")
    ap.add_argument("--space", default="fbnet-cifar", help="search space whose ops are timed (default fbnet-cifar)")
    ap.add_argument("--ops", type=int, default=30,
                    help="ops to time (default 30, the size the >= 5x target is set for)")
    args = ap.parse_args()

    from latbench.collect import Collector
    from latbench.export import export
    from latbench.profiles import load_profile
    from latbench.spaces import get_space
    from latbench.store import Store

    ops = get_space(args.space).ops()
    step = max(1, len(ops) // args.ops)
    ops = ops[::step][: args.ops]  # spread over the space, not only its first layers
    base = load_profile(args.device)
    with temp_home() as home:
        for op in ops:
            export(op, base.format, cache_dir=home / "models")
        tables, times = {}, {}
        for label, batch_size in (("batched", max(base.protocol.batch_size, len(ops))), ("per-model", 1)):
            profile = dataclasses.replace(
                base, protocol=dataclasses.replace(base.protocol, batch_size=batch_size, rounds=1))
            with Store(home / f"{label}.db") as store, Collector(profile, store, cache_dir=home / "models") as col:
                plan = col.plan(ops)
                t0 = time.perf_counter()
                report = col.run(plan)
                times[label] = time.perf_counter() - t0
                tables[label] = {r["key"]: r["median_ms"] for r in store.table(plan.context)}
            print(f"{label:9s}: {len(plan.batches):3d} runner process(es), {report.measured} ops, "
                  f"{times[label]:6.2f} s ({plan.runtime_label})")
    ratio = times["per-model"] / times["batched"]
    print(f"batched is {ratio:.1f}x faster than one process per model (target >= 5x)")
    a, b = tables["batched"], tables["per-model"]
    rel = [abs(a[k] - b[k]) / b[k] for k in a if k in b]
    print(f"median relative difference of the medians between the two: {np.median(rel):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
