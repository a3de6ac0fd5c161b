"""Collection: plan what is missing, export it, measure it batch by batch, store each batch.

Re-running measures only the (key, round) pairs the store lacks under the same
device, runtime version and settings; every finished batch is committed before
the next starts, so an interrupted collection resumes where it stopped.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from latbench.errors import DeviceError, ExportError, Interrupted
from latbench.measurement import NOISY_IQR_RATIO, UNSTABLE_ROUND_SPREAD, Measurement, ReportedMeasurement
from latbench.ops import Network, OpSpec
from latbench.profiles import DeviceProfile
from latbench.store import Context, Store
from latbench.runners.base import BatchItem, BatchOutput, make_runner, runner_applies
from latbench.transports import open_transport

Item = Union[OpSpec, Network]
#: on_event(stage, done, total, info): stage is "export" or "measure" (progress), or "retry",
#: "cooling", "stopping" or "ended" (a run a killed collection left behind, in info["run"]).
EventCallback = Callable[[str, int, int, dict], None]


def kind_of(item: Item) -> str:
    return "network" if isinstance(item, Network) else "op"


@dataclass
class Plan:
    context: Context
    runtime_label: str
    items: dict[str, Item]
    todo: list[tuple[str, int]]
    batches: list[list[tuple[str, int]]]
    already: int
    runner_info: dict


#: How a `run` failure begins when the runner died while timing the model (see `set_aside`).
RUNNER_DIED = "the runner died while timing it, twice"


@dataclass
class Report:
    planned: int = 0
    already: int = 0
    measured: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    batches_ok: int = 0
    batches_failed: int = 0
    wall_s: float = 0.0
    relative_iqrs: list[float] = field(default_factory=list)
    max_temperature_c: float | None = None
    # (key, round) pairs lost to failed batches or never tried: a re-run may measure them. Ops
    # that fail alone (export, or the runtime rejects the model) are in `failed`, not here.
    unmeasured: int = 0
    stopped: str | None = None  # why collection stopped before the end of the plan
    # Reproducibility: per key of the plan measured in 2+ rounds, (max - min) / median of its
    # round medians (as `lut`'s round_spread). Within-round figures (IQR, the stop rule's CI)
    # miss drift between rounds, which on a shared or throttling machine is the larger error.
    round_spreads: list[float] = field(default_factory=list)
    cpus: list | None = None  # the cores the runner reported it could run on
    max_load_1m: float | None = None  # the device's 1-minute load average, highest seen
    # Measurements whose samples' median is not known to within the protocol's rel_ci: the stop
    # rule ran out of max_runs or max_time_s first (0 when rel_ci is 0).
    short_of_ci: int = 0
    # key -> "gpu: partial (5 kernels)": timed partly on the CPU, stored as measured
    partly_delegated: dict[str, str] = field(default_factory=dict)
    # keys whose kept runs fell short of protocol.runs or min_time_s (a tool's own cap)
    short_of_protocol: list[str] = field(default_factory=list)

    @property
    def unstable(self) -> int:
        return sum(1 for r in self.round_spreads if r > UNSTABLE_ROUND_SPREAD)

    @property
    def noisy(self) -> int:
        return sum(1 for r in self.relative_iqrs if r > NOISY_IQR_RATIO)

    def to_dict(self) -> dict:
        return {
            "planned": self.planned, "already_measured": self.already, "measured": self.measured,
            "failed": self.failed, "batches_ok": self.batches_ok, "batches_failed": self.batches_failed,
            "wall_s": round(self.wall_s, 3), "noisy": self.noisy,
            "median_relative_iqr": float(np.median(self.relative_iqrs)) if self.relative_iqrs else None,
            "max_temperature_c": self.max_temperature_c,
            "unmeasured": self.unmeasured, "stopped": self.stopped,
            "median_round_spread": float(np.median(self.round_spreads)) if self.round_spreads else None,
            "max_round_spread": max(self.round_spreads) if self.round_spreads else None,
            "round_spread_over_10pct": self.unstable, "keys_with_rounds": len(self.round_spreads),
            "cpus": self.cpus, "max_load_1m": self.max_load_1m, "short_of_rel_ci": self.short_of_ci,
            "partly_delegated": self.partly_delegated, "short_of_protocol": self.short_of_protocol,
        }


def _disk_full(error: str | None) -> bool:
    """A batch failed for want of space on the device (a retry cannot help)."""
    return bool(error) and ("No space left on device" in error or "ENOSPC" in error)


def plan_batches(missing: Sequence[tuple[str, int]], batch_size: int, seed: int) -> list[list[tuple[str, int]]]:
    """Round by round, each round in its own shuffled order, cut into batches.

    Shuffling spreads drift and heat over all ops instead of biasing those measured last;
    a fresh order per round keeps any one op from always following the same neighbour.
    """
    by_round: dict[int, list[str]] = {}
    for key, rnd in missing:
        by_round.setdefault(rnd, []).append(key)
    batches = []
    for rnd in sorted(by_round):
        keys = sorted(by_round[rnd])
        random.Random(f"{seed}:{rnd}").shuffle(keys)
        for i in range(0, len(keys), batch_size):
            batches.append([(k, rnd) for k in keys[i:i + batch_size]])
    return batches


class Collector:
    """Measures items on one device into one store. Use as a context manager."""

    def __init__(self, profile: DeviceProfile, store: Store, *, rounds: int | None = None,
                 cache_dir: Path | None = None, on_event: EventCallback | None = None, lock: bool = True,
                 lock_wait_s: float = 0.0):
        self.profile = profile
        self.lock = lock  # hold the hardware's lock (latbench.locks) while open
        self.lock_wait_s = lock_wait_s  # how long to wait for a collection that holds it
        self.store = store
        self.rounds = rounds or profile.protocol.rounds
        self.cache_dir = cache_dir
        self.on_event = on_event or (lambda *a: None)
        self.transport = open_transport(profile)
        self.runner = None
        self.sigterm_received = False  # set by the SIGTERM handler while open
        self._run_started_at: float | None = None  # time.time() at the start of the last run

    def __enter__(self) -> "Collector":
        from contextlib import ExitStack

        from latbench.locks import device_lock

        self._stack = ExitStack()
        try:
            self._stop_on_sigterm()
            if self.lock:
                self._stack.enter_context(device_lock(self.profile, wait_s=self.lock_wait_s))
            self.transport.connect()
            self._stack.callback(self.transport.close)
            self.runner = make_runner(self.transport, self.profile)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def take_ended_runs(self) -> list[str]:
        """The runs that collections killed outright had left timing on the device, which this
        one stopped before a command there (`latbench.transports.run_journal`), since the last
        call."""
        ended, self.transport.ended_runs = self.transport.ended_runs, []
        return ended

    def _say_ended_runs(self) -> None:
        for run in self.take_ended_runs():
            self.on_event("ended", 0, 0, {"run": run})

    def _stop_on_sigterm(self, over_ray: bool = False) -> None:
        """While open, SIGTERM (`kill PID`, a job scheduler, systemd) stops collection as Ctrl-C
        does: the runner in flight is killed (here, or on an SSH board through a new channel; an
        adb phone's shell is closed) before the hardware lock is released.
        By default SIGTERM ends this process at once and the runner goes on timing an op, with
        the lock already free, so a collection started next times it as load. A handler set by
        the program that called us is left be; `over_ray`: Ray's is not (a farm head's driver
        exits at once on SIGTERM)."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (a farm or test thread keeps its own)
        previous = signal.getsignal(signal.SIGTERM)
        ours_to_replace = previous in (signal.SIG_DFL, None) or (
            over_ray and getattr(previous, "__module__", "").startswith("ray."))
        if not ours_to_replace:
            return  # someone else's handler: leave it be

        def on_sigterm(signum, frame):
            self.sigterm_received = True
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, on_sigterm)
        self._stack.callback(signal.signal, signal.SIGTERM, previous)

    def plan(self, items: Sequence[Item], runner_info: dict | None = None) -> Plan:
        """What is missing in the store for `items`. `runner_info` (a runner's info()) is asked
        of this collector's runner unless given (the farm asks a device's agent)."""
        from latbench.export import exporter_tag

        info = runner_info if runner_info is not None else self.runner.info()
        runtime_label = self.runner.runtime_version(info)
        settings = self.profile.settings(exporter_tag(self.profile.format))
        ctx = self.store.context(self.profile.name, self.profile.runtime, runtime_label, settings)
        by_key = {item.key: item for item in items}
        done = self.store.measured(ctx)
        wanted = [(k, r) for r in range(self.rounds) for k in by_key]
        todo = [pair for pair in wanted if pair not in done]
        batches = plan_batches(todo, self.profile.protocol.batch_size, self.profile.protocol.seed)
        return Plan(ctx, runtime_label, by_key, todo, batches, len(wanted) - len(todo), info)

    def export_all(self, plan: Plan) -> dict[str, Path]:
        """Model files for every key still to measure; export failures are stored and skipped."""
        from latbench.export import export

        keys = sorted({k for k, _ in plan.todo})
        paths: dict[str, Path] = {}
        for i, key in enumerate(keys):
            try:
                paths[key] = export(plan.items[key], self.profile.format, cache_dir=self.cache_dir)
            except ExportError as exc:
                self.store.record_failure(plan.context, key, "export", exc.message)
            self.on_event("export", i + 1, len(keys), {"key": key})
        return paths

    def run(self, plan: Plan) -> Report:
        start = time.perf_counter()
        report = Report(planned=len(plan.todo), already=plan.already)
        self._forget_set_aside(plan)
        self._say_ended_runs()  # stopped when it connected or planned
        paths = self.export_all(plan)
        self.report_export_failures(plan, paths, report)
        done_items = 0
        batches = [[(k, r) for k, r in batch if k in paths] for batch in plan.batches]
        batches = [b for b in batches if b]
        total = sum(len(b) for b in batches)
        give_up = int(self.profile.retry.get("max_failed_batches", 3))
        failed_in_a_row = 0
        for i, batch in enumerate(batches):
            failed_before = report.batches_failed
            self._run_batch(plan, batch, paths, report)
            done_items += len(batch)
            self.on_event("measure", done_items, total, {"report": report})
            failed_in_a_row = failed_in_a_row + 1 if report.batches_failed > failed_before else 0
            if report.stopped:
                break
            if failed_in_a_row >= give_up and i + 1 < len(batches):
                report.stopped = (f"{give_up} batches in a row failed, so the device looks unreachable or "
                                  f"misconfigured; {len(batches) - i - 1} batch(es) were not tried")
                break
        report.unmeasured = self.count_unmeasured(plan, paths)
        report.round_spreads = self.round_spreads(plan)
        report.wall_s = time.perf_counter() - start
        return report

    def report_export_failures(self, plan: Plan, paths: dict[str, Path], report: Report) -> None:
        """The keys this run tried to export and could not (not those of an earlier run since
        measured)."""
        tried = {k for k, _ in plan.todo}
        for key, (stage, error) in self.store.failures(plan.context).items():
            if stage == "export" and key in tried and key not in paths:
                report.failed[key] = f"export: {error}"

    def _forget_set_aside(self, plan: Plan) -> None:
        """A new run tries again what the last set aside (`set_aside`), remembering why."""
        self._run_started_at = time.time()
        self._given_up: dict[str, str] = {}
        self._failed_before = self.store.failures(plan.context)

    def round_spreads(self, plan: Plan) -> list[float]:
        """Round spread of each key of the plan measured in 2+ rounds (as `lut` shows it)."""
        return [row["round_spread"] for row in self.store.table(plan.context)
                if row["key"] in plan.items and row["round_spread"] is not None]

    def count_unmeasured(self, plan: Plan, paths: dict[str, Path]) -> int:
        """Planned (key, round) pairs still not in the store, of ops that exported and did not
        fail on their own in this run: what a re-run can still measure. An earlier run's
        failure of a key this run could not try (the device unreachable) does not count."""
        done = self.store.measured(plan.context)
        failures = self.store.failures(plan.context, since=self._run_started_at)
        failed_alone = {k for k, (stage, _) in failures.items() if stage == "run"}
        return sum(1 for key, rnd in plan.todo
                   if key in paths and key not in failed_alone and (key, rnd) not in done)

    def _run_batch(self, plan: Plan, batch: list[tuple[str, int]], paths: dict[str, Path],
                   report: Report) -> None:
        """Measure one batch; on a dropped connection or a timeout, reconnect and retry what is
        left with backoff, then record the batch as failed and go on."""
        retry = self.profile.retry
        attempts = int(retry.get("attempts", 3))
        backoff_s = float(retry.get("backoff_s", 2.0))
        max_backoff_s = float(retry.get("max_backoff_s", 60.0))
        remaining = [pair for pair in batch if pair[0] not in self._given_up]
        if not remaining:
            return  # each was set aside in another round's batch (reported there)
        struck: tuple[str, int] | None = None
        for attempt in range(1, attempts + 1):
            temp = self.wait_until_cool(report)
            started = time.time()
            ids = {f"{i}": pair for i, pair in enumerate(remaining)}
            try:
                output = self.runner.run_batch([BatchItem(i, paths[k]) for i, (k, _) in ids.items()])
            except DeviceError as exc:
                output = BatchOutput(start=None, error=str(exc), timed_out=exc.timed_out)
            except Interrupted as exc:  # keep the models the stopped run had finished
                if exc.output is not None:
                    self.store_output(plan, ids, exc.output, started, temp, report)
                raise
            remaining = self.store_output(plan, ids, output, started, temp, report)
            self._say_ended_runs()
            if not remaining:
                report.batches_ok += 1
                return
            if _disk_full(output.error):  # every retry and batch would fail the same way
                report.stopped = (f"the device's disk is full ({output.error}); free space in its work "
                                  f"directory (`latbench doctor --device {self.profile.name}` shows how "
                                  f"much is left), then re-run the same command to measure the rest")
                break
            remaining, struck = self.set_aside(plan, remaining, output, report, struck)
            if not remaining:
                report.batches_ok += 1  # what was left was set aside: everything else was measured
                return
            if attempt < attempts:
                delay = min(backoff_s * 2 ** (attempt - 1), max_backoff_s)
                self.on_event("retry", attempt, attempts, {"error": output.error, "delay_s": delay})
                time.sleep(delay)
                self.reconnect()
        report.batches_failed += 1
        for key, _ in remaining:
            report.failed.setdefault(key, f"run: {output.error}")

    def set_aside(self, plan: Plan, remaining: list[tuple[str, int]], output: BatchOutput, report: Report,
                  struck: tuple[str, int] | None) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
        """The pairs of a stopped batch still worth retrying, and the pair it stopped at.

        Items run in order, so the first one left is the one the batch stopped in. It is set
        aside (a `run` failure; its other rounds in this run are skipped too) when it ran out
        the batch's time (it would cost every retry and round its whole timeout_s), or when the
        runner died while timing it twice in a row, or once after it had done so in an earlier
        run (a model that crashes the runtime would otherwise stop every batch it is in, on every
        re-run, before the items behind it). One death is retried as it is: a lost connection or
        a one-off crash is not the model's fault."""
        if not remaining:
            return remaining, None
        pair = remaining[0]
        key = pair[0]
        if output.timed_out:
            why = (f"did not finish within the batch's timeout_s ({self.profile.timeout_s:g} s): "
                   f"hung, or slower than the profile allows ({output.error})")
        elif output.error is not None and output.start is not None and not output.lost:
            earlier = self._failed_before.get(key, ("", ""))[1].startswith(RUNNER_DIED)
            if pair != struck and not earlier:
                return remaining, pair  # the first death: retry it with the rest
            why = f"{RUNNER_DIED} ({output.error})"
        else:
            return remaining, None
        self.store.record_failure(plan.context, key, "run", why)
        report.failed[key] = f"run: {why}"
        self._given_up[key] = why
        return [p for p in remaining if p[0] != key], None

    def reconnect(self) -> None:
        try:
            self.transport.close()
        except Exception:
            pass
        try:
            self.transport.connect()
            self.runner = make_runner(self.transport, self.profile)
        except DeviceError:
            pass  # the next attempt fails and is counted

    def wait_until_cool(self, report: Report) -> float | None:
        """Device temperature before a batch; above the profile's limit, wait (bounded) to cool."""
        limit = self.profile.thermal.get("max_temp_c")
        if limit is None:
            return None
        try:
            temp = self.runner.state().get("max_temperature_c")
        except DeviceError:
            return None
        deadline = time.monotonic() + float(self.profile.thermal.get("cool_timeout_s", 120))
        poll_s = float(self.profile.thermal.get("poll_s", 5))
        while temp is not None and temp > limit and time.monotonic() < deadline:
            self.on_event("cooling", 0, 0, {"temperature_c": temp, "limit_c": limit})
            time.sleep(poll_s)
            try:
                temp = self.runner.state().get("max_temperature_c")
            except DeviceError:
                break
        if temp is not None:
            report.max_temperature_c = max(temp, report.max_temperature_c or temp)
        return temp

    def store_output(self, plan: Plan, ids: dict[str, tuple[str, int]], output: BatchOutput,
                     started: float, temp: float | None, report: Report,
                     unit: str = "") -> list[tuple[str, int]]:
        """Store what one runner invocation produced (here or on a farm agent); returns the
        (key, round) pairs of `ids` still to measure."""
        state = (output.start or {}).get("state") or {}
        for seen in (state, (output.end or {}).get("state") or {}):
            if isinstance(seen.get("load_1m"), (int, float)):
                report.max_load_1m = max(seen["load_1m"], report.max_load_1m or seen["load_1m"])
        if (output.start or {}).get("cpus"):
            report.cpus = output.start["cpus"]
        if temp is None:
            temp = state.get("max_temperature_c")
        rel_ci = self.profile.protocol.rel_ci
        # the runner's CI stop rule, where it has one (`Runner.applies`): did it get there?
        check_ci = rel_ci > 0 and "rel_ci" in runner_applies(self.profile.runner)
        if check_ci:
            from latbench.runners.pyrunner import median_rel_ci  # the runner's own stop test
        results, remaining, estimated = [], [], {}
        extras: dict[str, dict] = {}  # per key, what the runner said beside the timings
        partial: dict[str, str] = {}  # key -> "gpu: partial (5 kernels)": partly timed on the CPU
        short: list[str] = []  # keys whose kept runs fell short of the protocol
        for position, (bid, (key, rnd)) in enumerate(ids.items()):
            rec = output.results.get(bid)
            if rec is None:
                remaining.append((key, rnd))
                continue
            if not rec.get("ok"):
                self.store.record_failure(plan.context, key, "run", rec.get("error", "unknown"))
                report.failed[key] = f"run: {rec.get('error')}"
                continue
            try:
                m = measurement_from_result(key, rec)
            except (KeyError, ValueError) as exc:
                self.store.record_failure(plan.context, key, "run", f"unreadable result: {exc}")
                report.failed[key] = f"run: unreadable result: {exc}"
                continue
            if getattr(m, "estimated", ()):
                estimated[key] = list(m.estimated)
            extra = {k: v for k, v in (rec.get("extra") or {}).items()
                     if isinstance(v, (str, int, float, bool)) or v is None}  # not op profile tables
            if extra:
                extras[key] = extra
            for name, value in extra.items():
                if name.endswith("_delegated") and str(value).startswith("partial"):
                    partial[key] = f"{name.removesuffix('_delegated')}: {value}"
            if extra.get("protocol_met") is False:
                short.append(key)
            if not np.isnan(m.relative_iqr):  # NaN: the tool printed nothing to tell the spread by
                report.relative_iqrs.append(m.relative_iqr)
            if check_ci and m.samples_ms.size:
                report.short_of_ci += median_rel_ci(m.samples_ms.tolist()) > rel_ci
            results.append((key, rnd, kind_of(plan.items[key]), m,
                            {"position": position, "temperature_c": temp}))
        if output.error is None and not remaining:
            status = "ok"
        else:
            status = "partial" if results else "failed"
        runner_meta = {k: v for k, v in (output.start or {}).items() if k != "state"}
        if estimated:  # figures the tool did not print (see ReportedMeasurement)
            runner_meta["estimated_stats"] = estimated
        if extras:  # per key: delegation, protocol_met, runs kept, init time, ...
            runner_meta["extra"] = extras
        if partial or short:  # the collection's summary says it once (`_trust_notes`)
            import logging

            log = logging.getLogger("latbench.collect")
            if partial:
                runner_meta["partial_delegation"] = partial
                report.partly_delegated.update(partial)
                log.info("%d model(s) ran only partly on the delegate, the rest on the CPU, and are "
                         "stored as measured (e.g. %s, %s); the batch's runner record lists them "
                         "under partial_delegation", len(partial), *next(iter(partial.items())))
            if short:
                runner_meta["protocol_not_met"] = short
                report.short_of_protocol.extend(k for k in short if k not in report.short_of_protocol)
                log.info("%d model(s) kept fewer runs than protocol.runs, or less time than "
                         "min_time_s, and are stored so (e.g. %s); check that runtime_options "
                         "extra_args do not cap the tool's runs", len(short), short[0])
        # what this run stored: a pair another collection stored meanwhile is not counted twice
        report.measured += self.store.save_batch(
            plan.context, results=results, status=status, items=len(ids), started_at=started,
            error=output.error, state_before=state or None, state_after=(output.end or {}).get("state"),
            runner=runner_meta, unit=unit)
        return remaining


def measurement_from_result(key: str, record: dict) -> Measurement | ReportedMeasurement:
    """Raw samples when the runner has them; else the statistics a tool printed."""
    if record.get("samples_ms"):
        return Measurement(key, record["samples_ms"])
    return ReportedMeasurement.from_summary(key, record.get("summary") or {})


def space_items(space, networks: int = 0, limit: int | None = None, seed: int = 0) -> list[Item]:
    """The ops of `space` (the first `limit` of them) plus `networks` seeded whole networks."""
    ops: list[Item] = list(space.ops())
    if limit is not None:
        ops = ops[:limit]
    return ops + list(space.sample_networks(networks, seed=seed)) if networks else ops
