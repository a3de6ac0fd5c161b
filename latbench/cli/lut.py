"""`latbench lut`: the measured latency table of a device (median over rounds per key)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from latbench.cli import output
from latbench.errors import UsageError

COLUMNS = ["key", "kind", "median_ms", "p10_ms", "p90_ms", "round_spread", "rounds", "count", "rel_iqr", "noisy"]
#: fractions the terminal shows as percents ("round_spread%"); CSV and JSON keep the fractions
PERCENT_COLUMNS = ("round_spread", "rel_iqr")
#: Where each CSV row came from (a CSV has no header block to say it once): the table id names
#: the full settings in `latbench lut --tables`.
CSV_PROVENANCE = ["device", "runtime", "table", "threads"]
EXAMPLES = """\
examples:
  latbench lut --device local                  # a table on the terminal
  latbench lut --device local --csv > local.csv
  latbench lut --device local --json --out local.json
  latbench lut --device local --tables         # the device's tables, newest first
  latbench lut --device local --table 3f9c02ab # an older table (runtime version, settings)

A device has one table per runtime version and measurement settings (threads, protocol,
cores); rows come from the newest table measured with the profile's current settings (else
the newest) unless --table names another by the id --tables prints (a prefix is enough).
median_ms is the median over rounds of each round's median (p10_ms and p90_ms likewise of each
round's p10 and p90), round_spread is (max - min) / median of those round medians (empty for a
key measured in one round only): how far apart repeated measurements of the key came out, the
number to read for reproducibility. rel_iqr is
the median over rounds of each round's IQR / median of its raw samples, noisy is rel_iqr > 10%
(as `collect` counts noisy measurements); both are empty for a table without raw samples
(imported, or a tool that printed statistics only). rounds is how many rounds measured the key,
count how many timed runs they took in all. The terminal shows round_spread and rel_iqr as
percents (as `collect` does); --csv and --json keep fractions (0.023 is 2.3%). --csv adds
device, runtime, table and threads to every row."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="device name, as measured or imported")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="write CSV")
    fmt.add_argument("--json", action="store_true", help="write JSON (rows plus their context)")
    p.add_argument("--kind", choices=["op", "network"], help="only ops or only whole networks")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout (without --csv or "
                   "--json: JSON for a .json name, else CSV)")
    p.add_argument("--table", metavar="ID", help="read this table (default: the newest measured with "
                   "the profile's current settings, else the newest; see --tables)")
    p.add_argument("--unit", metavar="DEVICE@HOST", default=None,
                   help="only what one farm unit measured (default: every unit pooled)")
    p.add_argument("--tables", action="store_true",
                   help="list the device's tables (runtime, settings, keys) instead of rows")


def run(args) -> int:
    from latbench.profiles import DeviceProfile
    from latbench.store import device_table, profile_settings, table_choice_note

    if args.tables:
        return _list_tables(args)
    current = profile_settings(args.device)
    current_hash = DeviceProfile.settings_hash(current) if current is not None else None
    info, rows, n_tables = device_table(args.device, args.table, settings_hash=current_hash, unit=args.unit)
    rows = _with_noise(info.context, rows, args.unit)
    choice = table_choice_note(args.device, info, n_tables, current, picked=args.table is not None)
    if choice:
        output.note(choice)
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
        if not rows:
            how = (f"measure some with `latbench collect --device {args.device} --networks 20`"
                   if info.context.runtime != "imported" else "import them with `latbench import`")
            output.note(f"no {args.kind} rows in table {info.context.table_id} of {args.device!r}"
                        + (f"; {how}" if args.kind == "network" else ""))
    ctx = info.context
    title = (f"{ctx.device}" + (f" (unit {args.unit} alone)" if args.unit else "")
             + f": table {ctx.table_id}, {ctx.runtime_label}{_header(info.settings)}, {output.plural(len(rows), 'key')}")
    provenance = {"device": ctx.device, "runtime": ctx.runtime_label, "table": ctx.table_id,
                  "threads": info.settings.get("threads", "")}
    return _emit(args, title, COLUMNS, rows, lambda: _json(ctx, info.settings, rows, args.unit),
                 f"{len(rows)} rows", csv_extra=provenance, percent=PERCENT_COLUMNS)


def _with_noise(ctx, rows: list[dict], unit: str | None) -> list[dict]:
    """`rows` with rel_iqr (median over rounds of IQR / median of the round's raw samples) and
    noisy (rel_iqr above the noisy threshold); None for keys without raw samples."""
    from latbench import home
    from latbench.measurement import NOISY_IQR_RATIO, Measurement
    from latbench.store import Store

    ratios: dict[str, list[float]] = {}
    with Store(home.db_path()) as store:
        for row in store.rows(ctx, unit=unit):
            samples = store.samples(ctx, row.key, row.round)
            if samples.size:
                ratios.setdefault(row.key, []).append(Measurement(row.key, samples).relative_iqr)
    out = []
    for r in rows:
        rel = float(np.median(ratios[r["key"]])) if r["key"] in ratios else None
        out.append({**r, "rel_iqr": rel, "noisy": None if rel is None else rel > NOISY_IQR_RATIO})
    return out


TABLE_COLUMNS = ["table", "runtime", "setup", "protocol", "ops", "networks", "measurements",
                 "last_measured"]


def _list_tables(args) -> int:
    """Every table of the device, newest first: what --table picks from."""
    import json
    import time

    from latbench.store import device_tables

    if args.table or args.kind or args.unit:
        raise UsageError("--tables lists every table; it takes no --table, --kind or --unit",
                         "drop them, or drop --tables to read one table's rows")
    found = device_tables(args.device)
    rows = [{"table": c.context.table_id, "runtime": c.context.runtime_label,
             "setup": _setup(c.settings),
             "protocol": _protocol(c.settings),  # "" when imported: the runtime names the source
             "ops": c.keys - c.networks, "networks": c.networks, "measurements": c.measurements,
             "last_measured": time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_measured_at))}
            for c in found]
    return _emit(args, f"{args.device}: {output.plural(len(rows), 'table')}, newest first "
                       "(read an older one with --table ID)", TABLE_COLUMNS, rows,
                 lambda: output.json_text([{**r, "settings_hash": c.context.settings_hash, "settings": c.settings}
                                          for r, c in zip(rows, found)]),
                 output.plural(len(rows), "table"))


def _emit(args, title: str, columns: list[str], rows: list[dict], json_text, what: str,
          csv_extra: dict | None = None, percent: tuple[str, ...] = ()) -> int:
    """`rows` as a table on the terminal, or as --json (`json_text()`) or --csv on stdout or
    into --out; `csv_extra` (column -> value) is added to every CSV row; the `percent` columns
    (fractions) show as percents on the terminal."""
    if not (args.json or args.csv or args.out):
        shown = [f"{c}%" if c in percent else c for c in columns]
        output.table(title, shown, [[_percent(r[c]) if c in percent else r[c] for c in columns] for r in rows])
        return 0
    if args.json or (not args.csv and args.out.suffix.lower() == ".json"):
        text = json_text()
    else:
        buf = io.StringIO()
        extra = csv_extra or {}
        writer = csv.DictWriter(buf, fieldnames=columns + list(extra), lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, **extra} for r in rows)
        text = buf.getvalue()
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}",
                             "give --out a file path you can write") from None
        output.note(f"wrote {what} to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _percent(fraction: float | None) -> str | None:
    return None if fraction is None else f"{100 * fraction:.1f}"


def _protocol(settings: dict) -> str:
    """The timing protocol of a collected table in words (rounds are a column); "" for an
    imported one, whose settings name only its source."""
    from latbench.protocol import describe_timing

    protocol = settings.get("protocol")
    return describe_timing(protocol, settings.get("runner")) if isinstance(protocol, dict) else ""


def _setup(settings: dict) -> str:
    """"2 thread(s) pinned to cores 4-7, xnnpack=false": what else sets a table apart."""
    from latbench.profiles import cores_of_mask
    from latbench.protocol import describe_options

    if "threads" not in settings:
        return ""
    text = f"{settings['threads']} thread(s)"
    if settings.get("cpu_mask"):
        text += f" pinned to cores {output.format_cores(cores_of_mask(settings['cpu_mask']))}"
    options = describe_options(settings.get("runtime_options") or {})
    return text + (f", {options}" if options else "")


def _header(settings: dict) -> str:
    """", 1 thread(s), warm-up ..." after the runtime, or "" for an imported table."""
    protocol = _protocol(settings)
    return f", {_setup(settings)}, {protocol}" if protocol else ""


def _json(ctx, settings: dict, rows: list[dict], unit: str | None = None) -> str:
    return output.json_text({"device": ctx.device, "unit": unit, "table": ctx.table_id, "runtime": ctx.runtime,
                             "runtime_version": ctx.runtime_version, "settings_hash": ctx.settings_hash,
                             "settings": settings, "rows": rows})
