"""Why one runner process measures a whole batch: the same ops, batched vs one process per model.

    python benchmarks/batching.py [--device local] [--space fbnet-cifar] [--ops 30] [--repeats 3]

Both sides time the same `--ops` ops, spread over the space, from the same exported files
(exported before any clock starts), with the device profile's timing protocol (warm-up, timed
runs, stop rule) but rounds=1; only batch_size differs: all ops in one runner process
("batched") vs one process per op ("per-model"). The two sides run interleaved `--repeats`
times, alternating which goes first, each repeat into fresh stores. Prints each repeat's
wall-clock times and ratio per-model / batched, the median ratio with its min..max and the
verdict against the target (batched >= 5x faster, set for 30 ops), and how well the two sides'
medians agree (each op's median over the repeats).
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
    ap.add_argument("--repeats", type=int, default=3,
                    help="times each side is timed, interleaved, alternating which goes first (default 3)")
    args = ap.parse_args()
    if args.ops < 1 or args.repeats < 1:
        ap.error("--ops and --repeats must be >= 1")

    from latbench.collect import Collector
    from latbench.export import export
    from latbench.profiles import load_profile
    from latbench.spaces import get_space
    from latbench.store import Store

    ops = get_space(args.space).ops()
    step = max(1, len(ops) // args.ops)
    ops = ops[::step][: args.ops]  # spread over the space, not only its first layers
    base = load_profile(args.device)
    sides = (("batched", len(ops)), ("per-model", 1))
    print(f"{len(ops)} ops of {args.space} on {args.device}, rounds=1, batch size {len(ops)} vs 1, "
          f"{args.repeats} repeat(s)")
    with temp_home() as home:
        for op in ops:
            export(op, base.format, cache_dir=home / "models")
        medians: dict[str, dict[str, list[float]]] = {label: {} for label, _ in sides}
        ratios = []
        for rep in range(args.repeats):
            times = {}
            for label, batch_size in (sides if rep % 2 == 0 else sides[::-1]):
                profile = dataclasses.replace(
                    base, protocol=dataclasses.replace(base.protocol, batch_size=batch_size, rounds=1))
                with Store(home / f"{label}-{rep}.db") as store, \
                        Collector(profile, store, cache_dir=home / "models") as col:
                    plan = col.plan(ops)
                    t0 = time.perf_counter()
                    report = col.run(plan)
                    times[label] = time.perf_counter() - t0
                    for r in store.table(plan.context):
                        medians[label].setdefault(r["key"], []).append(r["median_ms"])
                print(f"repeat {rep + 1} {label:9s}: {len(plan.batches):3d} runner process(es), "
                      f"{report.measured} ops, {times[label]:6.2f} s ({plan.runtime_label})")
            ratios.append(times["per-model"] / times["batched"])
            print(f"repeat {rep + 1} ({'batched' if rep % 2 == 0 else 'per-model'} first): "
                  f"ratio {ratios[-1]:.1f}x")
    ratio = float(np.median(ratios))
    note = "" if len(ops) == 30 else f"; the target is set for 30 ops, this ran {len(ops)}"
    print(f"batched is {ratio:.1f}x faster than one process per model (median of {len(ratios)} repeat(s), "
          f"min..max {min(ratios):.1f}..{max(ratios):.1f}x); target >= 5x: "
          f"{'MET' if ratio >= 5 else 'NOT MET'}{note}")
    a = {k: np.median(v) for k, v in medians["batched"].items()}
    b = {k: np.median(v) for k, v in medians["per-model"].items()}
    rel = [abs(a[k] - b[k]) / b[k] for k in a if k in b]
    print(f"median relative difference of the medians between the two: {np.median(rel):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
