"""ONNX Runtime vs LiteRT on this host: the same ops of a search space, side by side.

    python benchmarks/runtimes.py [--space fbnet-cifar] [--limit K] [--rounds R]
                                  [--onnx-device local] [--tflite-device local-tflite]

Exports every op to .onnx and .tflite (timing each conversion, the check against torch
included), then collects both into throw-away stores, each with its own device profile's
protocol, interleaved: round by round (`--rounds`, default each profile's), alternating which
runtime goes first, so that drift of the machine falls on both sides alike. Prints both
protocols and says where they differ (the bundled local and local-tflite profiles do:
warmup_s and min_time_s), then per op: median latency under each runtime, the ratio LiteRT /
ONNX Runtime, and the conversion times; then the median ratio (overall and per op kind) and
conversion totals. Needs the tflite extra (pip install -e .[tflite]); without the converter
it says so and exits 0 having measured nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Timer, collect_into, temp_home  # noqa: E402


def export_timed(items, fmt: str, cache: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds to export (convert + check) each item into an empty cache, and export failures."""
    from latbench.errors import ExportError
    from latbench.export import export

    seconds, failed = {}, {}
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        try:
            export(item, fmt, cache_dir=cache)
            seconds[item.key] = time.perf_counter() - t0
        except ExportError as exc:
            failed[item.key] = exc.message
        print(f"\r  {fmt}: exported {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return seconds, failed


def short(key: str) -> str:
    """``fbnet_block:1x16x32x32:c24:k3:s1:e1:g1:relu:float32`` -> ``fbnet_block 16x32x32 c24 k3 s1 e1 g1``."""
    kind, shape, c, k, s, e, g, *_ = key.split(":")
    return f"{kind} {shape[2:]} {c} {k} {s} {e} {g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fbnet-cifar", help="search space whose ops are timed (default fbnet-cifar)")
    ap.add_argument("--limit", type=int, default=None, help="only the first K ops of the space")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per op, for both runtimes (default: each profile's)")
    ap.add_argument("--onnx-device", default="local", help="profile timing the .onnx files (default local)")
    ap.add_argument("--tflite-device", default="local-tflite",
                    help="profile timing the .tflite files (default local-tflite)")
    args = ap.parse_args()

    from latbench.errors import ExportError
    from latbench.profiles import load_profile
    from latbench.protocol import describe_timing
    from latbench.spaces import get_space
    from latbench.tflite import _converter, converter_version

    items = get_space(args.space).ops()[: args.limit]
    sides = (("onnx", args.onnx_device), ("tflite", args.tflite_device))
    profiles = {fmt: load_profile(device) for fmt, device in sides}
    rounds = {fmt: args.rounds or profiles[fmt].protocol.rounds for fmt, _ in sides}
    for fmt, device in sides:
        print(f"{device} protocol: {describe_timing(profiles[fmt].protocol.timing(), profiles[fmt].runner)}; "
              f"{rounds[fmt]} round(s)")
    a, b = (profiles[fmt].protocol.timing() for fmt, _ in sides)
    differ = [f"{k} {a[k]:g} vs {b[k]:g}" for k in a if a[k] != b[k]]
    if differ:
        print(f"note: the two protocols differ ({', '.join(differ)}): the ratios compare the runtimes "
              f"under different timing rules")
    with temp_home() as home:
        cache = home / "models"
        try:
            with Timer() as t_import:
                _converter()  # paid once per process by any command that converts
            version = converter_version()
        except ExportError as exc:
            print(f"skipped: {exc}")
            return 0
        print(f"{len(items)} ops of {args.space}; converter {version}, "
              f"import {t_import.s:.1f} s (not in the per-op times)")
        onnx_s, onnx_failed = export_timed(items, "onnx", cache)
        tflite_s, tflite_failed = export_timed(items, "tflite", cache)
        # Round by round, alternating which runtime goes first: each call measures the one round
        # still missing in its store (a collection resumes what is stored).
        print(f"collecting {max(rounds.values())} round(s), interleaved: one round of each runtime in turn, "
              f"alternating which goes first")
        results, seconds, measured, iqrs, labels = {}, dict.fromkeys(rounds, 0.0), dict.fromkeys(rounds, 0), \
            {fmt: [] for fmt in rounds}, {}
        for rnd in range(max(rounds.values())):
            for fmt, device in (sides if rnd % 2 == 0 else sides[::-1]):
                if rnd >= rounds[fmt]:
                    continue
                with Timer() as t:
                    table, report, plan = collect_into(home / f"{fmt}.db", device, items, rounds=rnd + 1,
                                                       cache_dir=cache)
                results[fmt], labels[fmt] = table, plan.runtime_label
                seconds[fmt] += t.s
                measured[fmt] += report.measured
                iqrs[fmt] += report.relative_iqrs
        threads_of = {fmt: profiles[fmt].threads for fmt in rounds}
        for fmt, device in sides:
            iqr = float(np.median(iqrs[fmt])) if iqrs[fmt] else 0.0
            print(f"{device}: {measured[fmt]} measurements in {seconds[fmt]:.1f} s ({labels[fmt]}, "
                  f"{threads_of[fmt]} thread(s), median IQR/median {iqr:.1%})")

    onnx, lite = results["onnx"], results["tflite"]
    if threads_of["onnx"] != threads_of["tflite"]:
        print(f"note: {args.onnx_device} times with {threads_of['onnx']} thread(s) and {args.tflite_device} "
              f"with {threads_of['tflite']}: the ratios compare the runtimes and the thread counts")
    keys = [it.key for it in items if it.key in onnx and it.key in lite]
    ratio = {k: lite[k]["median_ms"] / onnx[k]["median_ms"] for k in keys}
    width = max((len(short(k)) for k in keys), default=10)
    print(f"\n{'op':{width}}  {'onnx ms':>9}  {'litert ms':>9}  {'litert/onnx':>11}  "
          f"{'onnx exp s':>10}  {'tflite exp s':>12}")
    for k in keys:
        print(f"{short(k):{width}}  {onnx[k]['median_ms']:9.4f}  {lite[k]['median_ms']:9.4f}  "
              f"{ratio[k]:11.2f}  {onnx_s.get(k, float('nan')):10.2f}  {tflite_s.get(k, float('nan')):12.2f}")
    if keys:
        values = np.array([ratio[k] for k in keys])
        print(f"\nmedian ratio litert/onnx over {len(keys)} ops: {np.median(values):.2f} "
              f"(p10 {np.percentile(values, 10):.2f}, p90 {np.percentile(values, 90):.2f}; "
              f"LiteRT faster on {int((values < 1).sum())})")
        for kind in sorted({k.split(':')[0] for k in keys}):
            sub = [ratio[k] for k in keys if k.startswith(kind + ":")]
            print(f"  {kind:13s} median ratio {np.median(sub):.2f} over {len(sub)} ops")
        for name, secs in (("onnx", onnx_s), ("tflite", tflite_s)):
            v = np.array(list(secs.values()))
            print(f"conversion {name:6s}: median {np.median(v):.2f} s/op, max {v.max():.2f} s, "
                  f"total {v.sum():.1f} s for {len(v)} ops")
    for name, failed in (("onnx", onnx_failed), ("tflite", tflite_failed)):
        for key, error in failed.items():
            print(f"export failed ({name}) {key}: {error}")
    missing = [it.key for it in items if it.key not in keys]
    if missing:
        print(f"{len(missing)} ops not measured under both runtimes, e.g. {missing[0]}")
    return 0 if keys else 1


if __name__ == "__main__":
    sys.exit(main())
