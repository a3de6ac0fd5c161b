"""`latbench doctor`: can this device be measured? One row per check, each failure with its fix."""

from __future__ import annotations

import argparse
import math

from latbench.cli import output

EXAMPLES = """\
examples:
  latbench doctor --device local
  latbench doctor --device rpi4 --json

Checks: the profile, reachability and authentication, the runtime and its version on the
device, cores, CPU governors and frequencies, temperatures against the profile's limit,
free space in the device's work directory, and steadiness: one fbnet block timed in 5
separate runs 0.5 s apart with the profile's protocol, as a collection's rounds are (a few
seconds, plus exporting the block once, and on trtexec building its engine once; --no-probe
skips it), holding the hardware's lock as a collection does. Runs that disagree by over 10%
mean the device changes speed and a collection's rounds will disagree too; slower drift (heat,
another job starting) shows only in the collection's own reproducibility line. Exit code 1
when a check fails. While a collection measures the device, the checks are skipped (they would
disturb its timings)."""

MIN_FREE_BYTES = 200 * 1024 * 1024
#: The checks that read the device's description (`Transport.device_info`), in table order.
DEVICE_INFO_CHECKS = ("cores", "governor", "temperature", "free space")
#: The checks that need a connection, in table order.
INFO_CHECKS = ("runtime", *DEVICE_INFO_CHECKS, "steadiness")


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="device profile name")
    p.add_argument("--trust-new-host", action="store_true",
                   help="SSH: accept and remember the host key of a board never connected to before")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the steadiness check (it times one op on the device for a few seconds)")


def diagnose(profile, trust_new_host: bool = False, probe: bool = True) -> list[dict]:
    """Run every check in order; a failed connection skips the checks that need one. The
    checks start the runtime on the device, so while a collection measures it (it holds the
    hardware's lock, latbench.locks) they are skipped instead of disturbing its timings. The
    lock is only looked at, not kept: a collection started meanwhile is not refused (it
    connects and exports before it measures)."""
    from latbench.locks import busy_message, lock_holder

    holder = lock_holder(profile)
    if holder:
        return busy_rows(profile, busy_message(profile, holder))
    return _diagnose(profile, trust_new_host, probe)


def busy_rows(profile, message: str) -> list[dict]:
    check, status, detail, fix = home_row()
    rows = [{"check": "profile", "status": "ok", "fix": "",
             "detail": f"{profile.source} ({profile.transport}, {profile.runner}, {profile.runtime})"},
            {"check": check, "status": status, "detail": detail, "fix": fix},
            {"check": "busy", "status": "warn", "detail": message,
             "fix": "re-run doctor when that collection has finished: its checks start the runtime "
                    "on the device and would disturb the timings"}]
    rows += [{"check": check, "status": "skipped", "detail": "a collection is measuring the device",
              "fix": ""} for check in ("reachable", "auth") + INFO_CHECKS]
    return rows


def _diagnose(profile, trust_new_host: bool, probe: bool) -> list[dict]:
    from latbench.errors import DeviceError, LatbenchError
    from latbench.runners.base import make_runner
    from latbench.transports import open_transport

    rows: list[dict] = []

    def add(check: str, status: str, detail: str, fix: str = "") -> None:
        rows.append({"check": check, "status": status, "detail": detail, "fix": fix})

    add("profile", "ok", f"{profile.source} ({profile.transport}, {profile.runner}, {profile.runtime})")
    add(*home_row())
    if profile.format == "tflite":  # models are converted here, whatever the device
        add(*converter_row())
    transport = open_transport(profile)
    if trust_new_host:
        transport.trust_new_host = True
    where = getattr(transport, "where", "this host")
    try:
        transport.connect()
    except DeviceError as exc:
        # The ssh/adb transports say how far they got: a refused login or host key means it answered.
        stage = getattr(exc, "stage", "reach")
        if stage == "setup":  # reached and logged in; the work directory or a tool is wrong
            add("reachable", "ok", f"{profile.transport} {where}")
            add("auth", "ok", "logged in")
            add("work dir", "FAIL", exc.message, exc.hint or "")
            for check in INFO_CHECKS:
                add(check, "skipped", "the device is not set up")
            return rows
        if stage == "not_tried":  # failed on this host before any contact (a missing key file)
            add("reachable", "skipped", f"not tried: {profile.transport} {where} needs the fix below first")
            add("auth", "FAIL", exc.message, exc.hint or "")
            for check in INFO_CHECKS:
                add(check, "skipped", "not logged in")
            return rows
        answered = stage != "reach"
        if answered:
            add("reachable", "ok", f"{profile.transport} {where} answered")
        add("auth" if answered else "reachable", "FAIL", exc.message, exc.hint or "")
        for check in (() if answered else ("auth",)) + INFO_CHECKS:
            add(check, "skipped", "not logged in" if answered else "device not reachable")
        return rows
    try:
        add("reachable", "ok", "this host" if profile.transport == "local" else f"{profile.transport} {where}")
        trusted = getattr(transport, "trusted_new_key", None)
        add("auth", "ok", "not needed" if profile.transport == "local" else
            "logged in" + (f"; trusted and remembered the new host key {trusted}" if trusted else ""))
        if getattr(transport, "workdir_exec", None) is False:
            add(*noexec_row(profile, transport.workdir))
        try:
            info = transport.device_info()
        except (DeviceError, NotImplementedError) as exc:
            info = {}
            add("device info", "FAIL", str(exc) or "not available", "check the transport")
        runtime_ok = False
        try:  # a tool runner refuses a profile it cannot serve (its runtime, a missing binary)
            runner = make_runner(transport, profile)
            add("runtime", "ok", f"{runner.runtime_version(runner.info())} ({profile.runner} runner)")
            runtime_ok = True
        except LatbenchError as exc:
            add("runtime", "FAIL", exc.message, exc.hint or "")
        if info:
            add("device", "ok", f"{info.get('model') or '?'}; {info.get('os') or ''}".strip("; "))
            cores = info.get("cores")
            usable = len(profile.cpus) if profile.cpus else len(info.get("online_cpus") or []) or cores
            if not cores:
                add("cores", "warn", "unknown", "cannot read the core count")
            elif usable and profile.threads > usable:  # threads that share cores time each other
                add("cores", "warn", f"{cores}; threads: {profile.threads} is more than the {usable} it may use",
                    f"set threads: {usable} or fewer")
            else:
                add("cores", "ok", str(cores))
            if profile.cpus:
                add(*cpu_mask_row(profile, info))
            govs = sorted(set((info.get("governors") or {}).values()))
            freqs = info.get("frequencies_khz") or {}
            detail = (f"{', '.join(govs) or 'unknown'}; "
                      + (f"{min(freqs.values()) / 1e3:.0f}-{max(freqs.values()) / 1e3:.0f} MHz" if freqs else "no cpufreq"))
            steady = not govs or set(govs) <= {"performance", "userspace"}
            add("governor", "ok" if steady else "warn", detail,
                "" if steady else "set the governor to performance for steadier numbers")
            temps = info.get("temperatures_c") or {}
            limit = profile.thermal.get("max_temp_c")
            if temps:
                hottest = max(temps.values())
                hot = limit is not None and hottest > limit
                add("temperature", "warn" if hot else "ok",
                    f"max {hottest:.0f} C over {len(temps)} zone(s)" + (f", limit {limit} C" if limit else ""),
                    "let the device cool; collection waits for it" if hot else "")
            else:
                add("temperature", "warn",
                    "no thermal zones readable: temperatures are not recorded"
                    + (", and max_temp_c cannot make collection wait to cool" if limit is not None else ""),
                    "none on a VM or container (it has no sensors); elsewhere, make "
                    "/sys/class/thermal/thermal_zone*/temp readable to the device's user")
            free = info.get("free_bytes")
            if free is not None:
                low = free < MIN_FREE_BYTES
                add("free space", "FAIL" if low else "ok", f"{free / 2**20:.0f} MiB in {transport.workdir}",
                    "free space or set connection.workdir elsewhere" if low else "")
            else:
                add("free space", "warn", f"cannot read the free space in {transport.workdir}",
                    "check that `df` works on the device")
        else:
            for check in DEVICE_INFO_CHECKS:
                add(check, "skipped", "no device info")
        if not probe:
            add("steadiness", "skipped", "not run (--no-probe)")
        elif not runtime_ok:
            add("steadiness", "skipped", "the runtime does not start")
        else:
            add(*steadiness_row(runner, profile))
    finally:
        transport.close()
    return rows


def home_row() -> tuple[str, str, str, str]:
    """The store and the model cache live in the home: `collect` refuses to start without it."""
    from latbench import home
    from latbench.errors import LatbenchError

    try:
        return ("home", "ok", str(home.writable_home()), "")
    except LatbenchError as exc:
        return ("home", "FAIL", exc.message, exc.hint or "")


def steadiness_row(runner, profile) -> tuple[str, str, str, str]:
    """Time the probe op in separate runs (`latbench.probe`): rounds that disagree now will
    disagree in a collection, and it only says so when it is over. The probe holds the
    hardware's lock, as a collection does: one started meanwhile waits for it or is refused,
    instead of timing beside it."""
    from latbench.errors import LatbenchError
    from latbench.export import export
    from latbench.locks import HardwareBusy, device_lock
    from latbench.measurement import UNSTABLE_ROUND_SPREAD
    from latbench.probe import PROBE_ROUNDS, ProbeError, probe_op, run_probe

    op = probe_op()
    try:
        path = export(op, profile.format)
    except LatbenchError as exc:
        return ("steadiness", "warn", f"not run: the probe model could not be made: {exc.message}",
                exc.hint or "")
    except Exception as exc:  # the exporter's own failure (torch, onnx): one row, not a traceback
        return ("steadiness", "warn", f"not run: the probe model could not be made: "
                f"{type(exc).__name__}: {exc}",
                f"`latbench --debug collect --device {profile.name} --limit 1` shows the whole error")
    try:
        with device_lock(profile):
            result = run_probe(runner, path, op.key, PROBE_ROUNDS)
    except HardwareBusy as exc:
        return ("steadiness", "skipped", f"the device was taken meanwhile: {exc.message}", "")
    except (ProbeError, LatbenchError, OSError) as exc:
        return ("steadiness", "FAIL", f"{op.key} did not time on the device: {exc}",
                "fix what the error names: a collection's ops would fail the same way")
    medians = result.medians_ms
    detail = (f"{op.key} in {len(medians)} separate runs ({result.wall_s:.1f} s): medians "
              f"{min(medians):.3g}-{max(medians):.3g} ms, spread between runs (max - min) / median "
              f"{result.round_spread:.1%}; within a run IQR/median "
              + (f"{result.relative_iqr:.1%}" if math.isfinite(result.relative_iqr) else
                 "unknown (the runner printed no spread)"))
    if result.estimated:
        detail += (f" ({profile.runner} printed no samples: {', '.join(result.estimated)} estimated from "
                   "what it printed)")
    stopped, runner.transport.ended_runs = runner.transport.ended_runs, []
    if stopped:  # it would have timed beside the probe
        detail += "; first " + "; ".join(f"stopped {run}" for run in stopped)
    if result.steady:
        return ("steadiness", "ok", detail, "")
    return ("steadiness", "warn", detail + f": over {UNSTABLE_ROUND_SPREAD:.0%}, the device changes speed "
            "between runs, and a collection's rounds will disagree as much",
            "stop other work on the device, keep it cool, set the governor to performance, pin cores "
            "(connection.cpu_mask); on a shared VM it is the neighbours: raise protocol.rounds and "
            "compare two collections with benchmarks/stability.py")


def noexec_row(profile, workdir: str) -> tuple[str, str, str, str]:
    """A work directory on a noexec mount (/sdcard, /storage on Android): models and the bundled
    Python runner are read from it, but a tool pushed there (binary_local, or the work
    directory's bin/) cannot start."""
    detail = f"{workdir} is on a filesystem mounted noexec (as /sdcard is on Android)"
    fix = (f"set connection.workdir in {profile.source or profile.name} to a directory under "
           "/data/local/tmp, e.g. /data/local/tmp/latbench")
    if profile.runner == "python":
        return ("work dir", "ok", detail + "; fine for the python runner", "")
    if profile.runtime_options.get("binary_local"):
        return ("work dir", "FAIL", detail + f": the {profile.runner} that binary_local pushes there "
                "cannot run", fix)
    return ("work dir", "warn", detail + f": a {profile.runner} in its bin/ cannot run (one elsewhere, "
            "such as /data/local/tmp/, can)", fix)


def converter_row() -> tuple[str, str, str, str]:
    """.tflite models are made on this host by litert-torch: without it every op of a
    collection fails to export, so say it before."""
    import importlib.util

    from latbench.errors import ExportError
    from latbench.tflite import INSTALL_HINT, converter_version

    try:
        version = converter_version()
        if importlib.util.find_spec("litert_torch") is None:
            raise ExportError("litert-torch is installed but cannot be imported", INSTALL_HINT)
    except ExportError as exc:
        return ("converter", "FAIL", f"{exc.message} (on this host, which makes the .tflite models)",
                exc.hint or INSTALL_HINT)
    return ("converter", "ok", f"{version} (on this host)", "")


def cpu_mask_row(profile, info: dict) -> tuple[str, str, str, str]:
    """connection.cpu_mask against the device's cores: a mask naming a core it lacks fails
    every batch later (`cannot pin to cores ...`), so say it here."""
    wanted = profile.cpus
    mask = profile.connection.get("cpu_mask")
    online = info.get("online_cpus")
    have = sorted(set(range(info["cores"])) | set(online or ())) if info.get("cores") else online
    if have is None:
        return ("cpu mask", "warn", f"pinned to cores {output.format_cores(wanted)} (mask {mask}); cannot read "
                "the device's cores", "check that the cores exist on the device")
    if profile.transport == "local" and online:  # this host: online_cpus is this process's affinity
        outside = sorted(set(wanted) - set(online))
        if outside:
            return ("cpu mask", "FAIL",
                    f"connection.cpu_mask {mask} names cores {output.format_cores(outside)}, but latbench "
                    f"may only run on cores {output.format_cores(online)} here (its CPU affinity: "
                    "taskset, a container's cpuset or a job scheduler)",
                    f"fix connection.cpu_mask in {profile.source or profile.name} (e.g. "
                    f"{format(sum(1 << c for c in online), 'x')} for cores {output.format_cores(online)}), "
                    "or start latbench with those cores allowed")
    missing = sorted(set(wanted) - set(have))
    offline = sorted(set(wanted) - set(online)) if online else []
    if not missing and offline:  # a phone parks big cores when idle or hot; they come back
        every = len(offline) == len(wanted)
        return ("cpu mask", "FAIL" if every else "warn",
                f"pinned to cores {output.format_cores(wanted)} (mask {mask}); cores "
                f"{output.format_cores(offline)} are offline now (online: {output.format_cores(online)})"
                + (": every run would fail to pin" if every else
                   ": runs would use fewer cores than pinned until they come back"),
                "wake the device and keep it cool (it parks cores when idle or hot), then check again")
    if missing:
        return ("cpu mask", "FAIL",
                f"connection.cpu_mask {mask} names cores {output.format_cores(missing)}, but the device has "
                f"cores {output.format_cores(have)}",
                f"fix connection.cpu_mask in {profile.source or profile.name} (a hex mask of cores "
                f"{output.format_cores(have)}, e.g. {format(sum(1 << c for c in have), 'x')} for all), or "
                "remove it")
    return ("cpu mask", "ok", f"pinned to cores {output.format_cores(wanted)} (mask {mask}) of "
            f"{output.format_cores(have)}", "")


def run(args) -> int:
    from latbench.errors import LatbenchError
    from latbench.profiles import load_profile

    try:
        profile = load_profile(args.device)
    except LatbenchError as exc:
        if not args.json:
            raise  # the CLI prints it as one line on stderr
        # A script reading --json gets the failed check, not an empty stdout.
        output.print_json([{"check": "profile", "status": "FAIL", "detail": exc.message,
                            "fix": exc.hint or ""}])
        return exc.exit_code
    rows = diagnose(profile, trust_new_host=args.trust_new_host, probe=not args.no_probe)
    if args.json:
        output.print_json(rows)
    else:
        from rich.text import Text

        colour = {"ok": "green", "FAIL": "red", "warn": "yellow", "skipped": "dim"}
        output.table(f"doctor: {args.device}", ["check", "status", "detail", "fix"],
                     [[r["check"], Text(r["status"], style=colour[r["status"]]), r["detail"], r["fix"]]
                      for r in rows])
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0
