"""`latbench collect`: measure what the store lacks for a device and a search space."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from latbench.cli import output
from latbench.cli.arguments import int_at_least

if TYPE_CHECKING:
    from latbench.collect import Plan, Report
    from latbench.store import Store

EXAMPLES = """\
examples:
  latbench collect --device local --space fbnet-cifar
  latbench collect --device local --space fbnet-cifar --networks 20 --rounds 5
  latbench collect --device local --limit 10 --json     # a quick partial run, machine-readable summary
  latbench collect --device pixel3 --farm HEAD:6379      # on every pixel3 of a device farm (docs/farm.md)
  latbench collect --device local --arch 0-8-3-1-...     # only this network (as `nas search` printed it)

Re-running measures only what is missing; Ctrl-C (or SIGTERM) keeps every finished batch and
the finished models of the batch in flight (on a farm, of each unit's batch). One collection
measures a device at a time: a second is refused. A run left behind by a collection killed
outright (kill -9, the OOM killer) is stopped by the next collection of that device, before it
measures, and it says so."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="device profile name (see `latbench devices`)")
    p.add_argument("--space", default="fbnet-cifar", help="search space (default: fbnet-cifar)")
    p.add_argument("--networks", type=int_at_least(0), default=0, metavar="N",
                   help="also measure N whole networks sampled from the space (seeded)")
    p.add_argument("--rounds", type=int_at_least(1), default=None, metavar="R",
                   help="rounds per op, each in a new shuffled order (default: the profile's)")
    p.add_argument("--limit", type=int_at_least(1), default=None, metavar="K",
                   help="measure only the first K ops of the space")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed for sampling networks (default 0)")
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help="measure only this whole network of --space: its candidate index per layer, "
                        "as `nas search` prints it (0-8-3-...); repeat for more")
    p.add_argument("--trust-new-host", action="store_true",
                   help="SSH: accept and remember the host key of a board never connected to before")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--farm", metavar="ADDRESS", help="measure on the device's units of a Ray farm: HEAD:6379 "
                   "or ray://HEAD:10001 (needs the `farm` extra; see `latbench farm --help`)")


def run(args) -> int:
    from contextlib import nullcontext

    from latbench import home
    from latbench.collect import Collector, space_items
    from latbench.profiles import load_profile
    from latbench.protocol import describe_options, describe_timing
    from latbench.spaces import get_space
    from latbench.store import Store

    profile = load_profile(args.device)
    space = get_space(args.space)
    home.writable_home()
    if args.arch:
        from latbench.errors import UsageError

        if args.networks or args.limit:
            raise UsageError("--arch measures only the networks it names",
                             "drop --networks and --limit, or run them as a collection of their own")
        try:
            nets = (space.network(space.check_arch(a)) for a in args.arch)
            items = list({n.key: n for n in nets}.values())  # an arch given twice is one network
        except ValueError as exc:
            raise UsageError(f"--arch: {exc}", f"give {space.num_layers} candidate indices of {space.name}, "
                             "such as 0-8-3-... from `nas search`") from None
    else:
        items = space_items(space, networks=args.networks, limit=args.limit, seed=args.seed)
    store = Store(home.db_path())
    if args.farm:  # the same plan, export and store here; the batches run on the farm's units
        from latbench.farm.dispatch import FarmCollector

        collector = FarmCollector(profile, store, address=args.farm, rounds=args.rounds)
    else:
        collector = Collector(profile, store, rounds=args.rounds)
    if args.trust_new_host:  # never turns off a profile's trust_unknown_host
        collector.transport.trust_new_host = True
    # Ray's C++ core prints task retries on stdout: with --json, stdout is for the summary alone.
    quiet = output.stdout_to_stderr() if args.json and args.farm else nullcontext()
    with quiet, store, collector:  # a Collector holds the hardware's lock (latbench.locks) while open
        plan = collector.plan(items)
        for run in collector.take_ended_runs():
            output.note(ended_line(run), style="yellow")
        options = describe_options(profile.timed_options)
        output.note(
            f"device {profile.name} ({profile.transport}, {profile.source})\n"
            f"runtime {plan.context.runtime_label}" + (f" ({options})" if options else "")
            + f", {profile.threads} thread(s)"
            + (f" pinned to cores {output.format_cores(profile.cpus)}" if profile.cpus else "")
            + f", format {profile.format}, runner {profile.runner}\n"
            f"protocol: {describe_timing(profile.protocol.timing(), profile.runner)}"
            + f"; {collector.rounds} round(s), shuffled; "
            f"table {plan.context.table_id}\n"
            f"{space.name}: {len(items)} items x {collector.rounds} rounds = "
            f"{len(plan.todo) + plan.already}; already stored {plan.already}; "
            f"to measure {len(plan.todo)} in {len(plan.batches)} batch(es)")
        if args.farm:
            output.note(collector.units_line())
        if not plan.todo:
            report = collector.run(plan)
        else:
            with output.progress() as bar:
                tasks: dict[str, int] = {}

                def on_event(stage: str, done: int, total: int, info: dict) -> None:
                    if stage == "retry":
                        bar.console.print(retry_line(done, total, info), style="yellow")
                        return
                    if stage == "cooling":
                        bar.console.print(f"device at {info['temperature_c']:.0f} C > "
                                          f"{info['limit_c']:.0f} C: waiting to cool", style="yellow")
                        return
                    if stage == "ended":  # a run a killed collection (or farm worker) left behind
                        unit = f"{info['unit']}: " if "unit" in info else ""
                        bar.console.print(unit + ended_line(info["run"]), style="yellow")
                        return
                    if stage == "stopping":  # a farm head's Ctrl-C or SIGTERM
                        bar.console.print(f"{info['by']}: stopping the batches of {total} unit(s); up to "
                                          f"{info['wait_s']:g} s for the models they finished (Ctrl-C "
                                          f"again to leave them)", style="yellow")
                        return
                    if stage not in tasks:
                        label = "exporting" if stage == "export" else "measuring"
                        tasks[stage] = bar.add_task(label, total=total)
                    bar.update(tasks[stage], completed=done, total=total)

                collector.on_event = on_event
                report = collector.run(plan)
        stored_keys = stored_of(store, plan)
    summary = report.to_dict() | {"device": profile.name, "runtime": plan.runtime_label,
                                  "table": plan.context.table_id, "settings_hash": plan.context.settings_hash,
                                  "space": space.name}
    if args.json:
        output.print_json(summary)
    else:
        iqr = summary["median_relative_iqr"]
        output.note(
            f"measured {report.measured}, failed {len(report.failed)}, batches ok {report.batches_ok}, "
            f"failed {report.batches_failed}, {report.wall_s:.1f} s"
            + (f"; median IQR/median {iqr:.1%}, noisy (IQR/median > 10%) {report.noisy} of "
               f"{len(report.relative_iqrs)} measurements" if iqr is not None else "")
            + (f"; max temperature {report.max_temperature_c:.0f} C" if report.max_temperature_c else ""))
        for line in _trust_notes(report, profile):
            output.note(line)
        for line in unit_lines(report):
            output.note(line)
        for unit, info in getattr(report, "units", {}).items():  # a farm's units that dropped out
            if info.get("lost"):
                output.note(f"lost unit {unit}: {info['lost']}; what it had not measured went to the units left")
        for line in _failure_lines(report.failed):
            output.note(line)
    if report.stopped:
        output.note(f"stopped: {report.stopped}")
    if report.unmeasured:
        where = "`failed` in the JSON says" if args.json else "the errors above say"
        output.note(f"{report.unmeasured} of {report.planned} planned measurements were not made; "
                    f"fix what {where}, then re-run the same command to measure only those")
    return exit_code(report, stored_keys)


def stored_of(store: Store, plan: Plan) -> int:
    """How many of the plan's keys have a measurement in the store (of this run or before)."""
    return len({key for key, _ in store.measured(plan.context)} & set(plan.items))


def exit_code(report: Report, stored_keys: int) -> int:
    """1 when the run was left short, so `collect && fit-predictor` stops here. An op that
    fails alone (export, or the runtime rejects it) fails the same way every time: it is
    listed and left out, unless none of the plan's keys is in the store at all; judged by the
    store, not by this run's count, so re-running a finished collection exits as it did."""
    nothing = bool(report.failed) and not stored_keys and report.planned > 0
    return 1 if report.unmeasured or nothing else 0


def _trust_notes(report, profile) -> list[str]:
    """How far to trust the numbers: rounds that disagree (drift between batches, which no
    within-round figure shows) and rounds the stop rule left short of its interval."""
    import numpy as np

    from latbench.measurement import UNSTABLE_ROUND_SPREAD

    lines = []
    spreads = report.round_spreads
    if spreads:
        line = (f"reproducibility: rounds of a key differ by {np.median(spreads):.1%} (median round spread, "
                f"max {max(spreads):.1%}) over {output.plural(len(spreads), 'key')}")
        if report.unstable:
            load = ("" if report.max_load_1m is None else
                    f"; the highest 1-minute load seen was {report.max_load_1m:.1f}"
                    + (f" on {len(report.cpus)} usable cores" if report.cpus else ""))
            line += (f"; {report.unstable} differ by over {UNSTABLE_ROUND_SPREAD:.0%}: the device drifted "
                     f"between batches{load}. Quiet it (or pin cores with cpu_mask; `latbench doctor --device "
                     f"{profile.name}` tells in seconds whether it holds its speed) and compare two "
                     f"collections with benchmarks/stability.py before trusting small differences")
        lines.append(line)
    if report.short_of_ci:
        rel_ci = profile.protocol.rel_ci
        lines.append(f"{report.short_of_ci} measurement(s) reached max_runs or max_time_s before their median was "
                     f"within +-{100 * rel_ci:g}%; raise protocol.max_time_s to time them longer")
    if report.partly_delegated:
        key, how = next(iter(report.partly_delegated.items()))
        lines.append(f"{output.plural(len(report.partly_delegated), 'model')} ran only partly on the delegate "
                     f"and partly on the CPU (the first {key}: {how}), and are stored as measured; "
                     f"`--json` lists them under partly_delegated. Time them with the delegate off, or "
                     f"keep them out of a delegate-only table")
    if report.short_of_protocol:
        lines.append(f"{output.plural(len(report.short_of_protocol), 'model')} kept fewer runs than "
                     f"protocol.runs, or less time than min_time_s (the first {report.short_of_protocol[0]}); "
                     f"check that the profile's runtime_options extra_args do not cap the tool's runs")
    return lines


def retry_line(attempt: int, attempts: int, info: dict) -> str:
    """A failed batch about to be tried again; on a farm, which unit it failed on."""
    where = f" on {info['unit']}" if info.get("unit") else ""
    return f"batch failed{where} ({info['error']}); retry {attempt}/{attempts - 1} in {info['delay_s']:.0f} s"


def ended_line(run: str) -> str:
    """What a collection says of a run it stopped (`latbench.transports.run_journal`)."""
    return f"stopped {run}: nobody would read its results, and it would have disturbed these timings"


def unit_lines(report) -> list[str]:
    """On a farm: which unit measured how much, and how alike the units time the keys two or
    more of them measured (the round spread above mixes that with drift)."""
    import numpy as np

    units = getattr(report, "units", None)
    if not units:
        return []
    line = "units: " + ", ".join(f"{u} measured {i['measured']} in {i['batches']} batch"
                                 + ("" if i["batches"] == 1 else "es") for u, i in units.items())
    gaps = report.unit_gaps
    if gaps:
        line += (f"; on {output.plural(len(gaps), 'key')} measured by 2+ units their medians differ by "
                 f"{np.median(gaps):.1%} (median, max {max(gaps):.1%}); compare them with "
                 f"`latbench lut --unit UNIT` before pooling")
    return [line]


def _failure_lines(failed: dict[str, str], most: int = 10) -> list[str]:
    """One line per distinct error (a phone that went away fails every op the same way),
    naming the op when one failed so and a count with the first op otherwise."""
    by_error: dict[str, list[str]] = {}
    for key, error in failed.items():
        by_error.setdefault(error, []).append(key)
    lines = [f"  failed {keys[0]}: {error}" if len(keys) == 1 else
             f"  failed {len(keys)} items (the first {keys[0]}): {error}"
             for error, keys in list(by_error.items())[:most]]
    if len(by_error) > most:
        rest = sum(len(keys) for keys in list(by_error.values())[most:])
        lines.append(f"  ... and {rest} more with other errors (see --json)")
    return lines
