"""Do two collections of the same ops agree? Collect twice into two stores and compare.

    python benchmarks/stability.py [--device local] [--space fbnet-cifar] [--limit K] [--rounds R]

Prints, for ops whose median is >= 0.1 ms, the median relative difference between the
two collections (target <= 3%), and the samples' median relative IQR (the noise figure
`collect` and `lut` report) beside their coefficient of variation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Timer, collect_into, temp_home  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local", help="device profile to measure (default local)")
    ap.add_argument("--space", default="fbnet-cifar", help="search space whose ops are timed (default fbnet-cifar)")
    ap.add_argument("--limit", type=int, default=None, help="only the first K ops of the space")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per op (default: the profile's)")
    ap.add_argument("--min-ms", type=float, default=0.1,
                    help="compare only ops at least this slow: faster ones are timer noise (default 0.1)")
    args = ap.parse_args()

    from latbench.measurement import Measurement
    from latbench.spaces import get_space
    from latbench.store import Store

    items = get_space(args.space).ops()[: args.limit]
    with temp_home() as home:
        cache = home / "models"
        runs = []
        for name in ("a", "b"):
            with Timer() as t:
                table, report, plan = collect_into(home / f"{name}.db", args.device, items,
                                                   rounds=args.rounds, cache_dir=cache)
            runs.append(table)
            print(f"collection {name}: {report.measured} measurements in {t.s:.1f} s "
                  f"({plan.runtime_label}, settings {plan.context.settings_hash})")
        cvs, iqrs = [], []
        for name in ("a", "b"):
            with Store(home / f"{name}.db") as store:
                ctx = store.latest_context(args.device).context
                for r in store.rows(ctx):
                    cvs.append(r.std_ms / r.mean_ms)
                    samples = store.samples(ctx, r.key, r.round)
                    if samples.size:
                        iqrs.append(Measurement(r.key, samples).relative_iqr)
    a, b = runs
    keys = sorted(set(a) & set(b))
    rel = {k: abs(a[k]["median_ms"] - b[k]["median_ms"]) / ((a[k]["median_ms"] + b[k]["median_ms"]) / 2)
           for k in keys}
    big = [k for k in keys if min(a[k]["median_ms"], b[k]["median_ms"]) >= args.min_ms]
    small = [k for k in keys if k not in big]
    print(f"ops compared: {len(keys)} ({len(big)} >= {args.min_ms} ms, {len(small)} smaller)")
    if big:
        vals = np.array([rel[k] for k in big])
        print(f"ops >= {args.min_ms} ms: median relative difference {np.median(vals):.2%} (target <= 3%), "
              f"p90 {np.percentile(vals, 90):.2%}, max {vals.max():.2%}")
    if small:
        vals = np.array([rel[k] for k in small])
        print(f"ops <  {args.min_ms} ms: median relative difference {np.median(vals):.2%}, "
              f"p90 {np.percentile(vals, 90):.2%}")
    drift = np.median([np.log(b[k]["median_ms"] / a[k]["median_ms"]) for k in keys])
    print(f"machine drift between the two collections (median of b/a over all ops): {np.exp(drift) - 1:+.1%}")
    # A few slow outliers (a scheduler tick, a page fault) inflate std/mean but not the median
    # that is stored, so the IQR is the noise figure collect and lut report.
    if iqrs:
        print(f"median relative IQR of the samples (IQR/median, as collect and lut report it): "
              f"{np.median(iqrs):.2%}")
    print(f"median coefficient of variation of the samples (std/mean; outliers inflate it, the "
          f"stored median ignores them): {np.median(cvs):.2%}")
    worst = sorted(big, key=lambda k: -rel[k])[:5]
    for k in worst:
        print(f"  {rel[k]:6.2%}  {a[k]['median_ms']:.4f} vs {b[k]['median_ms']:.4f} ms  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
