"""Features of many OpSpecs at once, computed with numpy from one small matrix of spec fields.

`spec_matrix(specs)` turns specs into the columns of `SPEC_COLUMNS` (one Python pass,
cached per spec); every feature below is then array arithmetic on those columns, so a
million candidate ops cost milliseconds, not a loop over `OpSpec.features()`.

Three feature sets, compared by cross-validation in `predictors.selection`:

- ``raw``: the shape columns (kind, channels, map size, kernel, stride, expansion, groups);
- ``opspec``: `latbench.ops.FEATURE_NAMES` (the same numbers `OpSpec.features()` gives) + kind;
- ``derived``: ``opspec`` plus the block split into its sub-ops (expand 1x1, depthwise kxk,
  project 1x1, full kxk conv), each with its MACs, working-set and weight bytes and
  arithmetic intensity, the channel-shuffle and residual-add traffic, the number of kernels
  launched, and logs of FLOPs, bytes and intensity. Latency on real devices follows these
  sub-ops (a depthwise conv is memory-bound, a 1x1 conv compute-bound, a weight tensor
  larger than the cache costs a spill), not the op's totals.
"""

from __future__ import annotations

import operator
from typing import Sequence

import numpy as np

from latbench.ops import DTYPE_BYTES, FEATURE_NAMES, KINDS, OpSpec

KIND_IDS = {kind: i for i, kind in enumerate(KINDS)}

#: Columns of `spec_matrix`: what identifies an op's shape and cost (batch 1).
SPEC_COLUMNS = ("kind_id", "cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups",
                "relu", "dtype_bytes")

#: Sub-ops an op is split into ("role" -> what it is).
SUB_OPS = {
    "expand": "1x1 (group) conv cin -> cin*expansion of an fbnet_block",
    "depthwise": "kxk depthwise conv of an fbnet_block",
    "pointwise": "1x1 conv: block projection, skip projection, 1x1 conv_bn_relu, fc",
    "full": "kxk conv_bn_relu with k > 1 (the stem)",
    "pool": "global average pool",
}

_RAW = ("kind_id", "cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups")
_OPSPEC = ("kind_id",) + FEATURE_NAMES
_DERIVED_EXTRA = tuple(
    [f"{part}_{role}" for role in ("expand", "depthwise", "pointwise", "full")
     for part in ("macs", "ws_bytes", "weight_bytes", "intensity")]
    + ["pool_bytes", "shuffle_bytes", "add_bytes", "kernels", "identity", "relu",
       "max_ws_bytes", "log_flops", "log_bytes_moved", "log_intensity"]
)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "raw": _RAW,
    "opspec": _OPSPEC,
    "derived": _OPSPEC + _DERIVED_EXTRA,
}

_FIELDS = operator.attrgetter("kind", "cin", "h", "w", "cout", "kernel", "stride", "expansion",
                              "groups", "activation", "dtype")


def spec_matrix(specs: Sequence[OpSpec]) -> np.ndarray:
    """The `SPEC_COLUMNS` of `specs` as an int64 array of shape (n, len(SPEC_COLUMNS)).

    Column-wise (one attrgetter pass, then whole columns): about a microsecond per spec.
    """
    m = np.empty((len(specs), len(SPEC_COLUMNS)), dtype=np.int64)
    if not len(specs):
        return m
    cols = list(zip(*map(_FIELDS, specs)))
    m[:, 0] = [KIND_IDS[k] for k in cols[0]]
    for i in range(1, 9):
        m[:, i] = cols[i]
    m[:, 9] = [a == "relu" for a in cols[9]]
    m[:, 10] = [DTYPE_BYTES[d] for d in cols[10]]
    return m


def _conv_out(size: np.ndarray, kernel: np.ndarray, stride: np.ndarray) -> np.ndarray:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def identity_rows(m: np.ndarray) -> np.ndarray:
    """Which rows of a spec matrix are identity skips (`OpSpec.is_identity`): no compute, and
    an exported network has no node for them."""
    return (m[:, 0] == KIND_IDS["skip"]) & (m[:, 1] == m[:, 4]) & (m[:, 6] == 1)


def quantities(m: np.ndarray) -> dict[str, np.ndarray]:
    """Every named per-op quantity of a spec matrix (int64 where exact, float64 otherwise)."""
    m = np.asarray(m, dtype=np.int64)
    if m.ndim != 2 or m.shape[1] != len(SPEC_COLUMNS):
        raise ValueError(f"a spec matrix has {len(SPEC_COLUMNS)} columns ({', '.join(SPEC_COLUMNS)}); "
                         f"got shape {m.shape}")
    kind, cin, h, w, cout, k, s, e, g, relu, nbytes = (m[:, i] for i in range(m.shape[1]))
    conv, block = kind == KIND_IDS["conv_bn_relu"], kind == KIND_IDS["fbnet_block"]
    skip, pool, fc = kind == KIND_IDS["skip"], kind == KIND_IDS["avgpool"], kind == KIND_IDS["fc"]
    identity = identity_rows(m)
    projection = skip & ~identity
    spatial = conv | block | projection
    keff = np.where(conv | block, k, 1)
    ho = np.where(spatial, _conv_out(h, keff, s), np.where(identity, h, 1))
    wo = np.where(spatial, _conv_out(w, keff, s), np.where(identity, w, 1))
    mid = np.where(block, cin * e, cin)
    one = np.ones_like(h)

    # Sub-ops: (macs, input elements, output elements, weight elements).
    zero = np.zeros_like(h)
    expand = (np.where(block, h * w * cin * mid // g, zero), np.where(block, h * w * cin, zero),
              np.where(block, h * w * mid, zero), np.where(block, cin * mid // g, zero))
    depthwise = (np.where(block, ho * wo * mid * k * k, zero), np.where(block, h * w * mid, zero),
                 np.where(block, ho * wo * mid, zero), np.where(block, mid * k * k, zero))
    pw = block | projection | (conv & (k == 1)) | fc
    pw_cin = np.where(block, mid, cin)
    pw_groups = np.where(block, g, one)
    pw_hw = np.where(fc, one, ho * wo)
    pw_in = np.where(block, ho * wo * mid, np.where(fc, cin, h * w * cin))
    pointwise = (np.where(pw, pw_hw * pw_cin * cout // pw_groups, zero), np.where(pw, pw_in, zero),
                 np.where(pw, pw_hw * cout, zero), np.where(pw, pw_cin * cout // pw_groups, zero))
    kxk = conv & (k > 1)
    full = (np.where(kxk, ho * wo * cin * cout * k * k // g, zero), np.where(kxk, h * w * cin, zero),
            np.where(kxk, ho * wo * cout, zero), np.where(kxk, cin * cout * k * k // g, zero))
    pool_in = np.where(pool, h * w * cin, zero)

    # The same totals `OpSpec.costs()` and `OpSpec.features()` give.
    macs = np.select(
        [conv, block, projection, pool, fc],
        [ho * wo * cin * cout * k * k // g,
         h * w * cin * mid // g + ho * wo * mid * k * k + ho * wo * mid * cout // g,
         ho * wo * cin * cout, h * w * cin, cin * cout], 0)
    params = np.select(
        [conv, block, projection, fc],
        [cin * cout * k * k // g + 2 * cout,
         cin * mid // g + mid * k * k + mid * cout // g + 4 * mid + 2 * cout,
         cin * cout + 2 * cout, cin * cout + cout], 0)
    input_elems = np.where(fc, cin, cin * h * w)
    output_elems = np.where(fc | pool, cout, cout * ho * wo)
    input_bytes, output_bytes = input_elems * nbytes, output_elems * nbytes
    weight_bytes = params * nbytes
    moved = input_bytes + output_bytes + weight_bytes

    q: dict[str, np.ndarray] = {
        "kind_id": kind, "cin": cin, "h": h, "w": w, "cout": cout, "ho": ho, "wo": wo,
        "kernel": k, "stride": s, "expansion": e, "groups": g, "mid_channels": mid,
        "macs": macs, "flops": 2 * macs, "params": params,
        "input_bytes": input_bytes, "output_bytes": output_bytes, "weight_bytes": weight_bytes,
        "bytes_moved": moved,
        "arithmetic_intensity": 2 * macs / np.maximum(moved, 1),
        "relu": relu, "dtype_bytes": nbytes, "identity": identity.astype(np.int64),
    }
    for role, (smacs, sin, sout, swt) in (("expand", expand), ("depthwise", depthwise),
                                          ("pointwise", pointwise), ("full", full)):
        ws = (sin + sout + swt) * nbytes
        q[f"macs_{role}"] = smacs
        q[f"ws_bytes_{role}"] = ws
        q[f"weight_bytes_{role}"] = swt * nbytes
        q[f"intensity_{role}"] = 2 * smacs / np.maximum(ws, 1)
        q[f"_in_{role}"], q[f"_out_{role}"], q[f"_weights_{role}"] = sin, sout, swt
    q["pool_bytes"] = pool_in * nbytes
    q["_in_pool"] = pool_in
    q["shuffle_bytes"] = np.where(block & (g > 1), h * w * mid, zero) * nbytes
    q["add_bytes"] = np.where(block & (cin == cout) & (s == 1), ho * wo * cout, zero) * nbytes
    q["kernels"] = np.select([block, identity], [3 + (g > 1) + ((cin == cout) & (s == 1)), 0], 1)
    q["max_ws_bytes"] = np.max([q[f"ws_bytes_{r}"] for r in ("expand", "depthwise", "pointwise", "full")]
                               + [q["pool_bytes"]], axis=0)
    q["log_flops"] = np.log1p(q["flops"].astype(np.float64))
    q["log_bytes_moved"] = np.log1p(moved.astype(np.float64))
    q["log_intensity"] = np.log1p(q["arithmetic_intensity"])
    return q


def feature_matrix(specs_or_matrix, feature_set: str = "derived") -> np.ndarray:
    """float64 features (columns in `FEATURE_SETS[feature_set]` order) of specs or a spec matrix."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; use one of {', '.join(FEATURE_SETS)}")
    m = as_spec_matrix(specs_or_matrix)
    return features_from_quantities(quantities(m), len(m), feature_set)


def features_from_quantities(q: dict[str, np.ndarray], n: int, feature_set: str) -> np.ndarray:
    names = FEATURE_SETS[feature_set]
    out = np.empty((n, len(names)), dtype=np.float64)
    for i, name in enumerate(names):
        out[:, i] = q[name]
    return out


def as_spec_matrix(specs_or_matrix) -> np.ndarray:
    """A spec matrix from a list of OpSpec, or a 2-D array already in `SPEC_COLUMNS` order."""
    if isinstance(specs_or_matrix, np.ndarray) and not (specs_or_matrix.ndim == 1
                                                        and specs_or_matrix.dtype == object):
        m = specs_or_matrix
        if m.ndim != 2 or m.shape[1] != len(SPEC_COLUMNS):
            raise ValueError(
                f"X must be a list of OpSpec or a 2-D array with the {len(SPEC_COLUMNS)} columns "
                f"{', '.join(SPEC_COLUMNS)} (predictors.features.spec_matrix); got shape {m.shape}")
        if m.dtype.kind in "iu":
            return m.astype(np.int64, copy=False)
        if m.size and (not np.all(np.isfinite(m)) or np.any(m != np.round(m))):
            raise ValueError("a spec matrix holds whole numbers (see predictors.features.SPEC_COLUMNS)")
        return m.astype(np.int64)
    specs = list(specs_or_matrix)
    for s in specs:
        if not isinstance(s, OpSpec):
            raise TypeError(f"X must hold OpSpec objects (or be a 2-D spec matrix); got {type(s).__name__}")
    return spec_matrix(specs)


_DTYPES_BY_BYTES = {v: k for k, v in DTYPE_BYTES.items()}


def specs_from_matrix(m: np.ndarray) -> list[OpSpec]:
    """The OpSpecs of a spec matrix (inverse of `spec_matrix`)."""
    m = as_spec_matrix(m)
    try:
        return [OpSpec(KINDS[r[0]], int(r[1]), int(r[2]), int(r[3]), int(r[4]), kernel=int(r[5]),
                       stride=int(r[6]), expansion=int(r[7]), groups=int(r[8]),
                       activation="relu" if r[9] else "none", dtype=_DTYPES_BY_BYTES[int(r[10])])
                for r in m.tolist()]
    except (IndexError, KeyError) as exc:
        raise ValueError(f"not a spec matrix row (unknown kind id or dtype size: {exc})") from None
