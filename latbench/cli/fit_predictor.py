"""`latbench fit-predictor`: fit a device's latency predictor from the store and save it."""

from __future__ import annotations

import argparse
import json
import time

from latbench.cli import output
from latbench.cli.arguments import int_at_least

EXAMPLES = """\
examples:
  latbench fit-predictor --device local
  latbench fit-predictor --device raspi4 --space fbnet-imagenet --json > raspi4-fit.json
  latbench fit-predictor --device local --no-select     # default GBDT settings, no search
  latbench fit-predictor --device pixel3 --unit pixel3@desk-a   # one farm unit alone

Fits on the device's newest table (runtime version and settings) measured with its
profile's current settings (else the newest), or on the one --table names (`latbench lut
--device X --tables` lists them): a LUT of the measured ops, a GBDT for ops never measured
(its features, target, base model, split and pull towards latency levels chosen by
cross-validation over --folds, default 5), and a network-level correction when 3 or more
whole networks of --space were measured (`latbench collect --networks N`; networks of other
spaces are left out and named); without
them a network is the plain sum of its ops. A device has one predictor: fitting again, with
another --space too, replaces it. Prints held-out
accuracy next to baselines fitted on the same data (ops: FLOPs-linear and a plain LightGBM on
raw shape columns; networks: FLOPs-linear and the LUT sum without correction); the ops' score
is nested, each fold's settings searched on its training ops alone (unless --no-select, or too
few ops to nest: the table says which). It saves
manifest.json, lut.json, gbdt*.{json,txt}, correction.json, report.json and
predicted_vs_measured.png into $LATBENCH_HOME/predictors/<device>/, where
`predictors.load("latbench:<device>")` finds them.

On a farm (`latbench collect --farm`), several units of one device share the work and the
store records which unit measured what. By default every unit's measurements are pooled
into one predictor; --unit DEVICE@HOST fits on that unit's alone and saves it as
predictors/DEVICE@HOST/ (`predictors.load("latbench:DEVICE@HOST")`), to compare units or to
predict one phone."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="device name, as measured or imported")
    p.add_argument("--space", default="fbnet-cifar",
                   help="search space whose measured networks fit the network correction, and for the "
                        "coverage report (default: fbnet-cifar)")
    p.add_argument("--folds", type=int_at_least(2), default=5, help="cross-validation folds (default 5)")
    p.add_argument("--correction", choices=["auto", "none", "scale", "affine"], default="auto",
                   help="network-level correction form (default: auto, by leave-one-out)")
    p.add_argument("--no-select", action="store_true",
                   help="skip the settings search; use the default GBDT settings")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the folds and the models (default 0)")
    p.add_argument("--unit", metavar="DEVICE@HOST", default=None,
                   help="fit on one farm unit's measurements alone (default: pool every unit)")
    p.add_argument("--table", metavar="ID",
                   help="fit on this table of the device (default: the newest measured with the profile's "
                        "current settings, else the newest; "
                        "`latbench lut --device X --tables` lists them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args) -> int:
    from latbench.errors import LatbenchError, UsageError
    from latbench.spaces import get_space
    from latbench.profiles import DeviceProfile
    from latbench.store import device_table, profile_settings, table_choice_note
    from predictors import artifact, metrics, selection, training
    from predictors.features import identity_rows, spec_matrix
    from predictors.gbdt import MIN_FIT_ROWS, GBDTPredictor
    from predictors.latency import LatencyPredictor

    artifact.check_device_name(args.device)
    name = args.device if args.unit is None else artifact.check_device_name(args.unit, "--unit")
    space = get_space(args.space)
    current = profile_settings(args.device)
    current_hash = DeviceProfile.settings_hash(current) if current is not None else None
    info, rows, n_tables = device_table(args.device, args.table, unit=args.unit, settings_hash=current_hash)
    choice = table_choice_note(args.device, info, n_tables, current, picked=args.table is not None)
    ctx = info.context
    units = _units(info.context)
    data = training.from_rows(rows)
    # The network correction is fitted for --space: one verified network of another space (far
    # bigger or smaller) would tilt it for every network of this one.
    other_spaces = sorted({n.space for n in data.networks if n.space != space.name})
    if other_spaces:
        keep = [i for i, n in enumerate(data.networks) if n.space == space.name]
        left_out = len(data.networks) - len(keep)
        data.networks = [data.networks[i] for i in keep]
        data.network_ms = data.network_ms[keep]
    # The GBDT is not fitted on identity skips (they do no work): they do not count here.
    n_fit = int((~identity_rows(spec_matrix(data.specs))).sum()) if data.specs else 0
    if n_fit < MIN_FIT_ROWS + 1:  # cross-validation fits on all but one at most
        others = (f", or fit another of its {n_tables} tables with --table ID (`latbench lut --device "
                  f"{args.device} --tables`)" if n_tables > 1 else "")
        identities = f", {len(data.specs) - n_fit} of them identity skips, which are not fitted" if n_fit < len(data.specs) else ""
        raise LatbenchError(
            f"only {output.plural(len(data.specs), 'op')} measured for {args.device!r} in table {ctx.table_id} "
            f"({ctx.runtime_label}){identities}; a predictor needs at least {MIN_FIT_ROWS + 1} others "
            f"({MIN_FIT_ROWS} to fit each cross-validation fold on)",
            (f"run `latbench collect --device {args.device} --space {space.name}`"
             if ctx.runtime != "imported" else "import the device's op measurements (`latbench import`)")
            + others)
    if len(data.specs) < args.folds:
        raise UsageError(f"--folds {args.folds} is more than the {len(data.specs)} ops measured for "
                         f"{args.device!r}", f"give --folds {len(data.specs)} or fewer (default 5)")
    _check_fold_size(len(data.specs), args.folds, MIN_FIT_ROWS, args.device, n_fit=n_fit)
    started = time.perf_counter()
    output.note(f"device {args.device}: table {ctx.table_id}, {ctx.runtime_label}; "
                f"{len(data.specs)} ops, {len(data.networks)} networks measured")
    if choice:
        output.note(f"  {choice}")
    if other_spaces:
        output.note(f"  left out {output.plural(left_out, 'measured network')} of {', '.join(other_spaces)}: "
                    f"the network correction is fitted on networks of --space {space.name} (fit with "
                    f"--space {other_spaces[0]} for those; that replaces this predictor)")
    # ops and networks may be collected with different --rounds; one farm unit has only the
    # rounds it happened to measure
    for kind in ("op", "network") if args.unit is None else ():
        rounds = [r["rounds"] for r in rows if r["kind"] == kind]
        short = sum(1 for n in rounds if n < max(rounds, default=0))
        if short:
            output.note(f"  {short} of {len(rounds)} {kind}s have fewer rounds ({min(rounds)}) than the most "
                        f"measured ({max(rounds)}): an interrupted collection? `latbench collect --device "
                        f"{args.device}` with the same options measures what is missing")
    farm_units = {u: n for u, n in units.items() if u}
    if args.unit is not None:
        output.note(f"unit {args.unit} alone: {farm_units[args.unit]} of {sum(units.values())} measurements")
    elif len(farm_units) > 1:
        output.note(f"pooled {len(farm_units)} units: "
                    + ", ".join(f"{u} ({n} measurements)" for u, n in farm_units.items())
                    + "; fit one alone with --unit")
    for key, why in list(data.skipped.items())[:5]:
        output.note(f"  left out {key}: {why}")
    base_params = {"random_state": args.seed}
    with output.progress() as bar:
        task = bar.add_task("cross-validating GBDT settings", total=1)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        if args.no_select:
            params, tried = {**selection.DEFAULT_CHOICE, **base_params}, []
        else:
            params, tried = selection.select_gbdt(data.specs, data.latency_ms, folds=args.folds,
                                                  seed=args.seed, base_params=base_params,
                                                  progress=progress)
        progress("held-out evaluation of ops", 0, 1)
        ops_eval = selection.evaluate_ops(data.specs, data.latency_ms, params, folds=args.folds,
                                          seed=args.seed, progress=progress,
                                          nested_base=None if args.no_select else base_params)
        progress("fitting the final predictor", 0, 1)
        predictor = LatencyPredictor(GBDTPredictor(**params), correction=args.correction).fit(
            data.specs, data.latency_ms, networks=data.networks, network_ms=data.network_ms,
            lut=data.lut)
        progress(f"predictor of {args.device} fitted", 1, 1)
    net_eval = None
    summed = _network_sums(predictor, data)  # each measured network's op sum, used twice below
    if len(data.networks) >= 2:
        net_eval = _network_eval(predictor, data, args, selection, summed)
    coverage = predictor.lut_.coverage(space)
    report = {
        "device": args.device, "unit": args.unit, "units": farm_units if args.unit is None else
        {args.unit: units[args.unit]}, "table": ctx.table_id, "runtime": ctx.runtime,
        "runtime_version": ctx.runtime_version, "settings_hash": ctx.settings_hash, "settings": info.settings, "space": space.name,
        "ops": len(data.specs), "networks": len(data.networks),
        "network_correction": predictor.has_network_correction,
        "correction": None if predictor.correction_ is None else predictor.correction_.to_dict(),
        "gbdt_settings": predictor.gbdt_.get_params(),
        "selection": tried,
        "ops_cv": _strip(ops_eval), "networks_cv": _strip(net_eval) if net_eval else None,
        "coverage": coverage.to_dict(), "skipped": data.skipped,
        "fit_s": round(time.perf_counter() - started, 2),
    }
    panels = [("ops, out-of-fold", ops_eval["pred"], ops_eval["true"])]
    if net_eval:
        panels.append(("networks, held out", net_eval["pred"], net_eval["true"]))
    from predictors.report import scatter_png

    png = scatter_png(panels, title=f"{name}: predicted vs measured")
    report = _clean(report)
    report_bytes = (json.dumps(report, indent=1, allow_nan=False) + "\n").encode()
    directory = artifact.save(
        predictor, artifact.predictor_dir(name),
        info={"device": args.device, "unit": args.unit, "units": report["units"],
              "table": ctx.table_id, "runtime": ctx.runtime, "runtime_version": ctx.runtime_version,
              "settings_hash": ctx.settings_hash, "settings": info.settings, "space": space.name,
              "ops": len(data.specs), "networks": len(data.networks)},
        reports={"report.json": report_bytes, "predicted_vs_measured.png": png})
    report["artifact"] = str(directory)
    if args.json:
        output.print_json(report)
        _notes(predictor, data, coverage, directory, args, ctx, summed, stderr_only=True)
        return 0
    # nested: the row scores the whole procedure (search, then fit), not one chosen setting
    rows = [metrics.format_row("gbdt (nested)" if ops_eval["nested"] else "gbdt (chosen)", ops_eval["predictor"]),
            metrics.format_row("flops_linear", ops_eval["flops_linear"]),
            metrics.format_row("lightgbm_raw", ops_eval["lightgbm_raw"])]
    # A relative error of a 0 ms op (an identity a runtime removes) is undefined: n counts it,
    # the +-% columns and mape do not (predictors.metrics), so the heading says so.
    zero = int(ops_eval["predictor"].get("n_zero_true", 0))
    left_out = f"; the {zero} measured at 0 ms are left out of +-% and mape" if zero else ""
    # Nested: each fold's settings were searched on the other folds alone, so the choice does
    # not flatter the gbdt row. Too few ops to nest: the search scored its candidates on these
    # same folds and kept the best, and the row runs a little high.
    if ops_eval["nested"]:
        chosen_here = "; settings chosen inside each fold, on its training ops alone"
    elif tried:
        chosen_here = "; too few ops to nest the settings search: chosen on these folds, so the gbdt row runs a little high"
    else:
        chosen_here = ""
    output.table(f"ops: {ops_eval['folds']}-fold held-out ({len(data.specs)} ops{left_out}; "
                 f"a LUT has no answer for held-out ops{chosen_here})", metrics.TABLE_COLUMNS, rows)
    if net_eval:
        form = predictor.correction_.form_ if predictor.correction_ is not None else "none"
        folds_forms = sorted(set(net_eval.get("correction_forms") or [form]))
        label = form if folds_forms == [form] else f"{form}; folds: {', '.join(folds_forms)}"
        rows = [metrics.format_row(f"lut+gbdt+correction ({label})", net_eval["predictor"]),
                metrics.format_row("flops_linear", net_eval["flops_linear"]),
                metrics.format_row("lut_sum (no correction)", net_eval["lut_sum"])]
        output.table(f"networks: held-out ({net_eval['held_out']} of {net_eval['networks']})",
                     metrics.TABLE_COLUMNS, rows)
    if tried:
        output.table(f"GBDT settings tried ({args.folds}-fold on ops; chosen by mean |log error|, one "
                     f"setting at a time; a change must lower it by {selection.MIN_GAIN:.0%}, so a "
                     f"row a little lower than * can lose)",
                     ["", "features", "target", "base", "split", "levels", "log_error", "+-10%", "mape%"],
                     [["*" if t["chosen"] else "", t["settings"]["features"], t["settings"]["target"],
                       t["settings"]["base"], t["settings"]["split"],
                       f"{t['settings'].get('level_snap', 0.0):g}", f"{t['metrics']['log_error']:.4f}",
                       f"{100 * t['metrics']['acc_10']:.1f}", f"{100 * t['metrics']['mape']:.1f}"]
                      for t in tried])
    _notes(predictor, data, coverage, directory, args, ctx, summed)
    return 0


def _units(ctx) -> dict[str, int]:
    from latbench import home
    from latbench.store import Store

    with Store(home.db_path()) as store:
        return store.units(ctx)


def _network_sums(predictor, data):
    import numpy as np

    return np.array([np.sum(predictor.network_op_costs(n.ops)) for n in data.networks])


def _network_eval(predictor, data, args, selection, summed):
    import numpy as np

    flops = np.array([n.flops for n in data.networks], dtype=float)
    lut_sum = selection.lut_sum_baseline(predictor.lut_, data.specs, data.latency_ms, data.networks)
    return selection.evaluate_networks(summed, flops, lut_sum, data.network_ms,
                                       correction=args.correction, folds=args.folds, seed=args.seed)


def _summed_caveat(source: str) -> str:
    """HW-NAS-Bench's raspi4, eyeriss and fpga have no measured networks to import: HELP's
    columns of those names are sums of the same block table, which teach a correction nothing."""
    from latbench.importers import HELP_SUMMED_COLUMNS

    device = source.removeprefix("hwnasbench-") if source.startswith("hwnasbench-") else None
    if device not in HELP_SUMMED_COLUMNS:
        return ""
    return (f"; not HELP's {device} column, which is the sum of this block table, not a measurement "
            "of whole networks")


def _notes(predictor, data, coverage, directory, args, ctx, summed, stderr_only: bool = False) -> None:
    from predictors.correction import MIN_AUTO_NETWORKS

    output.note(f"coverage: {coverage}")
    if coverage.fraction < 0.5:
        how = (f"import the device's measurements of the other ops (`latbench import ... --device "
               f"{args.device} --source {ctx.runtime_version}`)" if ctx.runtime == "imported" else
               f"measure the space (`latbench collect --device {args.device} --space {coverage.space}`)")
        output.note(f"note: {coverage.fraction:.0%} of {coverage.space}'s ops are measured: the GBDT predicts the "
                    f"other {len(coverage.missing)} from {len(data.specs)} ops, beyond what it has seen; {how} "
                    "before trusting its network predictions")
    output.note(predictor.describe())
    if not data.networks:
        output.note(f"note: no measured networks for {args.device}: a network's latency is the plain "
                    f"sum of its ops' latencies, without network-level correction ("
                    + (f"import measured networks with `latbench import ... --device {args.device} "
                       f"--source {ctx.runtime_version}`{_summed_caveat(ctx.runtime_version)})"
                       if ctx.runtime == "imported" else
                       f"measure some with `latbench collect --device {args.device} --networks 20`)"))
    elif len(data.networks) < MIN_AUTO_NETWORKS and args.correction == "auto":
        output.note(f"note: {output.plural(len(data.networks), 'measured network')}: too few to tell a "
                    f"correction from noise, so none is applied (measure {MIN_AUTO_NETWORKS} or more, or force "
                    "one with --correction scale)")
    elif len(data.networks) < 2:
        output.note("note: one measured network: the correction is fitted but cannot be cross-validated")
    elif len(data.networks) < FEW_NETWORKS:
        output.note(f"note: only {len(data.networks)} measured networks: their held-out figures (above all "
                    f"Spearman and Kendall) say little; measure {FEW_NETWORKS} or more (`--networks 20`)")
    if data.networks:
        _check_network_ratio(predictor, data, summed)
    output.note(f"saved {directory}, with its report.json and predicted_vs_measured.png "
                f"(load with predictors.load(\"latbench:{directory.name}\"))")


def _check_fold_size(n_ops: int, folds: int, min_rows: int, device: str, n_fit: int | None = None) -> None:
    """Each cross-validation fit sees the ops outside its fold (the largest is ceil(n / k)), of
    which the `n_fit` that are not identity skips are fitted (in the worst case the fold holds
    only those); too few there and the GBDT cannot fit at all."""
    import itertools

    from latbench.errors import UsageError

    n_fit = n_ops if n_fit is None else n_fit

    def fit_rows(k: int) -> int:
        return n_fit - -(-n_ops // k)

    if fit_rows(folds) >= min_rows:
        return
    enough = next(k for k in range(folds + 1, n_ops + 1) if fit_rows(k) >= min_rows)  # n_ops > min_rows
    need = next(n for n in itertools.count(n_fit + 1) if n - -(-(n + n_ops - n_fit) // folds) >= min_rows)
    raise UsageError(f"--folds {folds} fits each fold on {fit_rows(folds)} of the {n_ops} ops; the GBDT "
                     f"needs {min_rows}", f"give --folds {enough} or more (at most {n_ops}), or measure "
                     f"{need} ops or more" + (" that are not identity skips" if n_fit < n_ops else ""))


FEW_NETWORKS = 10  # fewer measured networks than this: held-out network figures are anecdotes
#: Measured networks this far from their op sums (median ratio) get a note: a space mismatch
#: (networks of one space, ops of another) looks like this; so does strong fusion on a GPU.
NETWORK_RATIO_RANGE = (0.5, 2.0)


def _check_network_ratio(predictor, data, summed) -> None:
    import numpy as np

    ratio = float(np.median(np.asarray(data.network_ms) / np.maximum(summed, 1e-9)))
    low, high = NETWORK_RATIO_RANGE
    if not low <= ratio <= high:
        form = predictor.correction_.form_ if predictor.correction_ is not None else "none"
        effect = ("so the correction carries much of every prediction" if form != "none" else
                  "and no correction is applied, so network predictions are off by about that much")
        output.note(f"note: the measured networks take {ratio:.2f}x the sum of their ops (median), {effect}; "
                    "unless the runtime fuses that much, check that the networks and the ops are of the same "
                    "space and input size (`latbench import --space`, `latbench lut --device ... --kind network`)")


def _strip(evaluation: dict | None) -> dict | None:
    if evaluation is None:
        return None
    return {k: v for k, v in evaluation.items() if k not in ("pred", "true")}


def _clean(obj):
    """JSON-ready: numpy scalars and arrays to Python, NaN (an undefined metric) to null."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
