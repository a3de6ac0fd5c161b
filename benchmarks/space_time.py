"""How long does measuring a whole search space take on this host, from an empty home?

    python benchmarks/space_time.py [--device local] [--space fbnet-cifar]

Prints the wall-clock time of `latbench collect` (export + measurement, the profile's
rounds) for every op of the space; target for fbnet-cifar on the 2-core CI host: < 5 min.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import temp_home  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local")
    ap.add_argument("--space", default="fbnet-cifar")
    args = ap.parse_args()
    with temp_home():
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "latbench", "collect", "--device", args.device,
                               "--space", args.space, "--json"], capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr.strip().splitlines()[-1])
        return 1
    import json

    summary = json.loads(proc.stdout)
    print(f"{args.space} on {args.device}: {summary['measured']} measurements "
          f"({summary['runtime']}), {summary['failed'] and len(summary['failed']) or 0} failed")
    print(f"whole space from an empty home: {wall_s:.1f} s = {wall_s / 60:.2f} min (target < 5 min)")
    print(f"median IQR/median of the samples: {summary['median_relative_iqr']:.1%}, "
          f"noisy measurements (IQR > 10% of median): {summary['noisy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
