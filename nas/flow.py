"""The whole of `nas search`: costs and data in, searched network, scores, files and checks out.

Kept apart from the CLI so benchmarks (and users' scripts) run the same flow.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from latbench.errors import LatbenchError, UsageError
from nas.cost import CostForm, LoadedCost, TARGET_OPTIONS, assign_targets, load_costs
from nas.data import load_data
from nas.distributed import init_world, is_worker_rank
from nas.result import RESULT_FILE, export_network, write_json
from nas.search import SearchConfig, retrain, run_search, skip_share, supernet_accuracy
from nas.verify import measure_networks
from predictors.costmodel import as_space


PICKS = ("auto", "argmax", "target", "budget")
#: Picks that choose by the targets (`pick_final`).
TARGET_PICKS = ("target", "budget")
#: --tolerance when none is given: the rest of a +-10% band is left to the predictor's own error.
DEFAULT_TOLERANCE = 0.05
#: How long --verify waits for a collection that measures the device when the search ends.
VERIFY_LOCK_WAIT_S = 600.0


@dataclass
class SearchJob:
    """Everything `nas search` was asked to do."""

    costs: list[str]
    space: str = "fbnet-cifar"
    form: str = "fbnet"
    # None: not given, so the form's default, and no note that it has no effect.
    alpha: float | None = None
    beta: float | None = None
    lam: float | None = None
    targets: dict[str, list[float]] = field(default_factory=dict)  # unit -> values
    data: str = "digits"
    input_size: int | None = None
    limit_train: int | None = None
    weight_fraction: float = 0.8
    config: SearchConfig = field(default_factory=SearchConfig)
    samples: int = 10
    pick: str = "auto"
    tolerance: float | None = None  # None: DEFAULT_TOLERANCE
    retrain_epochs: int = 5
    out_dir: Path = Path("nas-results")
    export: bool = True
    verify: bool = False
    verify_device: str | None = None
    verify_wait_s: float = VERIFY_LOCK_WAIT_S


@dataclass
class Hooks:
    """Progress callbacks: stage(name), batch(stage, done, total), epoch(record), and note(line)
    for what the user should read before the search starts (unreachable targets, ignored flags)."""

    stage: Callable[[str], None] = lambda name: None
    batch: Callable[[str, int, int], None] = lambda stage, done, total: None
    epoch: Callable[[dict], None] = lambda record: None
    measure: Callable | None = None
    note: Callable[[str], None] = lambda line: None


def check_torch_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown torch device {name!r}", "use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # torch names more (mps, xpu, meta) than the search runs on
        raise UsageError(f"--torch-device {name}: the search runs on cpu or cuda, not {device.type}",
                         "use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--torch-device {name}: CUDA is not available in this torch build or host",
                         "use --torch-device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--torch-device {name}: this host has {torch.cuda.device_count()} CUDA device(s)",
                         "use cuda:0")


def prepare(job: SearchJob, loader=None):
    """Space, cost terms (with targets), cost form and pick, all checked before any training."""
    from latbench.spaces import get_space

    space = get_space(job.space)
    if not job.costs:
        raise UsageError("no cost given", "add --cost latbench:DEVICE, --cost flops or --cost params")
    try:
        costs = load_costs(job.costs, space, loader)
        assign_targets(costs, job.targets)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if job.pick not in PICKS:
        raise UsageError(f"unknown pick {job.pick!r}", f"use one of {', '.join(PICKS)}")
    missing = [c for c in costs if c.target is None]
    pick = job.pick
    if pick == "auto":
        pick = "argmax" if len(missing) == len(costs) else "target"
    if missing and (job.form != "fbnet" or pick in TARGET_PICKS):
        c = missing[0]
        why = f"the {job.form} form" if job.form != "fbnet" else f"--pick {pick}"
        raise UsageError(f"{why} needs a target for --cost {c.spec}",
                         f"add {TARGET_OPTIONS.get(c.unit, '--target')} VALUE (in {c.unit})")
    if job.form == "fbnet" and pick not in TARGET_PICKS and len(missing) < len(costs):
        raise UsageError("targets are not used by the fbnet form",
                         "add --form hinge (or linear), or --pick target, or drop the target")
    given = {k: v for k, v in (("alpha", job.alpha), ("beta", job.beta), ("lam", job.lam)) if v is not None}
    try:
        form = CostForm(job.form, targets=tuple(c.target for c in costs) if job.form != "fbnet" else (),
                        **given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if job.form == "fbnet":
        for c in costs:
            low = c.term.bounds()[0]
            if low <= 1.0:
                raise UsageError(f"the fbnet form takes log(cost), but {c.spec} can be as low as "
                                 f"{low:.3g} {c.unit} (log <= 0)", "use --form linear or hinge with a target")
    check_torch_device(job.config.torch_device)
    return space, costs, form, pick


def advice(job: SearchJob, costs: list[LoadedCost], pick: str) -> list[str]:
    """Lines to read before training: a target the cost cannot reach, and flags given that
    change nothing (the search would otherwise run for minutes and the user learn it after)."""
    lines = []
    for c in costs:
        if c.target is None:
            continue
        low, high = c.term.bounds()
        option = TARGET_OPTIONS.get(c.unit, "--target")
        span = f"{c.spec} ranges over {_amount(low)}..{_amount(high)} {c.unit} in {job.space}"
        if c.target < low:
            lines.append(f"warning: {option} {_amount(c.target)} is below the cheapest network: {span}; "
                         f"the search cannot reach it (give a target in that range)")
        elif c.target > high:
            lines.append(f"warning: {option} {_amount(c.target)} is above the dearest network: {span}; "
                         f"every arch meets it (give a target in that range)")
    from latbench.profiles import DeviceProfile
    from latbench.store import profile_settings, what_differs

    for c in costs:  # a predictor of other settings than the device is measured with now
        info = getattr(c.model, "info_", None) or {}
        current = profile_settings(c.device) if c.device and info.get("settings_hash") else None
        if current is not None and DeviceProfile.settings_hash(current) != info["settings_hash"]:
            differs = what_differs(current, info.get("settings") or {})
            lines.append(f"warning: {c.spec} was fitted on table {info.get('table') or info['settings_hash']}, "
                         f"measured with other settings than the device's profile gives now"
                         + (f" ({differs})" if differs else "") + "; its predictions are for those, and "
                         f"--verify would measure under these (collect and `latbench fit-predictor --device "
                         f"{c.device}` again to match)")
    for c in costs:  # a predictor that measured little of this space predicts most of it
        lut = getattr(c.model, "lut_", None)
        if lut is None:
            continue
        coverage = lut.coverage(as_space(job.space))
        if coverage.fraction < 0.5:
            fitted = (getattr(c.model, "info_", None) or {}).get("space")
            how = (f"collect them: latbench collect --device {c.device} --space {job.space}"
                   if profile_settings(c.device) is not None else "import its measurements of them")
            lines.append(f"warning: {c.spec} measured {len(coverage.measured)} of the {coverage.total} ops of "
                         f"{job.space}" + (f" (it was fitted on {fitted})" if fitted and fitted != job.space else "")
                         + f"; the rest are GBDT guesses, so its costs may be off by tens of percent ({how}, "
                         f"then latbench fit-predictor --device {c.device} --space {job.space}, which "
                         "replaces its predictor)")
    for c in costs:  # fit-predictor fits the correction on --space's networks alone
        info = getattr(c.model, "info_", None) or {}
        fitted = info.get("space")
        if info.get("network_correction") and fitted and fitted != job.space:
            how = (f"latbench collect --device {c.device} --space {job.space} --networks 20"
                   if profile_settings(c.device) is not None else f"import networks of {job.space}")
            lines.append(f"warning: {c.spec}'s network correction was fitted on networks of {fitted}, and "
                         f"{job.space}'s networks are not those, so its costs may be off ({how}, then "
                         f"latbench fit-predictor --device {c.device} --space {job.space}, which replaces "
                         "its predictor)")
    targeted = [c for c in costs if c.target is not None]
    if job.form == "fbnet" and targeted:
        options = ", ".join(dict.fromkeys(TARGET_OPTIONS.get(c.unit, "--target") for c in targeted))
        lines.append(f"note: {options} does not enter the fbnet loss, it only picks the final arch "
                     f"(--pick {pick}); use --form hinge to train toward it")
    for name, option in (("alpha", "--alpha"), ("beta", "--beta")):
        if getattr(job, name) is not None and job.form != "fbnet":
            lines.append(f"note: {option} has no effect with --form {job.form} (it is a constant of the "
                         f"fbnet form; {job.form} uses --lambda)")
    if job.lam is not None and job.form == "fbnet":
        lines.append("note: --lambda has no effect with --form fbnet (it weighs the linear and hinge forms; "
                     "fbnet uses --alpha and --beta)")
    if job.tolerance is not None and pick == "argmax":
        lines.append("note: --tolerance does not choose the final arch with --pick argmax"
                     + ("; it only judges whether the targets were hit" if targeted else
                        " and no target is given, so it has no effect"))
    return lines


def target_report(final: dict, costs: list[LoadedCost], tolerance: float, budget: bool = False) -> list[dict]:
    """For each target: the final arch's predicted cost, its relative miss, and whether that is
    within +-`tolerance` (what --pick target aims at); a `budget` (--pick budget) is hit only at
    or under it, within `tolerance` below."""
    out = []
    for c in costs:
        if c.target is None:
            continue
        predicted = final["predicted"][c.spec]
        miss = predicted / c.target - 1.0
        out.append({"spec": c.spec, "unit": c.unit, "target": c.target, "predicted": predicted,
                    "relative_miss": miss, "tolerance": tolerance, "budget": budget,
                    "hit": -tolerance <= miss <= 0 if budget else abs(miss) <= tolerance})
    return out


def library_versions(torch_device: str = "cpu") -> dict[str, str]:
    """What the search ran with: the predictors' libraries, and torch, which trained it, with its
    threads, and on a GPU the CUDA and cuDNN versions and the GPU (a seed gives the same search
    only with all of them the same: CUDA kernels and the GPU noise generator differ from CPU's)."""
    from predictors.artifact import library_versions as predictor_versions

    out = predictor_versions() | {"torch": torch.__version__, "torch_threads": str(torch.get_num_threads())}
    device = torch.device(torch_device)
    if device.type == "cuda" and torch.cuda.is_available():
        out |= {"cuda": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version()),
                "gpu": torch.cuda.get_device_name(device)}
    return out


def _amount(value: float) -> str:
    return f"{value / 1e6:.4g}M" if value >= 1e6 else f"{value:.4g}"


def score_arch(space, arch, costs: list[LoadedCost], outcome, data, config, hooks: Hooks) -> dict:
    network = space.network(arch)
    return {
        "arch": list(arch),
        "names": [space.candidates[c].name for c in arch],
        "network_key": network.key,
        "predicted": {c.spec: c.predict(space, arch) for c in costs},
        "units": {c.spec: c.unit for c in costs},
        "skip_share": skip_share(arch),
        "supernet_accuracy": supernet_accuracy(outcome, arch, data, config, on_batch=hooks.batch),
    }


def log_prob(probs: torch.Tensor, arch) -> float:
    """log P(arch) under the candidate probabilities (layers independent)."""
    return float(sum(torch.log(probs[l, c]) for l, c in enumerate(arch)))


def pick_final(argmax: dict, samples: list[dict], costs: list[LoadedCost], pick: str,
               tolerance: float) -> dict:
    """The arch a search reports as its result.

    ``argmax``: the most likely candidate of every layer (FBNet's reading of theta).
    ``auto`` (resolved in `prepare`): ``target`` when a target is given, else ``argmax``.
    ``target``: of the argmax and the K draws from theta, the most likely one whose predicted
    cost is within +-`tolerance` of every target; if none is, the one closest to the targets.
    ``budget``: the targets are hard budgets: the most likely one predicted at or under every
    target and within `tolerance` below it; if none is, the one closest under them (a short
    search's argmax of skips is far under, and leaves accuracy on the table); if none is
    under, the one least over.
    While theta is still spread out, the argmax can sit far from the cost the distribution
    was trained to (each layer's cheapest candidate wins its layer by a hair), whereas draws
    from theta land where its mass is.
    """
    if pick not in PICKS:
        raise UsageError(f"unknown pick {pick!r}", f"use one of {', '.join(PICKS)}")
    targeted = [c for c in costs if c.target is not None]
    if pick == "argmax":
        return argmax | {"source": "argmax"}
    if not targeted:
        raise UsageError(f"--pick {pick} needs a target", "add --target-ms (or --target-flops/--target-params)")
    entries = [("argmax", argmax)] + [(f"sample {i + 1}", e) for i, e in enumerate(samples)]

    def over(entry: dict) -> list[float]:
        return [entry["predicted"][c.spec] / c.target - 1.0 for c in targeted]

    def miss(entry: dict) -> float:
        return max(abs(o) for o in over(entry))

    if pick == "budget":
        under = [(src, e) for src, e in entries if max(over(e)) <= 0]
        within = [(src, e) for src, e in under if min(over(e)) >= -tolerance]
        if within:
            src, best = max(within, key=lambda se: se[1]["log_prob"])
        elif under:
            src, best = max(under, key=lambda se: min(over(se[1])))  # the closest under every target
        else:
            src, best = min(entries, key=lambda se: max(over(se[1])))
        return best | {"source": src, "within_tolerance": bool(within), "under_budget": bool(under)}
    within = [(src, e) for src, e in entries if miss(e) <= tolerance]
    if within:
        src, best = max(within, key=lambda se: se[1]["log_prob"])
    else:
        src, best = min(entries, key=lambda se: miss(se[1]))
    return best | {"source": src, "within_tolerance": bool(within)}


def score_candidates(space, costs: list[LoadedCost], outcome, data, job: SearchJob,
                     hooks: Hooks) -> tuple[dict, list[dict]]:
    """The argmax arch and `job.samples` draws from theta, each predicted and scored."""
    gen = torch.Generator().manual_seed(job.config.seed + 2)
    probs = outcome.supernet.probs().detach().cpu()
    archs = [outcome.arch] + (outcome.supernet.sample_archs(job.samples, generator=gen) if job.samples else [])
    scored = []
    for arch in archs:
        entry = score_arch(space, arch, costs, outcome, data, job.config, hooks)
        entry["log_prob"] = log_prob(probs, arch)
        scored.append(entry)
    return scored[0], scored[1:]


def verify_on(device: str, network, final: dict, costs: list[LoadedCost], hooks: Hooks,
              wait_s: float = VERIFY_LOCK_WAIT_S) -> dict:
    """Measure the final network on `device` through latbench; measured next to predicted. A
    collection measuring the device is waited for (up to `wait_s`); a failure is an entry with
    its error, so the search's result is still written."""
    from latbench.locks import lock_holder
    from latbench.profiles import load_profile

    hooks.stage(f"verify:{device}")
    try:
        holder = lock_holder(load_profile(device))
        if holder:
            hooks.note(f"verify: {device} is being measured by {holder}; waiting up to {wait_s:g} s for it")
        measured = measure_networks([network], device, on_event=hooks.measure, lock_wait_s=wait_s)[network.key]
    except LatbenchError as exc:
        return {"device": device, "error": exc.message, "hint": exc.hint}
    cost = next((c for c in costs if c.device == device), None)
    predicted = final["predicted"][cost.spec] if cost else None
    error = None if predicted is None else (predicted - measured["median_ms"]) / measured["median_ms"]
    return {"device": device, **measured, "predicted_ms": predicted, "relative_error": error,
            "target_ms": cost.target if cost else None}


def verify_devices(job: SearchJob, costs: list[LoadedCost]) -> list[str]:
    if job.verify_device:
        return [job.verify_device]
    devices = [c.device for c in costs if c.device]
    if not devices:
        raise UsageError("--verify needs a device: no --cost is a latbench:DEVICE latency",
                         "add --verify-device NAME (see `latbench devices`)")
    return list(dict.fromkeys(devices))


def busy_notes(devices: list[str], wait_s: float) -> list[str]:
    """A --verify device another collection measures now: say so before training."""
    from latbench.locks import lock_holder
    from latbench.profiles import load_profile

    notes = []
    for device in devices:
        holder = lock_holder(load_profile(device))
        if holder:
            notes.append(f"note: {device} is being measured now, by {holder}: --verify will wait up to "
                         f"{wait_s:g} s for it after the search (--verify-wait-s; the result is written "
                         "either way)")
    return notes


def check_after_search(job: SearchJob, devices: list[str]) -> bool:
    """Fail now, not after minutes of training, on what the steps after the search need: a
    profile for every --verify device, and an --out that can be written (made here, on the
    rank that writes). True when this made the --out folder."""
    from latbench.profiles import list_profiles, load_profile

    for device in devices:
        if device not in list_profiles() and not job.verify_device:
            raise UsageError(f"--verify measures on {device}, which has a predictor but no device profile "
                             "(measurements imported from elsewhere?)",
                             "give --verify-device NAME of a device you can measure (`latbench devices`), "
                             "or drop --verify")
        load_profile(device)
    if is_worker_rank():
        return False
    out = Path(job.out_dir)
    if (out / RESULT_FILE).exists():
        raise UsageError(f"--out {out} already holds the result of a search ({RESULT_FILE})",
                         "give a new --out, or move that result away")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise UsageError(f"cannot write the results under --out {out}: {exc.strerror or exc}",
                         "give a folder you can write with --out") from None
    return made


def run_job(job: SearchJob, hooks: Hooks | None = None, loader=None) -> dict | None:
    """Run a search end to end; returns the result (also written to out_dir/result.json).

    Under torchrun every rank trains its share; rank 0 alone goes on to score, export, verify
    and write, and the other ranks return None once the search is done."""
    hooks = hooks or Hooks()
    started = time.time()
    space, costs, form, pick = prepare(job, loader)
    notes = advice(job, costs, pick)
    job = dataclasses.replace(job, alpha=form.alpha, beta=form.beta, lam=form.lam,
                              tolerance=DEFAULT_TOLERANCE if job.tolerance is None else job.tolerance)
    devices = verify_devices(job, costs) if job.verify else []
    made_out = check_after_search(job, devices)
    if not is_worker_rank():
        notes += busy_notes(devices, job.verify_wait_s)
        for line in notes:
            hooks.note(line)
    world = None
    try:
        world, torch_device = init_world(job.config.torch_device)
        job = dataclasses.replace(job, config=dataclasses.replace(job.config, torch_device=torch_device))
        return _run_job(job, hooks, world, space, costs, form, pick, devices, started, notes)
    except BaseException:
        out = Path(job.out_dir)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a search that stopped leaves no empty result folder behind
        raise
    finally:
        if world is not None:
            world.close()


def _run_job(job: SearchJob, hooks: Hooks, world, space, costs, form, pick, devices, started,
             notes: list[str]) -> dict | None:
    input_size = job.input_size or space.input_size
    hooks.stage("data")
    data = load_data(job.data, input_size, seed=job.config.seed, weight_fraction=job.weight_fraction,
                     limit=job.limit_train)
    hooks.stage("search")
    t0 = time.perf_counter()
    outcome = run_search(space, data, [c.term for c in costs], form, job.config,
                         on_batch=hooks.batch, on_epoch=hooks.epoch, world=world)
    search_s = time.perf_counter() - t0
    if not world.is_main:
        return None
    hooks.stage("score")
    argmax, samples = score_candidates(space, costs, outcome, data, job, hooks)
    final = dict(pick_final(argmax, samples, costs, pick, job.tolerance))
    if job.retrain_epochs:
        hooks.stage("retrain")
        final["retrained"] = retrain(space, final["arch"], data, job.config, job.retrain_epochs,
                                     on_batch=hooks.batch)
    out_dir = Path(job.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = space.network(final["arch"])
    exports = {}
    if job.export:
        hooks.stage("export")
        exports = export_network(network, out_dir)
    verified = [verify_on(device, network, final, costs, hooks, job.verify_wait_s) for device in devices]
    epoch_s = [r["epoch_s"] for r in outcome.curves]
    result = {
        "space": space.name,
        "data": {"spec": job.data, "name": data.name, "classes": data.num_classes, "input_size": input_size,
                 "limit_train": job.limit_train, "weight_split": job.weight_fraction, "sizes": data.sizes()},
        "costs": [c.to_dict() for c in costs],
        "form": {"form": form.form, "alpha": form.alpha, "beta": form.beta, "lambda": form.lam},
        "pick": pick,
        "tolerance": job.tolerance,
        "num_samples": job.samples,  # --samples K (the draws themselves are "samples")
        "retrain_epochs": job.retrain_epochs,
        "config": job.config.to_dict(),
        "versions": library_versions(job.config.torch_device),
        "distributed": world.to_dict(),
        "final": final,
        "targets": target_report(final, costs, job.tolerance, budget=pick == "budget"),
        "notes": notes,
        "argmax": argmax,
        "samples": samples,
        "theta_probs": outcome.supernet.probs().detach().cpu().tolist(),
        "curves": outcome.curves,
        "exports": exports,
        "verify": verified,
        "search_s": search_s,
        "epoch_s_mean": sum(epoch_s) / len(epoch_s),
        "started_at": started,
        "wall_s": time.time() - started,
    }
    result["result_file"] = str(out_dir / RESULT_FILE)
    write_json(result, out_dir / RESULT_FILE)
    return result

