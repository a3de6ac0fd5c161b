"""Collection end to end on this host: plan, export, measure batch by batch, store; resumable,
idempotent, and a killed collection loses no finished batch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import hung_run_timing, listed_runs, python_that_hangs_once, running, signal_when, wait_for  # noqa: E402

from latbench import home  # noqa: E402
from latbench.errors import LatbenchError  # noqa: E402
from latbench.collect import Collector, plan_batches, space_items  # noqa: E402
from latbench.ops import Network, OpSpec  # noqa: E402
from latbench.profiles import load_profile  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from latbench.store import Store  # noqa: E402

SPACE = get_space("fbnet-cifar")


# ---- planning ---------------------------------------------------------------------------

MISSING = [(f"op{i:02d}", r) for r in range(3) for i in range(10)]


def test_plan_covers_each_key_and_round_exactly_once():
    batches = plan_batches(MISSING, batch_size=4, seed=0)
    flat = [pair for b in batches for pair in b]
    assert Counter(flat) == Counter(MISSING)
    assert all(1 <= len(b) <= 4 for b in batches)
    assert all(len({r for _, r in b}) == 1 for b in batches), "a batch mixes rounds"
    assert [b[0][1] for b in batches] == sorted(b[0][1] for b in batches), "rounds out of order"
    assert len(batches) == 3 * 3  # 10 keys per round in batches of 4: 4 + 4 + 2


def test_plan_shuffles_each_round_in_its_own_order():
    batches = plan_batches(MISSING, batch_size=4, seed=0)
    orders = {}
    for b in batches:
        for key, rnd in b:
            orders.setdefault(rnd, []).append(key)
    sorted_keys = sorted(k for k, r in MISSING if r == 0)
    assert all(sorted(o) == sorted_keys for o in orders.values())
    assert any(o != sorted_keys for o in orders.values()), "no shuffling"
    assert len({tuple(o) for o in orders.values()}) == 3, "two rounds share an order"


def test_plan_is_deterministic_for_a_seed():
    assert plan_batches(MISSING, 4, seed=1) == plan_batches(list(reversed(MISSING)), 4, seed=1)
    assert plan_batches(MISSING, 4, seed=1) != plan_batches(MISSING, 4, seed=2)


def test_space_items_takes_the_first_ops_and_seeded_networks():
    items = space_items(SPACE, networks=2, limit=5, seed=0)
    assert items[:5] == SPACE.ops()[:5]
    assert [n.key for n in items[5:]] == [n.key for n in SPACE.sample_networks(2, seed=0)]
    assert all(isinstance(n, Network) for n in items[5:])


# ---- collecting in process --------------------------------------------------------------

def collect(profile_name: str, items, rounds: int | None = None):
    profile = load_profile(profile_name)
    with Store(home.db_path()) as store, Collector(profile, store, rounds=rounds) as collector:
        plan = collector.plan(items)
        report = collector.run(plan)
    return plan, report


def db_rows(sql: str = "SELECT id, key, round, kind, measured_at, median_ms, count FROM measurements"):
    with sqlite3.connect(home.db_path()) as conn:
        return conn.execute(sql + " ORDER BY id").fetchall()


def test_collect_measures_then_measures_nothing_more_then_only_a_new_round(fast_profile):
    import onnxruntime

    items = SPACE.ops()[:3]
    plan, report = collect(fast_profile, items)
    assert plan.runtime_label == f"onnxruntime {onnxruntime.__version__}"
    assert report.measured == 6 and report.failed == {} and report.batches_ok == 2
    rows = db_rows()
    assert {(key, rnd) for _, key, rnd, *_ in rows} == {(op.key, r) for op in items for r in (0, 1)}
    assert all(kind == "op" and count >= 5 and median > 0 for _, _, _, kind, _, median, count in rows)
    # every model file came from the export cache in LATBENCH_HOME
    assert len(list((home.model_cache_dir()).rglob("*.onnx"))) == 3

    plan, report = collect(fast_profile, items)
    assert plan.todo == [] and plan.already == 6 and report.measured == 0
    assert db_rows() == rows

    plan, report = collect(fast_profile, items, rounds=3)
    assert sorted(plan.todo) == sorted((op.key, 2) for op in items)
    assert report.measured == 3
    after = db_rows()
    assert after[:6] == rows and {r[2] for r in after[6:]} == {2}


def test_the_report_says_how_reproducible_the_rounds_were_and_where_they_ran(fast_profile):
    """Round spread (what `lut` shows per key), the cores and the load, in the summary."""
    import numpy as np

    items = SPACE.ops()[:3]
    plan, report = collect(fast_profile, items)  # 2 rounds
    with Store(home.db_path()) as store:
        rows = store.rows(store.latest_context(fast_profile).context)
    spreads = []
    for op in items:
        medians = np.array([r.median_ms for r in rows if r.key == op.key])
        spreads.append((medians.max() - medians.min()) / np.median(medians))
    summary = report.to_dict()
    assert summary["keys_with_rounds"] == 3
    assert summary["median_round_spread"] == pytest.approx(float(np.median(spreads)))
    assert summary["max_round_spread"] == pytest.approx(max(spreads))
    assert summary["round_spread_over_10pct"] == sum(s > 0.10 for s in spreads)
    assert summary["cpus"] == sorted(os.sched_getaffinity(0))
    assert isinstance(summary["max_load_1m"], float)


def test_the_report_counts_measurements_the_stop_rule_left_short_of_rel_ci(make_profile):
    """max_runs 30 cannot pin a median to +-0.01%: every measurement stops short, and says so."""
    name = make_profile("short", protocol={"rel_ci": 0.0001, "max_runs": 30, "max_time_s": 0.5})
    _, report = collect(name, SPACE.ops()[:2])
    assert report.measured == 4 and report.to_dict()["short_of_rel_ci"] == 4


def test_the_summary_says_when_rounds_disagree_and_when_the_stop_rule_fell_short(make_profile):
    from latbench.cli.collect import _trust_notes
    from latbench.collect import Report
    from latbench.profiles import load_profile

    profile = load_profile(make_profile("trust", protocol={"rel_ci": 0.005}))
    quiet = Report(planned=4, already=0, round_spreads=[0.01, 0.03, 0.02])
    assert _trust_notes(quiet, profile) == [
        "reproducibility: rounds of a key differ by 2.0% (median round spread, max 3.0%) over 3 keys"]
    drifting = Report(planned=4, already=0, round_spreads=[0.02, 0.25, 0.30], max_load_1m=2.5, cpus=[0, 1],
                      short_of_ci=3)
    first, second = _trust_notes(drifting, profile)
    assert "2 differ by over 10%: the device drifted between batches; the highest 1-minute load seen was " \
           "2.5 on 2 usable cores" in first
    assert "`latbench doctor --device trust` tells in seconds whether it holds its speed" in first
    assert second.startswith("3 measurement(s) reached max_runs or max_time_s before their median was within +-0.5%")
    assert _trust_notes(Report(planned=1, already=0), profile) == []  # one round: nothing to compare


def test_an_op_that_cannot_be_exported_is_reported_and_the_rest_measured(fast_profile):
    bad = OpSpec("fc", 16, 1, 1, 10, activation="none", dtype="int8")
    items = [SPACE.ops()[3], bad]
    plan, report = collect(fast_profile, items, rounds=1)
    assert report.measured == 1
    assert report.failed[bad.key].startswith("export:")
    with Store(home.db_path()) as store:
        assert store.failures(plan.context)[bad.key][0] == "export"
        assert store.measured(plan.context) == {(SPACE.ops()[3].key, 0)}


def test_cli_networks_stores_network_rows_per_round(warm_home, fast_profile, capsys, monkeypatch):
    from latbench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["latbench"])
    code = main(["collect", "--device", fast_profile, "--limit", "1", "--networks", "2", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["measured"] == 6 and summary["failed"] == {} and summary["space"] == "fbnet-cifar"
    nets = [(key, rnd) for _, key, rnd, kind, *_ in db_rows() if kind == "network"]
    expected = [n.key for n in SPACE.sample_networks(2, seed=0)]
    assert sorted(nets) == sorted((k, r) for k in expected for r in (0, 1))
    assert all(Network.parse_key(k)[0] == "fbnet-cifar" for k, _ in nets)


# ---- the kill test ----------------------------------------------------------------------

LIMIT, BATCH, ROUNDS = 16, 4, 2


def _count(db) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created yet, or busy


def interrupt_after_first_batch(home, name: str, sig: int) -> tuple[subprocess.Popen, str]:
    """Start `latbench collect` in its own process group, send `sig` to the whole group (the
    collect and its runner, as a terminal's Ctrl-C does) once a batch is stored."""
    db = home / "latbench.db"
    argv = [sys.executable, "-m", "latbench", "collect", "--device", name, "--limit", str(LIMIT)]
    log = home / "collect.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while _count(db) < BATCH:
                assert proc.poll() is None, f"collect ended before the signal:\n{log.read_text()}"
                assert time.monotonic() < deadline, "no batch stored within 90 s"
                time.sleep(0.05)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc, log.read_text()


def stored(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, key, round, measured_at, median_ms, batch_id, samples"
                            " FROM measurements ORDER BY id").fetchall()


def check_resumes(db, before: list[tuple], name: str, latbench_cli) -> None:
    """Re-running finishes the job: every (key, round) once, the earlier rows untouched."""
    rerun = latbench_cli("collect", "--device", name, "--limit", str(LIMIT), "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["already_measured"] == len(before)
    assert summary["measured"] == LIMIT * ROUNDS - len(before)
    after = stored(db)
    pairs = [(key, rnd) for _, key, rnd, *_ in after]
    assert len(pairs) == len(set(pairs)) == LIMIT * ROUNDS
    assert set(pairs) == {(op.key, r) for op in SPACE.ops()[:LIMIT] for r in range(ROUNDS)}
    assert after[:len(before)] == before, "rows of finished batches changed"


@pytest.mark.slow
def test_a_killed_collect_loses_no_finished_batch_and_resumes(warm_home, make_profile, latbench_cli):
    name = make_profile("killme", protocol={"batch_size": BATCH, "rounds": ROUNDS})
    proc, _ = interrupt_after_first_batch(warm_home, name, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    db = warm_home / "latbench.db"
    before = stored(db)
    with sqlite3.connect(db) as conn:
        batches = conn.execute("SELECT id, status, items FROM batches").fetchall()
    assert BATCH <= len(before) < LIMIT * ROUNDS, "kill came too late to test anything"
    assert len(before) % BATCH == 0, "a batch was stored in part"
    per_batch = Counter(b for *_, b, _ in before)
    assert all(status == "ok" and per_batch[i] == items for i, status, items in batches)
    check_resumes(db, before, name, latbench_cli)


@pytest.mark.slow
def test_ctrl_c_says_cancelled_keeps_finished_batches_and_resumes(warm_home, make_profile, latbench_cli):
    name = make_profile("ctrlc", protocol={"batch_size": BATCH, "rounds": ROUNDS})
    proc, log = interrupt_after_first_batch(warm_home, name, signal.SIGINT)
    assert proc.returncode == 130, log
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == "latbench: cancelled; everything finished before Ctrl-C is kept"
    before = stored(warm_home / "latbench.db")
    assert BATCH <= len(before) < LIMIT * ROUNDS
    check_resumes(warm_home / "latbench.db", before, name, latbench_cli)


@pytest.fixture
def default_sigterm():
    """SIGTERM's handler as `latbench collect` finds it (a ray.init earlier in this test process
    leaves its own, which a collection does not replace)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_ctrl_c_test_whose_run_never_came_fails():
    """signal_when still interrupts (the test must not hang), but the test fails: a Ctrl-C that
    came with no run there tests nothing."""
    with pytest.raises(pytest.fail.Exception, match="did not hold within 0.2 s"):
        with signal_when(lambda: False, timeout_s=0.2), pytest.raises(KeyboardInterrupt):
            time.sleep(30)


@pytest.mark.parametrize("sig, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_in_a_batch_keeps_the_models_it_had_finished(warm_home, make_profile, tmp_path, sig, by,
                                                              default_sigterm):
    """A stopped run's finished models are stored (status partial); the one it was on is not.
    The batch's error says which stopped it."""

    name = make_profile("ctrlc-mid", protocol={"batch_size": 3, "rounds": 1})
    profile = load_profile(name)
    printed = tmp_path / "printed"
    marker = f"6{time.time() % 1000:.4f}"  # the sleep's own argument, to look for it after
    lines = [json.dumps({"event": "start", "runtime": "onnxruntime", "threads": 1})]
    lines += [json.dumps({"id": f"{i}", "ok": True, "samples_ms": [1.0 + i, 1.1 + i, 1.2 + i]})
              for i in range(2)]  # models 0 and 1 finished; model 2 is running when Ctrl-C comes
    script = (f"printf '%s\\n' {' '.join(repr(line) for line in lines)}; "
              f"printf '{{\"id\": \"2\", \"ok\"'; touch {printed}; exec sleep {marker}")
    with Store(home.db_path()) as store, Collector(profile, store) as collector:
        plan = collector.plan(SPACE.ops()[:3])
        real_run = collector.transport.run
        collector.transport.run = lambda argv, timeout_s: real_run(["sh", "-c", script], timeout_s)

        started = time.monotonic()
        with signal_when(printed, sig), pytest.raises(KeyboardInterrupt):
            collector.run(plan)
        assert time.monotonic() - started < 20, "the stopped run was waited for"
        first, second, third = plan.batches[0]
        assert store.measured(plan.context) == {first, second}
    assert db_rows("SELECT key, median_ms FROM measurements") == [(first[0], 1.1), (second[0], 2.1)]
    with sqlite3.connect(home.db_path()) as conn:
        assert conn.execute("SELECT status, items, error FROM batches").fetchall() == [
            ("partial", 3, f"stopped by {by}")]
    assert not running(f"sleep {marker}")


# ---- a device that stays down, and two collections at once ------------------------------

class _DownRunner:
    """A runner whose device never answers: every batch fails as a dropped link does."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run_batch(self, items):
        from latbench.errors import DeviceError

        raise DeviceError("lost the connection to the device (test)")


def test_batches_failing_in_a_row_stop_the_collection(make_profile, monkeypatch):
    import latbench.collect as collect_module

    real = collect_module.make_runner
    monkeypatch.setattr(collect_module, "make_runner", lambda *a, **k: _DownRunner(real(*a, **k)))
    name = make_profile("down", protocol={"batch_size": 1, "rounds": 1},
                        retry={"attempts": 2, "backoff_s": 0, "max_failed_batches": 2})
    plan, report = collect(name, SPACE.ops()[:5])
    assert (report.measured, report.batches_failed, report.unmeasured) == (0, 2, 5)
    assert "2 batches in a row failed" in report.stopped and "3 batch(es) were not tried" in report.stopped


def test_cli_arch_measures_just_that_network(warm_home, fast_profile, capsys, monkeypatch):
    from latbench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["latbench"])
    network = SPACE.sample_networks(1, seed=0)[0]  # in the warm cache
    arch = network.arch
    text = "-".join(str(c) for c in arch)
    assert main(["collect", "--device", fast_profile, "--arch", text, "--arch", text.replace("-", ","),
                 "--rounds", "1", "--json"]) == 0  # the same arch twice is one network
    summary = json.loads(capsys.readouterr().out)
    assert (summary["planned"], summary["measured"]) == (1, 1)
    with Store(home.db_path()) as store:
        keys = {k for k, _ in store.measured(store.latest_context(fast_profile).context)}
    assert keys == {network.key}
    assert main(["collect", "--device", fast_profile, "--arch", "1-2"]) == 2
    assert "--arch: an arch of fbnet-cifar is 22 candidate indices" in capsys.readouterr().err
    assert main(["collect", "--device", fast_profile, "--arch", text, "--limit", "3"]) == 2


def test_a_model_that_hangs_mid_batch_is_set_aside_and_the_rest_measured(make_profile, monkeypatch):
    """The batch times out in its third model: the two before it are kept, the third is
    recorded as failed on its own, and the retry measures the ones behind it."""
    import latbench.collect as collect_module
    from latbench.runners.base import BatchOutput

    real = collect_module.make_runner
    sent = []

    def hangs_once(*a, **k):
        runner = real(*a, **k)
        run_batch = runner.run_batch

        def run(items):
            sent.append([it.id for it in items])
            if len(sent) > 1:
                return run_batch(items)
            done = run_batch(items[:2])  # the first two finish, then the third hangs
            return BatchOutput(start=done.start, results=done.results, timed_out=True,
                               error="python took longer than 120 s on hang; killed")
        runner.run_batch = run
        return runner

    monkeypatch.setattr(collect_module, "make_runner", hangs_once)
    name = make_profile("hang", protocol={"batch_size": 5, "rounds": 1}, retry={"attempts": 2, "backoff_s": 0})
    items = SPACE.ops()[:5]
    plan, report = collect(name, items)
    hung = plan.batches[0][2][0]
    assert report.measured == 4 and set(report.failed) == {hung}, report.failed
    assert "did not finish within the batch's timeout_s" in report.failed[hung]
    assert [len(s) for s in sent] == [5, 2] and report.batches_failed == 0
    with Store(home.db_path()) as store:
        assert store.failures(plan.context)[hung][0] == "run"
        assert {k for k, _ in store.measured(plan.context)} == {op.key for op in items} - {hung}


def _dies_at(monkeypatch, bad_key: str, sent: list, lost: bool = False):
    """Runners whose batch stops at `bad_key` (the runtime crashing on it, or with `lost` a
    connection dropping there), after timing the items before it."""
    import latbench.collect as collect_module
    from latbench.runners.base import BatchOutput

    real = collect_module.make_runner

    def make(*a, **k):
        runner = real(*a, **k)
        run_batch = runner.run_batch

        def run(items):
            keys = [collector_key[it.path] for it in items]
            sent.append(keys)
            if bad_key not in keys:
                return run_batch(items)
            done = run_batch(items[:keys.index(bad_key)]) if keys.index(bad_key) else BatchOutput(start={})
            error = "connection lost" if lost else "runner exited with -11 before finishing the batch: Segmentation fault"
            return BatchOutput(start=done.start or {}, results=done.results, error=error, lost=lost)
        runner.run_batch = run
        return runner

    collector_key: dict = {}
    monkeypatch.setattr(collect_module, "make_runner", make)
    return collector_key


def test_a_model_that_crashes_the_runner_is_set_aside_after_two_deaths_and_the_rest_measured(
        make_profile, monkeypatch):
    from latbench.collect import RUNNER_DIED
    from latbench.export import export

    items = SPACE.ops()[:5]
    bad = items[2].key
    sent: list = []
    paths = _dies_at(monkeypatch, bad, sent)
    name = make_profile("crash", protocol={"batch_size": 5, "rounds": 2}, retry={"attempts": 3, "backoff_s": 0})
    profile = load_profile(name)
    for op in items:
        paths[export(op, profile.format)] = op.key
    plan, report = collect(name, items)
    assert set(report.failed) == {bad} and report.failed[bad].startswith(f"run: {RUNNER_DIED}")
    assert report.measured == 8 and report.unmeasured == 0  # 4 ops x 2 rounds: none blocked behind it
    # round 0: died at it, died again, then the rest; round 1 skips it: it is set aside
    assert [bad in s for s in sent] == [True, True, False, False] and len(sent[3]) == 4
    with Store(home.db_path()) as store:
        assert store.failures(plan.context)[bad] == ("run", report.failed[bad][len("run: "):])
    # the next run tries it again, once: a model that died twice before is set aside at once
    sent.clear()
    _, again = collect(name, items)
    assert sent == [[bad]] and set(again.failed) == {bad}  # round 1's batch skipped it too


def test_a_connection_lost_at_the_same_model_is_not_blamed_on_it(make_profile, monkeypatch):
    from latbench.export import export

    items = SPACE.ops()[:3]
    bad = items[1].key
    sent: list = []
    paths = _dies_at(monkeypatch, bad, sent, lost=True)
    name = make_profile("flaky", protocol={"batch_size": 3, "rounds": 1}, retry={"attempts": 3, "backoff_s": 0})
    for op in items:
        paths[export(op, load_profile(name).format)] = op.key
    plan, report = collect(name, items)
    assert len(sent) == 3 and report.failed[bad] == "run: connection lost"  # retried every time
    # it and the ops behind it are left for a re-run: nothing was set aside
    assert report.unmeasured == len(items) - report.measured > 0
    with Store(home.db_path()) as store:
        assert store.failures(plan.context) == {}


def test_an_export_failure_of_an_op_measured_since_is_neither_kept_nor_reported(fast_profile):
    op = SPACE.ops()[3]
    plan, _ = collect(fast_profile, [op], rounds=1)
    with Store(home.db_path()) as store:
        store.record_failure(plan.context, op.key, "export", "No space left on device")
    again_plan, again = collect(fast_profile, [op], rounds=1)  # nothing to export: all measured
    assert again.failed == {} and again_plan.todo == []
    _, more = collect(fast_profile, [op], rounds=2)  # measured again: the old failure is cleared
    with Store(home.db_path()) as store:
        assert more.failed == {} and store.failures(plan.context) == {}


def test_failures_with_one_error_are_one_line():
    from latbench.cli.collect import _failure_lines

    down = "run: nothing accepts adb connections at 10.0.0.5:5555"
    failed = {f"op{i}": down for i in range(9)} | {"bad": "export: int8 fc"}
    assert _failure_lines(failed) == [f"  failed 9 items (the first op0): {down}", "  failed bad: export: int8 fc"]
    many = {f"op{i}": f"error {i}" for i in range(12)}
    assert _failure_lines(many)[-1] == "  ... and 2 more with other errors (see --json)"


def test_a_full_disk_stops_the_collection_at_once_instead_of_retrying(make_profile, monkeypatch):
    import latbench.collect as collect_module
    from latbench.errors import DeviceError

    class _FullRunner(_DownRunner):
        def run_batch(self, items):
            raise DeviceError("pushing op.onnx: write failed: No space left on device")

    real = collect_module.make_runner
    monkeypatch.setattr(collect_module, "make_runner", lambda *a, **k: _FullRunner(real(*a, **k)))
    retries = []
    name = make_profile("full", protocol={"batch_size": 1, "rounds": 1},
                        retry={"attempts": 3, "backoff_s": 0, "max_failed_batches": 3})
    with Store(home.db_path()) as store, Collector(load_profile(name), store) as collector:
        collector.on_event = lambda stage, *a: retries.append(stage) if stage == "retry" else None
        report = collector.run(collector.plan(SPACE.ops()[:4]))
    assert (report.measured, report.batches_failed, report.unmeasured) == (0, 1, 4) and not retries
    assert report.stopped.startswith("the device's disk is full (pushing op.onnx: write failed: No space")
    assert "latbench doctor --device full" in report.stopped


def test_cli_collect_left_short_exits_1_and_says_how_to_finish(warm_home, make_profile, monkeypatch, capsys):
    import latbench.collect as collect_module
    from latbench.cli.main import main

    real = collect_module.make_runner
    calls = []

    def flaky(*a, **k):  # the first runner works for one batch, then the device is gone
        runner = real(*a, **k)
        if calls:
            return _DownRunner(runner)
        calls.append(1)
        run_batch = runner.run_batch

        def once(items):
            runner.run_batch = _DownRunner(runner).run_batch
            return run_batch(items)
        runner.run_batch = once
        return runner

    monkeypatch.setattr(collect_module, "make_runner", flaky)
    monkeypatch.setattr(sys, "argv", ["latbench"])
    name = make_profile("flaky", protocol={"batch_size": 2, "rounds": 1}, retry={"attempts": 1})
    code = main(["collect", "--device", name, "--limit", "6", "--json"])
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert code == 1, out.err
    assert (summary["measured"], summary["unmeasured"], summary["batches_failed"]) == (2, 4, 2)
    assert "4 of 6 planned measurements were not made" in " ".join(out.err.split())


def test_lock_holder_only_looks(fast_profile):
    from latbench.locks import device_lock, lock_holder, lock_path

    profile = load_profile(fast_profile)
    assert lock_holder(profile) is None  # never locked: no file yet
    with device_lock(profile):
        assert lock_holder(profile) == f"latbench pid {os.getpid()}, device {fast_profile}"
    path = lock_path(profile)
    path.write_text("left by an earlier run")
    assert lock_holder(profile) is None and path.read_text() == "left by an earlier run"  # nothing written
    with device_lock(profile):  # and a collection can take it right after
        pass


def test_one_phone_is_one_lock_however_its_address_is_spelt(make_profile):
    from latbench.locks import hardware_name

    names = {hardware_name(load_profile(make_profile(f"phone{i}", transport="adb", runner="python",
                                                     connection={"address": address})))
             for i, address in enumerate(("10.0.0.5", "10.0.0.5:5555"))}
    assert names == {"adb-10.0.0.5-5555"}
    other = load_profile(make_profile("phone9", transport="adb", runner="python",
                                      connection={"address": "10.0.0.5:5556"}))
    assert hardware_name(other) == "adb-10.0.0.5-5556"
    usb = load_profile(make_profile("phoneusb", transport="adb", runner="python",
                                    connection={"address": "10.0.0.5", "usb": True, "serial": "8XV7N"}))
    assert hardware_name(usb) == "adb-usb-8XV7N"  # usb: true connects over USB, whatever the address


def test_a_second_collection_on_the_same_hardware_is_refused(warm_home, fast_profile, capsys, monkeypatch):
    from latbench.cli.main import main
    from latbench.locks import device_lock, hardware_name

    assert hardware_name(load_profile("local")) == hardware_name(load_profile("local-tflite"))
    monkeypatch.setattr(sys, "argv", ["latbench"])
    with device_lock(load_profile("local")):
        code = main(["collect", "--device", fast_profile, "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"is being measured already, by latbench pid {os.getpid()}, device local" in err
    assert main(["collect", "--device", fast_profile, "--limit", "1", "--rounds", "1"]) == 0  # freed
    other_home = warm_home.parent / "second-home"  # another store, the same host: still refused
    monkeypatch.setenv("LATBENCH_HOME", str(other_home))
    with device_lock(load_profile("local")):
        assert main(["collect", "--device", "local", "--limit", "1"]) == 1
    assert "is being measured already" in capsys.readouterr().err


def test_the_collect_header_and_the_tables_name_cores_and_runtime_options(warm_home, make_profile, capsys, monkeypatch):
    from latbench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["latbench"])
    name = make_profile("pinned", connection={"cpu_mask": "1"}, protocol={"rounds": 1},
                        runtime_options={"spinning": False})
    assert main(["collect", "--device", name, "--limit", "1"]) == 0
    err = capsys.readouterr().err
    assert " (spinning=false), 1 thread(s) pinned to cores 0, format onnx" in err
    assert "protocol: warm-up >= 2 runs and 0 s; timed >= 5 runs and 0 s (max 50)" in err
    assert main(["lut", "--device", name, "--tables", "--json"]) == 0  # what sets the table apart
    assert json.loads(capsys.readouterr().out)[0]["setup"] == "1 thread(s) pinned to cores 0, spinning=false"


def test_cli_collect_where_every_op_fails_alone_exits_1(warm_home, make_profile, monkeypatch, capsys):
    import latbench.collect as collect_module
    from latbench.cli.main import main
    from latbench.runners.base import BatchOutput

    class Rejecting(_DownRunner):  # the runtime loads nothing: each op fails on its own
        def run_batch(self, items):
            return BatchOutput(start={}, end={}, results={
                it.id: {"id": it.id, "ok": False, "error": "unsupported op"} for it in items})

    real = collect_module.make_runner
    monkeypatch.setattr(collect_module, "make_runner", lambda *a, **k: Rejecting(real(*a, **k)))
    monkeypatch.setattr(sys, "argv", ["latbench"])
    name = make_profile("rejects", protocol={"rounds": 1})
    code = main(["collect", "--device", name, "--limit", "3", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary["measured"] == 0 and len(summary["failed"]) == 3
    assert summary["unmeasured"] == 0  # nothing a re-run would measure: each op failed alone


def _rejects(monkeypatch, bad_path: Path) -> None:
    """Runners on which the runtime rejects the model at `bad_path` alone, and times the rest."""
    import latbench.collect as collect_module
    from latbench.runners.base import BatchOutput

    real = collect_module.make_runner

    def make(*a, **k):
        runner = real(*a, **k)
        run_batch = runner.run_batch

        def run(items):
            good = [it for it in items if it.path != bad_path]
            done = run_batch(good) if good else BatchOutput(start={}, end={})
            rejected = {it.id: {"id": it.id, "ok": False, "error": "unsupported op"}
                        for it in items if it.path == bad_path}
            return BatchOutput(start=done.start, end=done.end, results={**done.results, **rejected},
                               error=done.error)
        runner.run_batch = run
        return runner

    monkeypatch.setattr(collect_module, "make_runner", make)


def test_cli_collect_rerun_with_an_op_that_fails_alone_exits_as_the_first_run(warm_home, make_profile,
                                                                             monkeypatch, capsys):
    """The first run measures the rest and exits 0; re-running it (nothing new to measure, the
    same op rejected again) must exit 0 too, or `collect && fit-predictor` stops on a store
    that is as complete as it gets. It exited 1: 'nothing measured' counted this run only."""
    from latbench.cli.main import main
    from latbench.export import export

    monkeypatch.setattr(sys, "argv", ["latbench"])
    name = make_profile("rejects-one", protocol={"rounds": 1})
    bad = SPACE.ops()[1]
    _rejects(monkeypatch, export(bad, load_profile(name).format))
    codes, summaries = [], []
    for _ in range(2):
        codes.append(main(["collect", "--device", name, "--limit", "3", "--json"]))
        summaries.append(json.loads(capsys.readouterr().out))
    assert [s["measured"] for s in summaries] == [2, 0]
    assert all(set(s["failed"]) == {bad.key} and s["unmeasured"] == 0 for s in summaries)
    assert codes == [0, 0]


def test_an_earlier_runs_failure_does_not_hide_pairs_this_run_never_measured(make_profile, monkeypatch):
    """A model set aside in an earlier run is tried again; when this run cannot reach the device,
    its pairs are unmeasured (a re-run may measure them), not 'failed alone' by the old record."""
    import latbench.collect as collect_module

    name = make_profile("stale", protocol={"batch_size": 2, "rounds": 1},
                        retry={"attempts": 1, "backoff_s": 0, "max_failed_batches": 3})
    items = SPACE.ops()[:2]
    collect(name, items[:1])
    with Store(home.db_path()) as store, Collector(load_profile(name), store) as collector:
        plan = collector.plan(items)
        store.record_failure(plan.context, items[1].key, "run", "did not finish within the batch's timeout_s")
    real = collect_module.make_runner
    monkeypatch.setattr(collect_module, "make_runner", lambda *a, **k: _DownRunner(real(*a, **k)))
    plan, report = collect(name, items)
    assert plan.todo == [(items[1].key, 0)] and report.measured == 0
    assert report.failed[items[1].key].startswith("run: lost the connection")
    assert report.unmeasured == 1


def test_the_hardware_lock_waits_when_asked_and_refuses_otherwise():
    import threading

    from latbench.errors import LatbenchError
    from latbench.locks import device_lock

    profile = load_profile("local")
    held, release = threading.Event(), threading.Event()

    def hold():  # as a farm unit holds it for one batch
        with device_lock(profile):
            held.set()
            release.wait(10)
    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    with pytest.raises(LatbenchError, match="being measured already"):
        with device_lock(profile):
            pass
    started = time.monotonic()  # before the timer: a host that stalls between the two cannot shorten `waited`
    threading.Timer(0.3, release.set).start()
    with device_lock(profile, wait_s=10):  # the next unit's batch waits its turn
        waited = time.monotonic() - started
        assert release.is_set()  # taken only once the holder let go
    holder.join()
    assert 0.3 <= waited < 5


def test_the_journal_lists_a_holders_runs_and_stops_only_those_of_gone_collections(make_profile, tmp_path,
                                                                                  monkeypatch):
    from latbench.locks import device_lock, lock_path
    from latbench.transports.run_journal import RunJournal, run_label

    monkeypatch.setenv("LATBENCH_LOCK_DIR", str(tmp_path / "locks"))  # a journal of its own
    profile = load_profile(make_profile("journaled", timeout_s=600))
    journal, listed = RunJournal(profile), lambda: [e["mark"] for e in listed_runs(profile)]
    runs_file = lock_path(profile).with_suffix(".runs")
    mark, other, unknown = ("41", "900", "boot-a"), ("42", "901", "boot-a"), ("43", "-", "boot-a")
    journal.add(mark, "python3 pyrunner.py")
    assert listed() == []  # not the lock's holder: it lists nothing
    gone = subprocess.Popen(["true"])
    gone.wait()  # a collection that ended (killed) without seeing its run end
    asked = []

    def end(m, strict):
        asked.append((m, strict))
        return "ended\n"
    with device_lock(profile):
        journal.add(mark, "python3 pyrunner.py")
        journal.add(unknown, "sh batch.sh")  # no start time: a later process could have its pid
        assert listed() == [list(mark)]
        assert journal.end_left(end, "a board") == [] and asked == []  # its owner, this process, runs
        journal.remove(mark)
        assert listed() == []
        now = time.time()
        runs_file.write_text(json.dumps([
            {"mark": list(other), "owner": gone.pid, "device": "journaled", "command": "sh batch.sh", "started": now},
            {"mark": list(mark), "owner": gone.pid, "device": "journaled", "command": "x", "started": now - 3600}]))
        assert journal.end_left(lambda m, strict: None, "a board") == [] and len(listed()) == 2  # unsent: kept
        assert journal.end_left(end, "a board") == [
            f"pid 42 on a board (sh batch.sh), left behind by latbench pid {gone.pid} (device journaled)",
            f"pid 41 on a board (x), left behind by latbench pid {gone.pid} (device journaled)"]
        assert asked == [(other, False), (mark, True)]  # listed an hour ago: only its leader, if there
        assert listed() == []
        runs_file.write_text(json.dumps([{"mark": list(mark), "owner": gone.pid, "started": now}]))
        assert journal.end_left(lambda m, strict: "", "a board") == [] and listed() == []  # nothing was left
    runs_file.write_text("{not json")
    with device_lock(profile):
        assert journal.end_left(end, "a board") == []  # unreadable: nothing listed
        with pytest.raises(LatbenchError, match="being measured already"):
            with device_lock(profile):  # a refused second try leaves the holder holding
                pass
        journal.add(mark, "y")
        assert listed() == [list(mark)]
    assert run_label(["/opt/venv/bin/python3", "/home/me/.latbench/work/pyrunner.py", "run", "b.json"]) == \
        "python3 pyrunner.py"


@pytest.mark.skipif(not shutil.which("setsid") or not os.path.exists("/proc/self/stat"),
                    reason="needs setsid and Linux /proc")
def test_a_strict_kill_spares_a_session_whose_leader_is_gone():
    """A run listed long ago is ended only if its leader is there with its start time: by then a
    session with the same number, leader gone, may be anything."""
    from latbench.transports.local import LocalTransport

    marker = f"5{time.time() % 1000:.4f}"
    leader = subprocess.run(["setsid", "sh", "-c", f"sleep {marker} >/dev/null 2>&1 & echo $$"],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert running(f"sleep {marker}")  # a session whose leader has exited
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        transport = LocalTransport(load_profile("local"))
        assert transport._end((leader, "1", boot), strict=True) == "" and running(f"sleep {marker}")
        assert transport._end((leader, "1", boot)) == "ended\n"  # a fresh listing: the session is the run's
        assert wait_for(lambda: not running(f"sleep {marker}"), 10, "the session's end")
    finally:
        subprocess.run(["pkill", "-f", f"sleep {marker}"])


def test_a_lock_file_removed_meanwhile_makes_its_holder_no_holder(make_profile, tmp_path, monkeypatch):
    """A /tmp cleaner removing the lock lets another process take a new one: then neither may
    stop runs, since the other's could be live."""
    from latbench.locks import device_lock, held_lock_path, lock_path

    monkeypatch.setenv("LATBENCH_LOCK_DIR", str(tmp_path / "locks"))
    profile = load_profile(make_profile("cleaned"))
    with device_lock(profile):
        assert held_lock_path(profile) == lock_path(profile)
        lock_path(profile).unlink()
        assert held_lock_path(profile) is None
        lock_path(profile).touch()  # another process's new lock
        assert held_lock_path(profile) is None
    assert held_lock_path(profile) is None


def test_the_lock_file_is_never_opened_through_a_link(tmp_path):
    from latbench.errors import LatbenchError
    from latbench.locks import device_lock, hardware_name

    folder = tmp_path / "locks"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / f"{hardware_name(load_profile('local'))}.lock").symlink_to(victim)
    with pytest.raises(LatbenchError, match="cannot open the lock file"):
        with device_lock(load_profile("local"), folder):
            pass
    assert victim.read_text() == "precious\n"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")  # a folder that is a link: refused
    with pytest.raises(LatbenchError, match="is not a folder of this user"):
        with device_lock(load_profile("local"), tmp_path / "linked"):
            pass


def _runners(pid: int) -> list[int]:
    """Children of `pid` that time a batch (`pyrunner.py run ...`; not its `info` or `state`)."""
    try:
        children = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []
    found = []
    for child in children:
        try:
            argv = open(f"/proc/{child}/cmdline").read().split("\0")
        except OSError:
            continue
        if "run" in argv and any(a.endswith("pyrunner.py") for a in argv):
            found.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_sigterm_stops_the_runner_too_and_says_cancelled(warm_home, make_profile):
    """`kill PID` of a collect (a scheduler's stop) must not leave its runner timing on, unlocked."""
    name = make_profile("termme", protocol={"batch_size": 3, "rounds": 1, "runs": 5, "min_time_s": 4.0,
                                            "max_runs": 10_000_000})
    argv = [sys.executable, "-m", "latbench", "collect", "--device", name, "--limit", "3"]
    log = warm_home / "collect.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                                start_new_session=True)
        runner = []
        try:
            deadline = time.monotonic() + 60
            while not runner:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no runner started within 60 s"
                runner = _runners(proc.pid)
                time.sleep(0.05)
            time.sleep(2.0)  # the runner has imported its runtime and is timing the first op (4 s)
            os.kill(proc.pid, signal.SIGTERM)  # the collect alone, not its process group
            proc.wait(timeout=30)
            time.sleep(0.3)
            assert not any(_alive(c) for c in runner), "the runner outlived its collect"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for c in runner:
                if _alive(c):
                    os.kill(c, signal.SIGKILL)
    assert proc.returncode == 130, log.read_text()
    assert "latbench: cancelled" in log.read_text()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_a_run_a_killed_collect_left_behind_is_stopped_by_the_next_collect(warm_home, make_profile, tmp_path,
                                                                           capsys, monkeypatch):
    """SIGKILL (or the OOM killer) gives a collect no chance to stop its run, which has a session
    of its own: the next collection stops it before it measures, and says so."""
    from latbench.cli.main import main

    marker = f"8{time.time() % 1000:.4f}"
    python = python_that_hangs_once(tmp_path, marker)
    name = make_profile("killed", python=str(python), protocol={"rounds": 1})
    argv = [sys.executable, "-m", "latbench", "collect", "--device", name, "--limit", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        left = hung_run_timing(marker, load_profile(name), proc)
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.3)
        assert running(f"sleep {marker}") == left  # it times on
        monkeypatch.setattr(sys, "argv", ["latbench"])
        assert main(["collect", "--device", name, "--limit", "1"]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert re.search(rf"stopped pid \d+ on this host \(python-that-hangs-once pyrunner.py\), left behind by "
                         rf"latbench pid {proc.pid} \(device {name}\): nobody would read its results", err), err
        assert running(f"sleep {marker}") == []
        assert listed_runs(load_profile(name)) == []  # its own run, ended, is not listed either
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-f", f"sleep {marker}"])
