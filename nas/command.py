"""`nas search`: argparse namespace -> SearchJob, a progress bar per epoch, and the final tables."""

from __future__ import annotations

import time
from pathlib import Path

from latbench.cli import output
from latbench.errors import UsageError


def job_from_args(args):
    from nas.flow import VERIFY_LOCK_WAIT_S, SearchJob
    from nas.search import SearchConfig

    try:
        config = SearchConfig(
            epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr,
            momentum=args.momentum, weight_decay=args.weight_decay, theta_lr=args.theta_lr,
            theta_weight_decay=args.theta_weight_decay, initial_temperature=args.temperature,
            temperature_decay=args.temperature_decay, width_mult=args.width_mult, seed=args.seed,
            torch_device=args.torch_device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.epochs <= args.warmup_epochs:
        raise UsageError(f"--epochs {args.epochs} leaves no epoch to train theta after "
                         f"--warmup-epochs {args.warmup_epochs}: the search would return its starting point",
                         f"give --epochs {args.warmup_epochs + 1} or more, or lower --warmup-epochs")
    out = args.out or Path("nas-results") / f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    return SearchJob(
        costs=args.cost, space=args.space, form=args.form, alpha=args.alpha, beta=args.beta, lam=args.lam,
        targets={"ms": args.target_ms, "flops": args.target_flops, "params": args.target_params},
        data=args.data, input_size=args.input_size, limit_train=args.limit_train,
        weight_fraction=args.weight_split, config=config, samples=args.samples,
        pick=args.pick, tolerance=args.tolerance, retrain_epochs=args.retrain_epochs, out_dir=out,
        export=not args.no_export,
        verify=args.verify, verify_device=args.verify_device,
        verify_wait_s=VERIFY_LOCK_WAIT_S if args.verify_wait_s is None else args.verify_wait_s)


def run(args) -> int:
    import torch

    from nas.distributed import is_worker_rank
    from nas.flow import Hooks, run_job

    if args.threads:
        torch.set_num_threads(args.threads)
    job = job_from_args(args)
    if is_worker_rank():
        run_job(job)  # a worker rank: trains its share; rank 0 shows progress and writes the result
        return 0
    with output.progress() as bar:
        tasks: dict[str, int] = {}
        search_task = None

        def stage(name: str) -> None:
            nonlocal search_task
            if name == "search":
                search_task = bar.add_task(f"search ({job.config.epochs} epochs)", total=job.config.epochs)
            elif name != "data":
                bar.section(f"{name} ...")  # below the bars of the stage before
                tasks.clear()

        def batch(stage_name: str, done: int, total: int) -> None:
            if stage_name not in tasks:
                tasks[stage_name] = bar.add_task(f"  {stage_name}", total=total)
            bar.update(tasks[stage_name], completed=done, total=total)

        def epoch(record: dict) -> None:
            for name in ("weights", "theta"):  # a fresh bar per epoch
                if name in tasks:
                    bar.remove_task(tasks.pop(name))
            costs = ", ".join(f"{k} {v:.4g}" for k, v in record["expected_cost"].items())
            bar.update(search_task, advance=1, description=(
                f"search: epoch {record['epoch'] + 1}/{job.config.epochs} tau {record['temperature']:.2f} "
                f"mixture train acc {record['weights_accuracy']:.1%} E[cost] {costs}"
                + (" (theta frozen)" if record["theta_frozen"] else "")))

        def measure(stage_name: str, done: int, total: int, info: dict) -> None:
            if stage_name == "ended":  # a run a killed collection left timing on the device
                from latbench.cli.collect import ended_line

                note(f"warning: {ended_line(info['run'])}")
                return
            batch(stage_name, done, total)

        def note(line: str) -> None:
            bar.close()  # before any bar: a line of its own, above the search
            bar.console.print(line, style="yellow" if line.startswith("warning") else None)

        result = run_job(job, Hooks(stage=stage, batch=batch, epoch=epoch, measure=measure, note=note))
    if args.json:
        output.print_json(result)
        print_targets(result)  # on stderr: a script reads stdout, the person running it reads this
    else:
        print_summary(result)
    failed = [v for v in result["verify"] if "error" in v]
    arch = "-".join(str(c) for c in result["final"]["arch"])
    for v in failed:
        output.note(f"verify on {v['device']} failed: {v['error']}" + (f" ({v['hint']})" if v.get("hint") else "")
                    + f"; the search's result is in {result['result_file']}; measure its arch later with "
                    f"latbench collect --device {v['device']} --space {result['space']} --arch {arch}",
                    style="yellow")
    return 1 if failed else 0


def print_targets(result: dict) -> None:
    """One line per target on stderr: hit, or missed by how much, as predicted (and measured)."""
    measured = {f"latbench:{v['device']}": v["median_ms"] for v in result.get("verify", []) if "error" not in v}
    bounds = {c["spec"]: (c.get("min"), c.get("max")) for c in result.get("costs", [])}
    for t in result.get("targets", []):
        miss, tol, unit = t["relative_miss"], t["tolerance"], t["unit"]
        side = "over" if miss > 0 else "under"
        budget = t.get("budget", False)  # --pick budget: any amount over is a miss
        if t["hit"]:
            said = (f"hit: final arch predicted {_num(t['predicted'])} {unit}, {abs(miss):.1%} {side} "
                    + (f"(at or under the budget, within --tolerance {100 * tol:g}% of it)" if budget
                       else f"(within --tolerance {100 * tol:g}%)"))
        elif miss < 0:  # within the budget, but it leaves accuracy on the table
            said = (f"{abs(miss):.1%} under: final arch predicted {_num(t['predicted'])} {unit}, within the "
                    f"target but further below it than --tolerance {100 * tol:g}%")
        elif budget:
            said = f"MISSED by {abs(miss):.1%}: final arch predicted {_num(t['predicted'])} {unit}, over the budget"
        else:
            said = (f"MISSED by {abs(miss):.1%}: final arch predicted {_num(t['predicted'])} {unit}, over "
                    f"the target by more than --tolerance {100 * tol:g}%")
        low, high = bounds.get(t["spec"], (None, None))
        # why it missed (said before training too, but that scrolled away); not after "hit", which
        # a target just below the cheapest network within --tolerance is
        if low is not None and t["target"] < low and not t["hit"] and miss > 0:
            said += f"; no arch can meet it: the cheapest network of the space is predicted {_num(low)} {unit}"
        elif high is not None and t["target"] > high and miss <= 0:  # why it is so far under
            said += f"; every arch meets it: the dearest network of the space is predicted {_num(high)} {unit}"
        measured_over = False
        if t["spec"] in measured and measured[t["spec"]]:
            off = measured[t["spec"]] / t["target"] - 1
            measured_over = off > (0 if budget else tol)
            said += (f"; measured {_num(measured[t['spec']])} ms, {abs(off):.1%} "
                     f"{'over' if off > 0 else 'under'} the target"
                     + (" (measured OVER it)" if measured_over else ""))
        if t["hit"] and measured_over:  # the device has the last word, not the prediction
            said = "hit as predicted, MISSED as measured: " + said[len("hit: "):]
        output.note(f"target {t['spec']} {_num(t['target'])} {unit}: {said}",
                    style=None if t["hit"] and not measured_over else "yellow")


def print_summary(result: dict) -> None:
    units = {c["spec"]: c["unit"] for c in result["costs"]}
    rows = []
    final = result["final"]
    entries = [("argmax", result["argmax"])] + [(f"sample {i + 1}", s) for i, s in enumerate(result["samples"])]
    for label, entry in entries:
        pred = "; ".join(f"{_num(v)} {units[k]}" for k, v in entry["predicted"].items())
        mark = " *" if label == final["source"] else ""
        rows.append([label + mark, "-".join(str(c) for c in entry["arch"]), pred,
                     f"{entry['supernet_accuracy']:.1%}", f"{entry['skip_share']:.0%}", f"{entry['log_prob']:.1f}"])
    output.table(f"{result['space']} on {result['data']['name']}: found archs (* = final)",
                 ["", "arch", "predicted", "one-path test acc", "skip", "log P"], rows)
    output.note(_pick_line(result))
    output.note("accuracies: 'mixture train acc' (epoch bar) is the supernet's mix of all candidates on "
                "training images; 'one-path test acc' is each arch alone on the shared weights, on held-out "
                "images, often near chance after a short search: a rough ranking, not the arch's own "
                "accuracy (see --retrain-epochs)")
    if "retrained" in final:
        r = final["retrained"]
        output.note(f"final arch retrained alone for {output.plural(r['epochs'], 'epoch')}: "
                    f"accuracy {r['accuracy']:.1%}")
    verified = [v for v in result["verify"] if "error" not in v]
    if verified:
        output.table("measured vs predicted (final arch)",
                     ["device", "runtime", "measured_ms", "p10-p90 ms", "rounds", "predicted_ms", "predicted vs measured %",
                      "target_ms"],
                     [[v["device"], f"{v['runtime']}, table {v.get('table', '?')}", v["median_ms"], f"{_num(v['p10_ms'])}-{_num(v['p90_ms'])}",
                       v["rounds"], v["predicted_ms"],
                       None if v["relative_error"] is None else f"{100 * v['relative_error']:+.1f}",
                       v["target_ms"]] for v in verified])
    print_targets(result)
    for note in result["exports"].get("notes", []):
        output.note(f"note: {note}")
    exported = (result["exports"].get("onnx"), result["exports"].get("tflite"))
    files = [result["result_file"]] + [p for p in exported if p]
    output.note(f"search {result['search_s']:.0f} s ({result['epoch_s_mean']:.1f} s/epoch); wrote "
                + ", ".join(files))


def _pick_line(result: dict) -> str:
    """How the final arch was chosen, in words (it is often a draw, not the argmax)."""
    final, tol = result["final"], result.get("tolerance")
    if result.get("pick") not in ("target", "budget"):
        return "final arch: theta's argmax (--pick argmax)"
    pool = f"the argmax and {output.plural(len(result['samples']), 'draw')} from theta (--samples)"
    if result["pick"] == "budget":
        if final.get("within_tolerance"):
            return (f"final arch: {final['source']}, the likeliest of {pool} predicted at or under every "
                    f"target and within --tolerance {100 * tol:g}% below it (--pick budget)")
        if final.get("under_budget"):
            return (f"final arch: {final['source']}, the closest under the targets of {pool}: none is within "
                    f"--tolerance {100 * tol:g}% below them (--pick budget)")
        return (f"final arch: {final['source']}, the least over the targets of {pool}: none is under "
                "(--pick budget)")
    if final.get("within_tolerance"):
        return (f"final arch: {final['source']}, the likeliest of {pool} whose predicted cost is within "
                f"--tolerance {100 * tol:g}% of every target (--pick target)")
    return (f"final arch: {final['source']}, the closest to the targets of {pool}: none is within "
            f"--tolerance {100 * tol:g}% (--pick target)")


def _num(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.4g}M"
    return f"{value:.4g}"
