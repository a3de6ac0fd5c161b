"""Device profiles: one YAML file per device, validated on load.

Looked up in ``./device_profiles``, then ``LATBENCH_HOME/devices``, then the
profiles bundled with latbench (the first file found wins).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latbench import home
from latbench.errors import ProfileError, UsageError, did_you_mean
from latbench.protocol import Protocol

TRANSPORTS = ("local", "ssh", "adb")
RUNNERS = ("python", "benchmark_model", "onnxruntime_perf_test", "trtexec")
RUNTIMES = ("onnxruntime", "litert", "tensorrt")
FORMATS = ("onnx", "tflite")

#: field -> (type, default, description). The single source of truth for validation and docs.
_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "name": (str, None, "device name, the same as the file name"),
    "description": (str, "", "one line for `latbench devices`"),
    "transport": (str, None, f"one of {', '.join(TRANSPORTS)}"),
    "runner": (str, "python", f"one of {', '.join(RUNNERS)}"),
    "runtime": (str, "onnxruntime", f"one of {', '.join(RUNTIMES)}"),
    "format": (str, "onnx", f"model file format, one of {', '.join(FORMATS)}"),
    "threads": (int, 1, "inference threads"),
    "runtime_options": (dict, {}, "runtime settings, e.g. {xnnpack: false}"),
    "python": (str, None, "python interpreter on the device (python runner); default: this one for local, python3 elsewhere"),
    "connection": (dict, {}, "transport settings: host, port, user, serial, workdir, ..."),
    "protocol": (dict, {}, "timing protocol: warmup_runs, warmup_s, runs, min_time_s, max_runs, rounds, batch_size, seed"),
    "thermal": (dict, {}, "max_temp_c (wait to cool above it), cool_timeout_s and poll_s"),
    "retry": (dict, {}, "attempts (per batch), backoff_s (first wait, doubled each time), max_backoff_s, "
                       "max_failed_batches (in a row, then collect stops; on a farm, a unit's attempts in a row "
                       "that measured nothing, then it is given up; default 3)"),
    "timeout_s": ((int, float), 600, "longest a runner invocation (one batch) may take"),
}
_CHOICES = {"transport": TRANSPORTS, "runner": RUNNERS, "runtime": RUNTIMES, "format": FORMATS}
_NUM = (int, float)
_THERMAL_FIELDS = {"max_temp_c": (int, float, type(None)), "cool_timeout_s": _NUM, "poll_s": _NUM}
_RETRY_FIELDS = {"attempts": (int,), "backoff_s": _NUM, "max_backoff_s": _NUM, "max_failed_batches": (int,)}
#: Lowest allowed value of thermal/retry settings (0 attempts or a negative sleep would crash collect).
_SECTION_MIN = {("retry", "attempts"): 1, ("retry", "backoff_s"): 0, ("retry", "max_backoff_s"): 0,
                ("retry", "max_failed_batches"): 1,
                ("thermal", "cool_timeout_s"): 0, ("thermal", "poll_s"): 0}

#: transport -> connection field -> (types, required, description)
_CPU_MASK = ((str,), False, "hex mask of the cores the benchmark runs on, e.g. f0 for cores 4-7 "
             "(taskset for tools; the bundled runner pins itself)")

CONNECTION_FIELDS: dict[str, dict[str, tuple[tuple, bool, str]]] = {
    "local": {
        "workdir": ((str,), False, "directory for runner files (default: LATBENCH_HOME/work/<device>)"),
        "cpu_mask": _CPU_MASK,
    },
    "ssh": {
        "host": ((str,), True, "host name or address of the board"),
        "port": ((int,), False, "SSH port (default 22)"),
        "user": ((str,), False, "login user (default: the local user)"),
        "key_file": ((str,), False, "private key file (default: the agent and ~/.ssh keys)"),
        "known_hosts": ((str,), False, "known_hosts file to verify the host key (default ~/.ssh/known_hosts)"),
        "trust_unknown_host": ((bool,), False, "accept and remember a host key never seen before (default false)"),
        "connect_timeout_s": (_NUM, False, "seconds to wait for the connection (default 10)"),
        "workdir": ((str,), False, "work directory on the board (default /tmp/latbench)"),
        "cpu_mask": _CPU_MASK,
    },
    "adb": {
        "address": ((str,), False, "host:port of a phone in TCP mode (adb tcpip 5555)"),
        "serial": ((str,), False, "USB serial of the phone (with usb: true)"),
        "usb": ((bool,), False, "connect over USB (needs the `usb` extra)"),
        "adb_key": ((str,), False, "adb RSA private key (default ~/.android/adbkey, created if missing)"),
        "auth_timeout_s": (_NUM, False, "seconds to accept the key on the phone (default 30)"),
        "connect_timeout_s": (_NUM, False, "seconds to wait for the connection (default 10)"),
        "workdir": ((str,), False, "work directory on the phone (default /data/local/tmp/latbench)"),
        "cpu_mask": _CPU_MASK,
    },
}


def settings_differences(here: dict, there: dict, prefix: str = "",
                         labels: tuple[str, str] = ("here", "there")) -> list[str]:
    """Stored settings that differ, as 'field: X there, Y here' (nested fields dotted)."""
    out = []
    for key in sorted(set(here) | set(there)):
        a, b = here.get(key), there.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{key}.", labels)
        elif a != b:
            out.append(f"{prefix}{key}: {b!r} {labels[1]}, {a!r} {labels[0]}")
    return out


def cores_of_mask(mask: str) -> list[int]:
    """The cores a hex mask names: "f0" -> [4, 5, 6, 7] (bit i = core i)."""
    bits = int(mask, 16)
    return [i for i in range(bits.bit_length()) if bits >> i & 1]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    transport: str
    description: str = ""
    runner: str = "python"
    runtime: str = "onnxruntime"
    format: str = "onnx"
    threads: int = 1
    runtime_options: dict = field(default_factory=dict)
    python: str | None = None
    connection: dict = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    thermal: dict = field(default_factory=dict)
    retry: dict = field(default_factory=dict)
    timeout_s: float = 600
    source: str = ""

    @property
    def timed_options(self) -> dict:
        """The runtime options that change what a number means (XNNPACK on or off); where the
        tool lives and its declared version (already in the runtime label) do not."""
        return {k: v for k, v in sorted(self.runtime_options.items())
                if k not in ("binary", "binary_local", "version")}

    @property
    def cpus(self) -> list[int] | None:
        """The cores of `connection.cpu_mask` (bit i = core i), or None when unpinned."""
        mask = self.connection.get("cpu_mask")
        return cores_of_mask(mask) if mask else None

    def settings(self, exporter: str) -> dict:
        """What defines the meaning of a number measured with this profile (stored with it).

        The cores a benchmark is pinned to belong here: a big and a little core of one phone
        are different devices. Unpinned profiles keep the settings (and hash) they had."""
        mask = self.connection.get("cpu_mask")
        pinned = {"cpu_mask": format(int(mask, 16), "x")} if mask else {}
        return pinned | {
            "runner": self.runner, "runtime": self.runtime, "format": self.format,
            "threads": self.threads,
            "runtime_options": self.timed_options,
            "protocol": self.protocol.timing(), "exporter": exporter,
        }

    @staticmethod
    def settings_hash(settings: dict) -> str:
        blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: The bundled profiles: the `device_profiles` package installed beside `latbench`. Found by
#: path, not by importing it: under `python -m latbench`, a project's own ./device_profiles
#: folder (no __init__.py) is importable as `device_profiles` in its place.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "device_profiles"


def _search_dirs() -> list[tuple[str, Path]]:
    bundled = BUNDLED_DIR
    dirs = [("project", Path.cwd() / "device_profiles"), ("user", home.user_devices_dir()),
            ("bundled", bundled)]
    seen, unique = set(), []
    for label, d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            unique.append((label, d))
    return unique


def list_profiles() -> dict[str, Path]:
    """Every known device name -> the file that defines it (first in search order wins)."""
    found: dict[str, Path] = {}
    for _, d in _search_dirs():
        if d.is_dir():
            for path in sorted(d.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def find_profile(name: str) -> Path:
    known = list_profiles()
    if name in known:
        return known[name]
    hint = did_you_mean(name, known)
    raise UsageError(
        f"unknown device {name!r}",
        f"{hint + ' ' if hint else ''}known devices: {', '.join(sorted(known)) or 'none'}; "
        f"add your own as ./device_profiles/{name}.yaml (see `latbench devices --help`)",
    )


def load_profile(name: str) -> DeviceProfile:
    return parse_profile(find_profile(name))


def parse_profile(path: Path) -> DeviceProfile:
    """Read and validate one profile file; every problem names the file, the field and the fix."""
    try:
        data = yaml.safe_load(path.read_bytes())  # bytes: PyYAML says where a file is not UTF-8
    except yaml.reader.ReaderError as exc:
        raise ProfileError(f"{path}: is not UTF-8 text (byte {exc.position}: {exc.reason})",
                           "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})",
                           "fix the syntax; profiles are plain YAML mappings") from None
    except OSError as exc:
        raise ProfileError(f"cannot read device profile {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a device profile must be a YAML mapping of fields",
                           "start from a bundled one: `latbench devices --show local`")

    def bad(fieldname: str, problem: str, fix: str) -> ProfileError:
        return ProfileError(f"{path}: field {fieldname!r} {problem}", fix)

    for key in data:
        if key not in _FIELDS:
            fix = did_you_mean(key, _FIELDS) or f"known fields: {', '.join(_FIELDS)}"
            raise bad(str(key), "is not a profile field", fix)
    values: dict[str, Any] = {}
    for key, (typ, default, doc) in _FIELDS.items():
        if key not in data or data[key] is None:
            if default is None and key in ("name", "transport"):
                if key == "name":
                    values[key] = path.stem
                    continue
                raise bad(key, "is missing", f"add `{key}:` ({doc})")
            values[key] = default
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise bad(key, f"must be {doc if key in _CHOICES else _type_name(typ)}; got {value!r}",
                      f"set `{key}:` to {doc}")
        if key in _CHOICES and value not in _CHOICES[key]:
            fix = did_you_mean(value, _CHOICES[key]) or f"use {doc}"
            raise bad(key, f"is {value!r}, not {doc}", fix)
        values[key] = value
    if values["name"] != path.stem:
        raise bad("name", f"is {values['name']!r} but the file is {path.name}",
                  f"rename the file to {values['name']}.yaml or set name: {path.stem}")
    if values["threads"] < 1:
        raise bad("threads", f"must be an int >= 1; got {values['threads']}", "set threads: 1 or more")
    if not math.isfinite(values["timeout_s"]) or values["timeout_s"] <= 0:
        raise bad("timeout_s", f"must be > 0; got {values['timeout_s']}", "set timeout_s: seconds a batch may take")
    known_protocol = list(Protocol().to_dict())
    for key in values["protocol"]:
        if key not in known_protocol:
            raise bad("protocol", f"has an unknown setting {key!r}",
                      did_you_mean(key, known_protocol) or f"known: {', '.join(known_protocol)}")
    try:
        values["protocol"] = Protocol(**values["protocol"])
    except (TypeError, ValueError) as exc:
        # Protocol's own check reads "The 'rel_ci' parameter of Protocol must be ... Got -1."
        text = re.sub(r"^The '(\w+)' parameter of Protocol", r"setting '\1'", str(exc)).rstrip(".")
        raise bad("protocol", text[:1].lower() + text[1:], "fix that setting in the profile") from None
    for section, known in (("thermal", _THERMAL_FIELDS), ("retry", _RETRY_FIELDS)):
        for key, value in values[section].items():
            if key not in known:
                raise bad(section, f"has an unknown setting {key!r}", f"known: {', '.join(known)}")
            wanted = _type_name(tuple(t for t in known[key] if t is not type(None)))
            if isinstance(value, bool) or not isinstance(value, known[key]):
                raise bad(section, f"setting {key!r} must be {wanted}; got {value!r}", f"set {key}: {wanted}")
            if value is not None and not math.isfinite(value):
                raise bad(section, f"setting {key!r} must be a finite number; got {value!r}", f"set {key}: {wanted}")
            low = _SECTION_MIN.get((section, key))
            if low is not None and value is not None and value < low:
                raise bad(section, f"setting {key!r} must be >= {low}; got {value!r}", f"set {key}: {low} or more")
    schema = CONNECTION_FIELDS[values["transport"]]
    for key, value in values["connection"].items():
        if key not in schema:
            fix = did_you_mean(key, schema) or f"known for {values['transport']}: {', '.join(schema)}"
            raise bad("connection", f"has an unknown setting {key!r} for transport {values['transport']}", fix)
        types, _, doc = schema[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise bad("connection", f"setting {key!r} must be {_type_name(types)}; got {value!r}",
                      f"set {key}: {doc}")
        if key == "port" and not 1 <= value <= 65535:
            raise bad("connection", f"setting 'port' must be a port number, 1 to 65535; got {value!r}",
                      f"set port: {doc}")
        if key.endswith("_s") and isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            raise bad("connection", f"setting {key!r} must be a number of seconds > 0; got {value!r}",
                      f"set {key}: {doc}")
    mask = values["connection"].get("cpu_mask")
    if mask is not None and not (re.fullmatch(r"[0-9a-fA-F]+", mask) and int(mask, 16) > 0):
        raise bad("connection", f"setting 'cpu_mask' is {mask!r}, not a hex mask of at least one core",
                  "use e.g. f0 for cores 4-7 (the big cores of a Snapdragon 845), 1 for core 0")
    for key, (_, required, doc) in schema.items():
        if required and key not in values["connection"]:
            raise bad("connection", f"needs {key!r} for transport {values['transport']}",
                      f"add `connection: {{{key}: ...}}` ({doc})")
    if values["runner"] == "python":
        from latbench.runners.pyrunner import RUNTIME_OPTIONS

        known = RUNTIME_OPTIONS.get(values["runtime"], {})
        for key, value in values["runtime_options"].items():
            if key not in known:
                raise bad("runtime_options", f"has {key!r}, which the python runner's {values['runtime']} "
                          "does not know", did_you_mean(key, known) or
                          (f"known: {', '.join(known)}" if known else "it takes none"))
            if not isinstance(value, known[key]):
                raise bad("runtime_options", f"setting {key!r} must be {_type_name(known[key])}; got {value!r}",
                          f"set {key}: {_type_name(known[key])}")
    if values["format"] == "tflite" and values["runtime"] == "onnxruntime":
        raise bad("format", "is tflite but runtime is onnxruntime", "use runtime: litert for .tflite models")
    if values["format"] == "onnx" and values["runtime"] == "litert":
        raise bad("format", "is onnx but runtime is litert", "use format: tflite with runtime: litert")
    profile = DeviceProfile(source=str(path), **values)
    from latbench.runners.base import runner_class  # the runner knows what it can serve

    check = getattr(runner_class(profile.runner), "check_profile", None)
    if check is not None:
        check(profile)
    return profile


def _type_name(typ: Any) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list",
             bool: "true or false"}
    return " or ".join(names.get(t, t.__name__) for t in types)
