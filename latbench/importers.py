"""Import latencies measured elsewhere: CSV files -> store rows (``Store.save_imported``).

Three formats. ``latbench import FILE --device NAME`` detects which one from the header,
or takes ``--format``.

``csv``: latbench's own schema. One row per measurement, a header row, comma-separated:

    median_ms   required (``latency_ms`` is accepted as its name); milliseconds, batch 1
    and the item, in one of three ways:
      key                an op key (``fbnet_block:1x16x32x32:c24:k3:s1:e1:g1:relu:float32``)
                         or a network key (``net:fbnet-cifar:0-8-3-...``)
      kind, cin, h, w, cout [, kernel, stride, expansion, groups, activation, dtype]
                         an op by its fields (defaults: 1, 1, 1, 1, an avgpool's kernel
                         its map h; activation relu for conv_bn_relu and fbnet_block, none
                         otherwise; float32)
      space, arch        a whole network: a space name and its candidate indices
                         separated by spaces, '-' or ','
    optional: p10_ms, p90_ms, mean_ms, std_ms, count (timed runs), round

  A key listed again without a ``round`` column counts as another round; the store keeps
  the median over rounds; one (key, round) listed twice is an error. Any bad row stops the
  import (nothing stored) with its line number. A column that looks like a misspelt schema
  column (``strid``, ``Median_ms``), another tool's name for a field (``kernel_size``,
  ``expand_ratio``) where the rows have no key, a column named twice, or a latency in another
  unit (``median_us``) is an error; other columns (notes, say) are ignored, and the summary
  lists them. A row with a key may also fill the field (or space and arch) cells, as
  ``latbench lut --csv`` does; they must then name the same op (or network).

``hwnasbench``: HW-NAS-Bench's FBNet block table (``device, op, h, w, cin, cout, expansion,
kernel, stride, groups, latency_ms``). ``--source-device`` picks the rows of one device
(raspi4, edgegpu, ...); they are stored under ``--device``. Rows map onto the ops of
latbench's FBNet spaces: ``fbnet_block`` (groups from its column), ``skip`` (identity when
cin == cout and stride 1, else a 1x1 projection; no activation), ``conv_bn_relu`` (stem and
head), ``avgpool`` (global; its kernel is the map size) and ``fc`` (h, w empty).

``help``: HELP's whole-network table (``arch`` = 22 candidate indices separated by spaces,
then one column per device setting, in ms). ``--column`` picks the column (pixel2,
raspi4, ...); each row becomes the network ``net:<space>:<arch>`` of ``--space``
(default fbnet-cifar). A GPU's ``_32`` and ``_64`` columns time a batch of 32 or 64 images;
they import (``details["batch"]``) with a note, since latbench's ops are batch 1.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from latbench.errors import LatbenchError, UsageError, did_you_mean
from latbench.ops import KINDS, Network, OpSpec, is_network_key

FORMATS = ("csv", "hwnasbench", "help")
HWNASBENCH_COLUMNS = ("device", "op", "h", "w", "cin", "cout", "expansion", "kernel", "stride",
                      "groups", "latency_ms")
OPTIONAL_STATS = ("p10_ms", "p90_ms", "mean_ms", "std_ms")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Largest whole number a cell may hold: floats are exact to 2**53, and SQLite stores 64 bits.
MAX_WHOLE = 2 ** 53


class ImportFormatError(LatbenchError):
    """A file to import does not follow its format."""


class WrongFormatError(ImportFormatError, UsageError):
    """The file is of another format than --format names: a usage error (exit code 2)."""


@dataclass
class Imported:
    """Rows ready for `Store.save_imported`, and where they came from."""

    rows: list[dict]
    format: str
    source: str  # the label stored as runtime_version
    details: dict = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return sum(1 for r in self.rows if r["kind"] == "op")

    @property
    def networks(self) -> int:
        return sum(1 for r in self.rows if r["kind"] == "network")


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value or ""):
        raise UsageError(f"bad {what} {value!r}", "use letters, digits, '.', '_' and '-'")
    return value


def _read(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", "check the file name") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Count lines, not offsets: the codec's offsets skip a byte-order mark.
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ImportFormatError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} on line "
                                f"{line})", "save it as a UTF-8 CSV file") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise ImportFormatError(f"{path} is empty or has no header row",
                                "the first line must name the columns (see `latbench import --help`)")
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:  # csv keeps the last of them: the other cells would be dropped unseen
        raise ImportFormatError(f"{path}: the header names column {repeated[0]!r} more than once",
                                "keep one column of each name")
    reader.fieldnames = header

    def rows():
        for row in reader:
            i = reader.line_num  # the file's line (the last of a row whose quoted cell spans lines)
            extra = row.get(None)
            if extra and any(str(v).strip() for v in extra):
                raise ImportFormatError(
                    f"{path} line {i}: {len(header) + len(extra)} cells, but the header names "
                    f"{len(header)} columns (extra: {', '.join(repr(v) for v in extra[:3])})",
                    "name every column in the header, or quote cells that hold a ','")
            yield i, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}

    return header, rows()


def detect_format(path: Path) -> str:
    header, _ = _read(path)
    cols = set(header)
    if set(HWNASBENCH_COLUMNS) <= cols:
        return "hwnasbench"
    if "arch" in cols and "space" not in cols and not ({"median_ms", "latency_ms"} & cols):
        return "help"
    return "csv"


def _format_hint(path: Path) -> str:
    return (f"its header reads as --format {detect_format(path)}: drop --format to detect it "
            "(see `latbench import --help` for the formats)")


def read(path: Path, fmt: str | None = None, *, source_device: str | None = None,
         column: str | None = None, space: str = "fbnet-cifar", source: str | None = None) -> Imported:
    """Parse `path` in format `fmt` (detected when None) into store rows."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "hwnasbench":
        result = read_hwnasbench(path, source_device)
    elif fmt == "help":
        result = read_help(path, column, space)
    elif fmt == "csv":
        result = read_generic(path)
    else:
        raise UsageError(f"unknown import format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if source:
        result.source = check_name(source, "source label")
    if not result.rows:
        raise ImportFormatError(f"{path}: no rows to import", "check the file and the chosen device/column")
    return result


# ---- latbench CSV ---------------------------------------------------------------------------

#: Every column of the latbench CSV schema (see the module docstring).
CSV_COLUMNS = ("key", "kind", "cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups",
               "activation", "dtype", "space", "arch", "median_ms", "latency_ms", *OPTIONAL_STATS,
               "count", "round")
#: Columns that make the key or the value: a misspelt one would be ignored and the row read
#: wrong (stride 1 for a stride-2 op), so a near miss of these is an error.
_KEY_COLUMNS = ("key", "kind", "cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups",
                "activation", "dtype", "space", "arch", "median_ms", "latency_ms", "round")
#: Columns other tables carry that are ignored as they are: what `latbench lut --csv` adds
#: (rounds is its round count, not a round index) and common statistics.
_KNOWN_OTHER = ("rounds", "round_spread", "rel_iqr", "noisy", "device", "runtime", "table", "threads",
                "min_ms", "max_ms", "unit", "source", "notes")
#: Other names for the schema's columns: read as unknown (ignored), the ops would all get the
#: default (kernel 1, stride 1, ...) and distinct ops would be merged under one wrong key.
_ALIASES = {"p50_ms": "median_ms", "p50": "median_ms", "median": "median_ms", "latency": "median_ms"}
#: ... of the fields that give an op: refused where the rows have no key column (with one, the
#: key gives the op and such a column is only information).
_FIELD_ALIASES = {
    **dict.fromkeys(("k", "ks", "ksize", "kernel_size", "kernel_h", "kh"), "kernel"),
    **dict.fromkeys(("s", "strides", "stride_h", "stride_size"), "stride"),
    **dict.fromkeys(("e", "t", "expand", "expand_ratio", "expansion_ratio", "exp_ratio"),
                    "expansion"),
    **dict.fromkeys(("g", "group", "num_groups", "n_groups"), "groups"),
    **dict.fromkeys(("act", "activation_fn", "nonlinearity"), "activation"),
    **dict.fromkeys(("precision", "data_type", "datatype"), "dtype"),
    **dict.fromkeys(("c_in", "in_channels", "cin_", "input_channels"), "cin"),
    **dict.fromkeys(("c_out", "out_channels", "output_channels"), "cout"),
    **dict.fromkeys(("op", "op_type", "op_kind"), "kind"),
}
_OTHER_UNIT = re.compile(r"^(median|latency|p10|p90|mean|std)(_?(us|ns|s|sec|secs|seconds|micros))$",
                         re.IGNORECASE)


def _check_generic_header(path: Path, header: list[str]) -> list[str]:
    """Columns of `header` latbench ignores; a likely typo, a unit other than ms or another
    delimiter is an error, since its values would be read wrong or not at all."""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "';'" if ";" in header[0] else "a tab"
        raise ImportFormatError(f"{path}: its header is one column, separated by {sep}",
                                "save it as comma-separated CSV, with '.' as the decimal point")
    ignored = []
    for col in header:
        if col in CSV_COLUMNS:
            continue
        unit = _OTHER_UNIT.match(col)
        if unit:
            raise ImportFormatError(f"{path}: column {col!r} is not in milliseconds",
                                    f"latbench reads milliseconds: convert it and name it "
                                    f"{unit.group(1).lower()}_ms (see `latbench import --help`)")
        low = col.lower()
        if low in _KNOWN_OTHER:
            ignored.append(col)
            continue
        aliases = _ALIASES if "key" in header else {**_ALIASES, **_FIELD_ALIASES}
        close = [aliases[low]] if low in aliases else [c for c in _KEY_COLUMNS if _one_edit(low, c)]
        close = [c for c in close if c not in header]
        if close or low in CSV_COLUMNS:
            name = close[0] if close else low
            raise ImportFormatError(f"{path}: column {col!r} is not in the schema; did you mean {name!r}?",
                                    f"rename it to {name} (column names are lower case; see "
                                    "`latbench import --help`)")
        ignored.append(col)
    return ignored


def _one_edit(a: str, b: str) -> bool:
    """`a` is `b` with one letter added, dropped or changed (strid, kernal, strides)."""
    if a == b or abs(len(a) - len(b)) > 1 or min(len(a), len(b)) < 3:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def read_generic(path: Path) -> Imported:
    header, rows = _read(path)
    ignored = _check_generic_header(path, header)
    cols = set(header)
    latency_col = "median_ms" if "median_ms" in cols else "latency_ms" if "latency_ms" in cols else None
    if latency_col is None:
        raise ImportFormatError(f"{path}: no median_ms (or latency_ms) column",
                                "see `latbench import --help` for the CSV schema")
    by_fields = {"kind", "cin", "h", "w", "cout"}
    if "key" not in cols and not {"space", "arch"} <= cols and "kind" in cols and not by_fields <= cols:
        missing = [c for c in ("cin", "h", "w", "cout") if c not in cols]
        raise ImportFormatError(f"{path}: rows given by kind need cin, h, w and cout columns; "
                                f"no {', '.join(missing)} column",
                                "add it (see `latbench import --help` for the CSV schema)")
    if not ("key" in cols or by_fields <= cols or {"space", "arch"} <= cols):
        raise ImportFormatError(f"{path}: rows need a key column, or kind/cin/h/w/cout, or space/arch",
                                "see `latbench import --help` for the CSV schema")
    out, rounds, seen = [], {}, {}
    spaces: dict[str, object] = {}
    for line, row in rows:
        try:
            key = _generic_key(row, spaces)
            item = {"key": key, "kind": "network" if is_network_key(key) else "op",
                    "median_ms": _ms(row.get(latency_col), latency_col)}
            for stat in OPTIONAL_STATS:
                if row.get(stat):
                    item[stat] = _ms(row[stat], stat)
            low, high = item.get("p10_ms", item["median_ms"]), item.get("p90_ms", item["median_ms"])
            if not low <= item["median_ms"] <= high:
                raise ValueError(f"p10_ms <= {latency_col} <= p90_ms must hold; got {low:g}, "
                                 f"{item['median_ms']:g}, {high:g}")
            if row.get("count"):
                item["count"] = _int(row["count"], "count", 1)
            if row.get("round"):
                item["round"] = _int(row["round"], "round", 0)
            else:
                item["round"] = rounds.get(key, 0)
            rounds[key] = max(rounds.get(key, 0), item["round"] + 1)
            first = seen.setdefault((key, item["round"]), line)
            if first != line:
                raise ValueError(f"{key} round {item['round']} is already on line {first}; "
                                 "give each repeat its own round (or leave the round cell empty "
                                 "to number it after the others)")
        except ValueError as exc:
            raise ImportFormatError(f"{path} line {line}: {exc}",
                                    "fix that row; see `latbench import --help` for the schema") from None
        out.append(item)
    details = {"file": path.name}
    if ignored:
        details["ignored_columns"] = ignored
    return Imported(out, "csv", f"csv-{_label(path.stem)}", details)


#: The fields of an op a row may give beside its key (`_check_fields`).
_OP_FIELDS = ("kind", "cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups", "activation", "dtype")


def _generic_key(row: dict, spaces: dict) -> str:
    if row.get("key"):
        key = row["key"]
        if is_network_key(key):
            space_name, arch = Network.parse_key(key)
            key = _network_key(space_name, arch, spaces)
            if (row.get("kind") or "network").strip() != "network":
                raise ValueError(f"its key is a network's and its kind cell says {row['kind'].strip()}; "
                                 "correct one of them, or leave the kind cell empty")
            if row.get("space") or row.get("arch"):  # a network given twice: the two must agree
                given = _network_key(row.get("space") or space_name, row.get("arch") or "", spaces)
                if given != key:
                    raise ValueError(f"its key {key} and its space/arch cells ({given}) name different "
                                     "networks; correct one of them, or leave the space and arch cells empty")
            return key
        spec = OpSpec.from_key(key)
        _check_fields(row, spec)
        return spec.key
    if row.get("space") or row.get("arch"):
        return _network_key(row.get("space", ""), row.get("arch") or "", spaces)
    kind = row.get("kind", "")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    default_act = "relu" if kind in ("conv_bn_relu", "fbnet_block") else "none"
    spec = OpSpec(kind, _int(row.get("cin"), "cin", 1), _int(row.get("h"), "h", 1),
                  _int(row.get("w"), "w", 1), _int(row.get("cout"), "cout", 1),
                  # a global pool's kernel is its map, as the spaces and HW-NAS-Bench give it
                  kernel=_int(row.get("kernel") or (row.get("h") if kind == "avgpool" else "1"), "kernel", 1),
                  stride=_int(row.get("stride") or "1", "stride", 1),
                  expansion=_int(row.get("expansion") or "1", "expansion", 1),
                  groups=_int(row.get("groups") or "1", "groups", 1),
                  activation=row.get("activation") or default_act, dtype=row.get("dtype") or "float32")
    return spec.key


def _check_fields(row: dict, spec: OpSpec) -> None:
    """A row with a key and field cells that say otherwise (a k5 key in a row whose kernel is 3,
    an edited key): which one was measured cannot be told, so the row is refused."""
    for name in _OP_FIELDS:
        cell = (row.get(name) or "").strip()
        if not cell or (name == "kind" and cell == "op"):  # `lut --csv`'s kind: op or network
            continue
        want = getattr(spec, name)
        got = _int(cell, name, 1) if isinstance(want, int) else cell
        if got != want:
            raise ValueError(f"its key says {name} {want} and its {name} cell says {cell}; correct one of "
                             f"them, or leave the field cells empty (the key gives the op)")


def _network_key(space_name: str, arch, spaces: dict) -> str:
    from latbench.spaces import get_space

    try:
        if space_name not in spaces:
            spaces[space_name] = get_space(space_name)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    space = spaces[space_name]
    return space.network(space.check_arch(arch)).key  # a string as well: "0,-1" is not "0,1"


# ---- HW-NAS-Bench blocks.csv ----------------------------------------------------------------

def read_hwnasbench(path: Path, source_device: str | None) -> Imported:
    header, rows = _read(path)
    missing = [c for c in HWNASBENCH_COLUMNS if c not in header]
    if missing:
        raise WrongFormatError(f"{path} is not an HW-NAS-Bench block table (no {', '.join(missing)} column)",
                                _format_hint(path))
    rows = list(rows)
    devices = sorted({r["device"] for _, r in rows})
    if source_device is None:
        if len(devices) != 1:
            raise UsageError(f"{path} holds {len(devices)} devices: {', '.join(devices)}",
                             f"pick one with --source-device NAME (such as --source-device {devices[0]}); "
                             "it is stored under --device")
        source_device = devices[0]
    if source_device not in devices:
        raise UsageError(f"no rows of device {source_device!r} in {path}",
                         " ".join(filter(None, (did_you_mean(source_device, devices),
                                                f"devices in the file: {', '.join(devices)}"))))
    out, seen = [], {}
    for line, row in rows:
        if row["device"] != source_device:
            continue
        try:
            spec = hwnasbench_spec(row)
            _once(seen, spec.key, line)
            out.append({"key": spec.key, "kind": "op", "median_ms": _ms(row["latency_ms"], "latency_ms")})
        except ValueError as exc:
            raise ImportFormatError(f"{path} line {line}: {exc}", "fix that row") from None
    return Imported(out, "hwnasbench", f"hwnasbench-{_label(source_device)}",
                    {"file": path.name, "source_device": source_device})


def hwnasbench_spec(row: dict) -> OpSpec:
    """The OpSpec of one HW-NAS-Bench row (the mapping documented in the module docstring)."""
    op = row["op"]

    def num(name: str, default: int | None = None) -> int:
        value = row.get(name, "")
        if value in ("", None):
            if default is None:
                raise ValueError(f"{op} row needs {name}")
            return default
        return _int(value, name, 1)

    cin, cout = num("cin"), num("cout")
    if op == "fbnet_block":
        return OpSpec("fbnet_block", cin, num("h"), num("w"), cout, kernel=num("kernel"),
                      stride=num("stride"), expansion=num("expansion"), groups=num("groups", 1))
    if op == "skip":
        return OpSpec("skip", cin, num("h"), num("w"), cout, kernel=1, stride=num("stride", 1),
                      activation="none")
    if op == "conv_bn_relu":
        return OpSpec("conv_bn_relu", cin, num("h"), num("w"), cout, kernel=num("kernel"),
                      stride=num("stride", 1), groups=num("groups", 1))
    if op == "avgpool":
        h, w = num("h"), num("w")
        return OpSpec("avgpool", cin, h, w, cout, kernel=num("kernel", h), activation="none")
    if op == "fc":
        return OpSpec("fc", cin, 1, 1, cout, activation="none")
    raise ValueError(f"unknown op {op!r} (expected fbnet_block, skip, conv_bn_relu, avgpool or fc)")


# ---- HELP networks.csv ----------------------------------------------------------------------

#: HELP columns that are not measured networks but sums of HW-NAS-Bench's block table (HELP's
#: README; ../shared/data/README.md): a network correction fitted on them learns nothing.
HELP_SUMMED_COLUMNS = frozenset({"raspi4", "eyeriss", "fpga"})


def read_help(path: Path, column: str | None, space_name: str = "fbnet-cifar") -> Imported:
    from latbench.spaces import get_space

    header, rows = _read(path)
    if "arch" not in header:
        raise WrongFormatError(f"{path} is not a HELP network table (no arch column)",
                                _format_hint(path))
    columns = [c for c in header if c != "arch"]
    if column is None:
        raise UsageError(f"pick the latency column of {path} with --column",
                         f"columns: {', '.join(columns)}")
    if column not in columns:
        raise UsageError(f"no column {column!r} in {path}",
                         " ".join(filter(None, (did_you_mean(column, columns), f"columns: {', '.join(columns)}"))))
    space = get_space(space_name)
    out, empty, seen = [], 0, {}
    for line, row in rows:
        if not row.get(column):
            empty += 1
            continue
        try:
            key = space.network(space.check_arch(row["arch"])).key
            _once(seen, key, line)
            out.append({"key": key, "kind": "network", "median_ms": _ms(row[column], column)})
        except ValueError as exc:
            raise ImportFormatError(f"{path} line {line}: {exc}",
                                    f"check that the file holds archs of {space.name}") from None
    details = {"file": path.name, "column": column, "space": space.name, "empty": empty}
    if column in HELP_SUMMED_COLUMNS:
        details["summed"] = True
    batch = re.search(r"_(\d+)$", column)
    if batch and int(batch.group(1)) > 1:  # HELP's GPUs at batch 32 and 64; latbench's items are batch 1
        details["batch"] = int(batch.group(1))
    return Imported(out, "help", f"help-{_label(column)}", details)


# ---- helpers --------------------------------------------------------------------------------

def _once(seen: dict[str, int], key: str, line: int) -> None:
    """A format without rounds lists each op or network once: a repeat would be dropped unseen."""
    first = seen.setdefault(key, line)
    if first != line:
        raise ValueError(f"{key} is already on line {first} (this format has one row per op or "
                         "network; keep one of them)")


def _ms(value, name: str) -> float:
    if value is None:  # csv.DictReader: the row has fewer cells than the header
        raise ValueError(f"no {name} cell (the row has fewer cells than the header)")
    try:
        ms = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of milliseconds; got {value!r}") from None
    if not ms >= 0 or ms == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return ms


def _int(value, name: str, low: int) -> int:
    if value is None:
        raise ValueError(f"no {name} cell (the row has fewer cells than the header)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number; got {value!r}") from None
    if not math.isfinite(number) or abs(number) > MAX_WHOLE:  # int(inf) raises; SQLite holds 64 bits
        raise ValueError(f"{name} must be a whole number of at most {MAX_WHOLE:.0e}; got {value!r}")
    if number != int(number) or number < low:
        raise ValueError(f"{name} must be a whole number >= {low}; got {value!r}")
    return int(number)


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "file"
