"""`latbench import`: store latencies measured elsewhere, to fit a predictor for that device."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from latbench.cli import output

SCHEMA = """\
CSV schema (--format csv): a header row, then one row per measurement:
  median_ms   required (or latency_ms): milliseconds, batch 1
  the item, one of:
    key                  op key (fbnet_block:1x16x32x32:c24:k3:s1:e1:g1:relu:float32)
                         or network key (net:fbnet-cifar:0-8-3-...)
    kind,cin,h,w,cout    an op by its fields; optional kernel, stride, expansion, groups
                         (default 1), activation (relu for conv_bn_relu/fbnet_block, else
                         none), dtype (float32)
    space,arch           a whole network; arch = candidate indices split by ' ', '-' or ','
  optional: p10_ms, p90_ms, mean_ms, std_ms, count, round
  A key listed again without a round column is another round (the median is kept); a
  (key, round) listed twice is an error, and so are field cells beside a key that name
  another op. Column names are lower case; a misspelt one (strid, Median_ms) or another
  unit (median_us) is an error, other columns are ignored.

Other formats:
  hwnasbench  HW-NAS-Bench FBNet blocks (device,op,h,w,cin,cout,expansion,kernel,stride,
              groups,latency_ms); --source-device picks the device's rows
  help        HELP whole networks (arch + one column per device, ms); --column picks one,
              --space names the archs' space (default fbnet-cifar, that of HELP's own file);
              a GPU's _32 and _64 columns are batches of 32 and 64 (latbench's ops are batch 1)

examples:
  latbench import ../shared/data/fbnet-hwnasbench/blocks.csv --device raspi4 --source-device raspi4
  latbench import ../shared/data/fbnet-help/networks.csv --device pixel2 --column pixel2
  latbench import my-phone.csv --device myphone
  latbench fit-predictor --device raspi4 --space fbnet-imagenet   # --space: whose coverage to report

Rows are stored with runtime "imported" and the source label as runtime version (e.g.
hwnasbench-raspi4). fit-predictor and lut read one table (runtime, version and settings) of
a device: the one --table names, else the newest measured with the device profile's current
settings, else the newest. To fit ops and whole networks of one device together, import both
files with the same --source LABEL. An import that would make a new table for a device that
already has one is refused (nothing is stored) unless --alongside is given;
`latbench lut --device NAME --tables` lists a device's tables."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                       epilog=SCHEMA, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="CSV file to import")
    p.add_argument("--device", required=True, help="device name to store the rows under")
    p.add_argument("--format", choices=["csv", "hwnasbench", "help"], default=None,
                   help="file format (default: detected from the header)")
    p.add_argument("--source-device", help="hwnasbench: the device whose rows to import")
    p.add_argument("--column", help="help: the latency column to import (e.g. pixel2)")
    p.add_argument("--space", default="fbnet-cifar", help="help: the space of the archs (default fbnet-cifar)")
    p.add_argument("--source", metavar="LABEL",
                   help="source label stored as the runtime version (default: from the format)")
    p.add_argument("--alongside", action="store_true",
                   help="store the rows even though DEVICE already has measurements from another "
                        "runtime or source (a second table of DEVICE: read it with --table "
                        "in fit-predictor and lut)")
    p.add_argument("--dry-run", action="store_true", help="parse and report, store nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


#: No whole table of real ops is this fast: below it, the values are likely in seconds.
TINY_MS = 0.01


def run(args) -> int:
    from latbench import home, importers
    from latbench.ops import is_network_key
    from latbench.profiles import DeviceProfile
    from latbench.store import Context, Store

    importers.check_name(args.device, "device name")
    result = importers.read(args.file, args.format, source_device=args.source_device,
                            column=args.column, space=args.space, source=args.source)
    settings = {"source": result.source}
    summary = {"device": args.device, "format": result.format, "source": result.source,
               "file": str(args.file), "rows": len(result.rows), "ops": result.ops,
               "networks": result.networks, "details": result.details, "stored_new": 0,
               "dry_run": bool(args.dry_run)}
    if not args.alongside and home.db_path().exists():  # a --dry-run says so too
        with Store(home.db_path()) as store:
            _check_no_other_table(store, Context(args.device, "imported", result.source,
                                                 DeviceProfile.settings_hash(settings)))
    if not args.dry_run:
        home.writable_home()
        with Store(home.db_path()) as store:
            ctx = store.context(args.device, runtime="imported", runtime_version=result.source,
                                settings=settings)
            stored = {(r.key, r.round): r.median_ms for r in store.rows(ctx)}
            summary["stored_new"] = store.save_imported(ctx, result.rows, source=str(args.file))
            kept = [r for r in result.rows if (r["key"], r.get("round", 0)) in stored]
            summary["already_stored"] = len(kept)
            summary["already_stored_differing"] = sum(
                1 for r in kept if not math.isclose(stored[(r["key"], r.get("round", 0))], r["median_ms"],
                                                    rel_tol=1e-9, abs_tol=1e-12))
            summary["settings_hash"] = ctx.settings_hash
            summary["ops_in_context"] = len({k for k, _ in store.measured(ctx) if not is_network_key(k)})
    if args.json:
        output.print_json(summary)
        return 0
    verb = "parsed" if args.dry_run else "imported"
    output.note(f"{verb} {output.plural(len(result.rows), 'row')} ({output.plural(result.ops, 'op')}, "
                f"{output.plural(result.networks, 'network')}) from {args.file} (format {result.format}) for "
                f"device {args.device} as source {result.source}"
                + ("; nothing stored (--dry-run)" if args.dry_run else f"; {summary['stored_new']} new"))
    largest_ms = max((r["median_ms"] for r in result.rows), default=None)
    if largest_ms is not None and largest_ms < TINY_MS:
        output.note(f"note: every median_ms is below {TINY_MS:g} ms (the largest is {largest_ms:.3g}): if the "
                    "file holds seconds or another unit, convert it to milliseconds and import it again "
                    "under another --device")
    if result.details.get("summed"):
        output.note(f"note: HELP's {result.details['column']} column is the sum of HW-NAS-Bench's block "
                    "table, not a measurement of whole networks: a network correction fitted on it only "
                    "learns that sum (import HW-NAS-Bench's blocks.csv for the ops)")
    if result.details.get("batch"):
        column, batch = result.details["column"], result.details["batch"]
        base = column.rsplit("_", 1)[0]
        output.note(f"note: HELP's {column} column times a batch of {batch} images, and latbench's ops and "
                    f"networks are batch 1: fitted beside batch-1 ops, the correction would scale them by "
                    f"about {batch}x. For batch-1 latency import {base}_1 under another --device")
    if result.details.get("ignored_columns"):
        output.note(f"ignored columns (not in the schema): {', '.join(result.details['ignored_columns'])}")
    if not args.dry_run and summary["already_stored_differing"]:
        output.note(f"note: already stored for {args.device} as source {result.source}, and kept as "
                    f"stored: {output.plural(summary['already_stored'], 'row')} (same key and round), "
                    f"{summary['already_stored_differing']} with another median_ms than this file; an "
                    f"import never overwrites: to store the new values, import them under another name "
                    f"(--device {args.device}-2), or give the repeats rounds of their own (round column)")
    elif not args.dry_run and summary["already_stored"]:
        output.note(f"already stored, with the same values: {output.plural(summary['already_stored'], 'row')}")
    if not args.dry_run:
        hint = (f"fit a predictor: latbench fit-predictor --device {args.device}"
                if summary["ops_in_context"]
                else f"these are whole networks only: a predictor needs the device's ops too (import "
                     f"them with --source {result.source}); the networks alone cannot make one")
        output.note(hint)
    return 0


def _check_no_other_table(store, ctx) -> None:
    """Refuse an import that would start a second table: fit-predictor and lut read one table
    of a device (for one without a profile, the newest: a small CSV would hide the rest)."""
    from latbench.errors import UsageError

    tables = store.contexts(ctx.device)
    newest = tables[0] if tables else None
    if newest is None or newest.context == ctx:  # nothing there yet, or adding to the newest table
        return
    older = next((t for t in tables if t.context == ctx), None)
    if older is not None:  # an older table of the device (made with --alongside)
        raise UsageError(
            f"device {ctx.device!r} has {len(tables)} tables, and this import adds to table "
            f"{older.context.table_id} ({older.context.runtime_label}), older than table "
            f"{newest.context.table_id} ({newest.context.runtime_label}): it would become the newest, "
            "and fit-predictor and lut would read it instead",
            f"pass --alongside to add to it anyway (then read table {newest.context.table_id} "
            "with --table)")
    same_tool = newest.context.runtime == "imported"
    raise UsageError(
        f"device {ctx.device!r} already has {output.plural(newest.keys, 'key')} measured with "
        f"{newest.context.runtime_label} (table {newest.context.table_id}); this import "
        "would start a second table, and fit-predictor and lut read one",
        (f"pass --source {newest.context.runtime_version} to add to that table, " if same_tool else "")
        + f"import under another name (--device {ctx.device}-{ctx.runtime_version}), "
          "or pass --alongside to store it anyway")
