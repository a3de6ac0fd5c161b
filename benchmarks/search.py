"""Does `nas search` hit latency targets, and does it beat random search at the same cost?

    python benchmarks/search.py [--device local] [--targets-ms A B C] [--seeds 0 1] [--epochs 10] ...

Needs a fitted latency predictor of the device (the benchmark measures on it too):

    latbench collect --device local --networks 20 && latbench fit-predictor --device local

Prints:
  1. Target hit rate: every target x seed is one `hinge` search; a run hits when its final
     network, measured on the device through latbench, is within +-10% of its target (goal:
     all). Mean measured latency per target (tighter targets should give lower latency).
  2. DNAS against random search that draws archs uniformly, keeps those the same predictor
     puts within +-10% of the target, and trains each briefly (proxy epochs, scored on the
     theta split) for as long as the DNAS search took; the winners of both are retrained
     alike and compared on held-out accuracy and measured latency.
  3. Skip share of the final (and argmax) archs, a collapse check; search time per epoch.

Targets default to 0.6, 0.75 and 0.9 x the median predicted latency of uniformly random
archs (what a uniform theta starts at: a hinge target above it never pulls). Defaults train
a slim supernet (--width-mult 0.25, --input-size 8: the digits are 8x8 to begin with) so the
whole benchmark fits a small CPU; costs and measurements are always the full-width network.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local")
    ap.add_argument("--space", default="fbnet-cifar")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--targets-ms", type=float, nargs="+", default=None)
    ap.add_argument("--target-fractions", type=float, nargs="+", default=[0.6, 0.75, 0.9],
                    help="default targets: these fractions of the median random arch's predicted latency")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--width-mult", type=float, default=0.25)
    ap.add_argument("--input-size", type=int, default=8)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--theta-lr", type=float, default=0.1)
    ap.add_argument("--temperature", type=float, default=5.0)
    ap.add_argument("--temperature-decay", type=float, default=0.956)
    ap.add_argument("--lam", type=float, default=1.0, help="hinge lambda")
    ap.add_argument("--samples", type=int, default=20, help="draws from theta per search")
    ap.add_argument("--pick", choices=["argmax", "target"], default="target")
    ap.add_argument("--tolerance", type=float, default=0.1, help="hit band: measured within +-this of the target")
    ap.add_argument("--pick-tolerance", type=float, default=0.05,
                    help="predicted band of the final pick (nas search --tolerance), and the random search's "
                         "filter (default 0.05: the rest of the hit band is left for the predictor's error)")
    ap.add_argument("--retrain-epochs", type=int, default=5, help="epochs of the final comparison training")
    ap.add_argument("--proxy-epochs", type=int, default=1, help="epochs per arch in the random search")
    ap.add_argument("--rounds", type=int, default=None, help="measurement rounds (default: the profile's)")
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    return ap.parse_args(argv)


def default_targets(space, model, fractions, seed: int = 123, count: int = 4000) -> list[float]:
    rng = np.random.default_rng(seed)
    archs = rng.integers(0, space.num_candidates, size=(count, space.num_layers))
    median = float(np.median(model.predict_networks(space, archs)))
    return [f * median for f in fractions]


def filtered_archs(space, model, target: float, tolerance: float, rng: np.random.Generator):
    """Uniformly random archs whose predicted latency is within +-tolerance of target."""
    tried = 0
    while True:
        archs = rng.integers(0, space.num_candidates, size=(2048, space.num_layers))
        pred = model.predict_networks(space, archs)
        tried += len(archs)
        for arch, p in zip(archs, pred):
            if abs(p / target - 1.0) <= tolerance:
                yield tuple(int(c) for c in arch), float(p)
        if tried > 200_000:
            raise SystemExit(f"random search: no arch within {tolerance:.0%} of {target:.3g} ms "
                             f"in {tried} draws; pick a reachable target")


def random_search(space, model, target, data, config, budget_s, args, seed):
    from nas.search import retrain

    rng = np.random.default_rng(1000 + seed)
    start = time.perf_counter()
    tried = []
    for arch, pred in filtered_archs(space, model, target, args.pick_tolerance, rng):
        score = retrain(space, arch, data, config, args.proxy_epochs, validation=True)["accuracy"]
        tried.append((score, arch, pred))
        if time.perf_counter() - start >= budget_s:
            break
    score, arch, pred = max(tried, key=lambda t: t[0])
    return {"arch": list(arch), "predicted_ms": pred, "proxy_accuracy": score, "evaluated": len(tried),
            "search_s": time.perf_counter() - start}


def main(argv=None) -> int:
    args = parse_args(argv)
    import predictors
    from latbench.errors import LatbenchError
    from latbench.spaces import get_space
    from latbench.spaces.fbnet import SKIP_INDEX
    from nas.data import load_data
    from nas.flow import SearchJob, run_job
    from nas.search import SearchConfig, retrain, skip_share
    from nas.verify import measure_networks

    spec = f"latbench:{args.device}"
    space = get_space(args.space)
    try:
        model = predictors.load(spec)
    except LatbenchError as exc:
        print(f"no predictor for {args.device}: {exc}\n  run: latbench collect --device {args.device} "
              f"--networks 20 && latbench fit-predictor --device {args.device}", file=sys.stderr)
        return 1
    targets = sorted(args.targets_ms or default_targets(space, model, args.target_fractions))
    print(f"device {args.device}, space {space.name}, data {args.data}; targets (ms): "
          + ", ".join(f"{t:.3f}" for t in targets) + f"; seeds {args.seeds}")
    print(f"supernet width x{args.width_mult}, input {args.input_size}px, {args.epochs} epochs "
          f"({args.warmup_epochs} warm-up), theta lr {args.theta_lr}, hinge lambda {args.lam}, "
          f"pick {args.pick} of argmax + {args.samples} draws (within +-{args.pick_tolerance:.0%} predicted)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="nas-bench-") as tmp:
        for seed in args.seeds:
            config = SearchConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                                  batch_size=args.batch_size, theta_lr=args.theta_lr,
                                  initial_temperature=args.temperature,
                                  temperature_decay=args.temperature_decay, width_mult=args.width_mult,
                                  seed=seed, torch_device=args.torch_device)
            data = load_data(args.data, args.input_size, seed=seed, limit=args.limit_train)
            for target in targets:
                job = SearchJob(costs=[spec], space=space.name, form="hinge", lam=args.lam,
                                targets={"ms": [target]}, data=args.data, input_size=args.input_size,
                                limit_train=args.limit_train, config=config, samples=args.samples,
                                pick=args.pick, tolerance=args.pick_tolerance,
                                retrain_epochs=args.retrain_epochs, out_dir=Path(tmp) / f"{seed}-{target}",
                                export=False)
                result = run_job(job)
                rs = random_search(space, model, target, data, config, result["search_s"], args, seed)
                rs["retrained"] = retrain(space, rs["arch"], data, config, args.retrain_epochs)
                run = {"target_ms": target, "seed": seed, "final": result["final"], "argmax": result["argmax"],
                       "search_s": result["search_s"], "epoch_s": result["epoch_s_mean"],
                       "curves": result["curves"], "random": rs}
                runs.append(run)
                print(f"  target {target:.3f} ms seed {seed}: DNAS {result['final']['source']} predicted "
                      f"{result['final']['predicted'][spec]:.3f} ms in {result['search_s']:.0f} s; random "
                      f"search evaluated {rs['evaluated']} archs", flush=True)
    nets = {}
    for run in runs:
        for arch in (run["final"]["arch"], run["argmax"]["arch"], run["random"]["arch"]):
            net = space.network(arch)
            nets[net.key] = net
    print(f"measuring {len(nets)} networks on {args.device} ...", flush=True)
    measured = measure_networks(list(nets.values()), args.device, rounds=args.rounds)

    def ms(arch) -> float:
        return measured[space.network(arch).key]["median_ms"]

    # 1. target hit rate
    print("\n1. target hit rate (hinge; final network measured on the device)")
    print(f"{'target_ms':>10} {'seed':>4} {'final':>10} {'pred_ms':>8} {'meas_ms':>8} {'miss':>7} {'hit':>4}"
          f"   {'argmax_ms':>9} {'argmax miss':>11}")
    hits = []
    for run in runs:
        t = run["target_ms"]
        m, ma = ms(run["final"]["arch"]), ms(run["argmax"]["arch"])
        run["final"]["measured_ms"], run["argmax"]["measured_ms"] = m, ma
        hit = abs(m / t - 1) <= args.tolerance
        hits.append(hit)
        print(f"{t:10.3f} {run['seed']:4d} {run['final']['source']:>10} {run['final']['predicted'][spec]:8.3f} "
              f"{m:8.3f} {m / t - 1:+7.1%} {'yes' if hit else 'no':>4}   {ma:9.3f} {ma / t - 1:+11.1%}")
    print(f"hit rate (within +-{args.tolerance:.0%}): {sum(hits)}/{len(hits)} = {np.mean(hits):.0%} (goal: all)")
    per_target = [(t, float(np.mean([r["final"]["measured_ms"] for r in runs if r["target_ms"] == t])))
                  for t in targets]
    monotone = all(a[1] < b[1] for a, b in zip(per_target, per_target[1:]))
    print("mean measured per target: " + ", ".join(f"{t:.3f} -> {m:.3f} ms" for t, m in per_target)
          + f"; tighter target, lower latency: {'yes' if monotone else 'no'}")
    argmax_hits = [abs(r["argmax"]["measured_ms"] / r["target_ms"] - 1) <= args.tolerance for r in runs]
    print(f"argmax archs alone: {sum(argmax_hits)}/{len(argmax_hits)} within +-{args.tolerance:.0%}")
    errors = np.array([model.predict_network(net) / measured[key]["median_ms"] - 1 for key, net in nets.items()])
    print(f"predictor error on these {len(errors)} networks (predicted / measured - 1): mean {errors.mean():+.1%}, "
          f"median |error| {np.median(np.abs(errors)):.1%}; a miss beyond it is the search's, not the predictor's")

    # 2. DNAS vs random search
    print(f"\n2. DNAS vs random search (same predictor filter +-{args.pick_tolerance:.0%}, same compute; "
          f"winners retrained {args.retrain_epochs} epochs, held-out accuracy)")
    print(f"{'target_ms':>10} {'seed':>4} {'dnas_acc':>8} {'dnas_ms':>8} {'rand_acc':>8} {'rand_ms':>8} {'rand_n':>6}")
    for run in runs:
        rs = run["random"]
        rs["measured_ms"] = ms(rs["arch"])
        print(f"{run['target_ms']:10.3f} {run['seed']:4d} {run['final']['retrained']['accuracy']:8.1%} "
              f"{run['final']['measured_ms']:8.3f} {rs['retrained']['accuracy']:8.1%} {rs['measured_ms']:8.3f} "
              f"{rs['evaluated']:6d}")
    d_acc = np.mean([r["final"]["retrained"]["accuracy"] for r in runs])
    r_acc = np.mean([r["random"]["retrained"]["accuracy"] for r in runs])
    d_ms = np.mean([r["final"]["measured_ms"] for r in runs])
    r_ms = np.mean([r["random"]["measured_ms"] for r in runs])
    print(f"mean: DNAS {d_acc:.1%} at {d_ms:.3f} ms; random {r_acc:.1%} at {r_ms:.3f} ms")

    # 3. collapse check and time
    final_skip = np.mean([skip_share(r["final"]["arch"]) for r in runs])
    argmax_skip = np.mean([skip_share(r["argmax"]["arch"]) for r in runs])
    rand_skip = np.mean([skip_share(r["random"]["arch"]) for r in runs])
    print(f"\n3. skip share (candidate {SKIP_INDEX}) of final archs {final_skip:.0%}, of argmax archs "
          f"{argmax_skip:.0%}, of random-search winners {rand_skip:.0%} (uniform: {1 / space.num_candidates:.0%})")
    epoch_s = [r["epoch_s"] for r in runs]
    print(f"search time per epoch: mean {np.mean(epoch_s):.1f} s, min {min(epoch_s):.1f}, max {max(epoch_s):.1f} "
          f"({args.torch_device}, width x{args.width_mult}, {args.input_size}px, batch {args.batch_size})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                                         "targets_ms": targets, "runs": runs,
                                         "measured": measured}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
