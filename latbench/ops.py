"""OpSpec: a frozen description of one operator or block, its key and its features.

Torch-free on purpose: `predictors` computes features for millions of candidate
ops without importing torch. Torch modules for a spec are built in
`latbench.modules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterable

#: Operator kinds of the FBNet space (see ../shared/data/README.md).
KINDS = ("conv_bn_relu", "fbnet_block", "skip", "avgpool", "fc")
ACTIVATIONS = ("relu", "none")
DTYPE_BYTES = {"float32": 4, "float16": 2, "int8": 1}

#: Names of the numeric features, in the order `OpSpec.features()` returns them.
FEATURE_NAMES = (
    "cin", "h", "w", "cout", "ho", "wo", "kernel", "stride", "expansion", "groups",
    "mid_channels", "macs", "flops", "params",
    "input_bytes", "output_bytes", "weight_bytes", "bytes_moved", "arithmetic_intensity",
)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution (padding = kernel // 2)."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True, order=True)
class OpSpec:
    """One operator with batch size 1: hashable, and its `key` is a stable string.

    ``cin, h, w`` describe the input feature map (``h = w = 1`` for ``fc``).
    """

    kind: str
    cin: int
    h: int
    w: int
    cout: int
    kernel: int = 1
    stride: int = 1
    expansion: int = 1
    groups: int = 1
    activation: str = "relu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"OpSpec kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name in ("cin", "h", "w", "cout", "kernel", "stride", "expansion", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"OpSpec {name} must be an int >= 1; got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"OpSpec activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"OpSpec dtype must be one of {tuple(DTYPE_BYTES)}; got {self.dtype!r}")
        # hashed once: predictors look specs up in dicts millions of times
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f.name) for f in fields(self))))
        if self.kind == "fbnet_block":
            mid = self.cin * self.expansion
            if self.cin % self.groups or mid % self.groups or self.cout % self.groups:
                raise ValueError(
                    f"OpSpec groups={self.groups} must divide cin={self.cin}, "
                    f"cin*expansion={mid} and cout={self.cout}"
                )

    def __hash__(self) -> int:
        return self._hash

    # ---- identity -------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """Canonical key, e.g. ``fbnet_block:1x16x32x32:c24:k3:s1:e1:g1:relu:float32``."""
        return (
            f"{self.kind}:1x{self.cin}x{self.h}x{self.w}:c{self.cout}:k{self.kernel}"
            f":s{self.stride}:e{self.expansion}:g{self.groups}:{self.activation}:{self.dtype}"
        )

    @classmethod
    def from_key(cls, key: str) -> "OpSpec":
        """Inverse of `key`; raises ValueError naming the part it could not read."""
        parts = key.split(":")
        if len(parts) != 9:
            raise ValueError(f"not an op key (expected 9 ':'-separated parts): {key!r}")
        kind, shape, c, k, s, e, g, act, dtype = parts
        try:
            n, cin, h, w = (int(x) for x in shape.split("x"))
            if n != 1:
                raise ValueError("batch must be 1")
            values = {}
            for part, prefix, name in ((c, "c", "cout"), (k, "k", "kernel"), (s, "s", "stride"),
                                       (e, "e", "expansion"), (g, "g", "groups")):
                if not part.startswith(prefix):
                    raise ValueError(f"{part!r} should start with {prefix!r}")
                values[name] = int(part[len(prefix):])
        except ValueError as exc:
            raise ValueError(f"not an op key ({exc}): {key!r}") from None
        spec = cls(kind=kind, cin=cin, h=h, w=w, activation=act, dtype=dtype, **values)
        if spec.key != key:  # e.g. "c024" or " 24": one op must have exactly one key
            raise ValueError(f"not a canonical op key: {key!r} (the canonical form is {spec.key!r})")
        return spec

    # ---- shapes and costs -----------------------------------------------------------------

    @property
    def is_identity(self) -> bool:
        return self.kind == "skip" and self.cin == self.cout and self.stride == 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.cin) if self.kind == "fc" else (1, self.cin, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind in ("fc", "avgpool"):
            return (1, self.cout)
        if self.kind == "skip" and self.is_identity:
            return (1, self.cout, self.h, self.w)
        k = self.kernel if self.kind in ("conv_bn_relu", "fbnet_block") else 1
        return (1, self.cout, conv_out(self.h, k, self.stride), conv_out(self.w, k, self.stride))

    @property
    def mid_channels(self) -> int:
        return self.cin * self.expansion if self.kind == "fbnet_block" else self.cin

    def costs(self) -> tuple[int, int]:
        """(multiply-accumulates, trainable parameters) of the module `latbench.modules` builds.

        Convolutions have no bias (BatchNorm follows); BatchNorm counts 2 parameters per
        channel; ReLU, channel shuffle and the residual add cost no MACs.
        """
        ho, wo = self.output_shape[-2:] if len(self.output_shape) == 4 else (1, 1)
        cin, cout, k, g = self.cin, self.cout, self.kernel, self.groups
        if self.kind == "conv_bn_relu":
            return ho * wo * cin * cout * k * k // g, cin * cout * k * k // g + 2 * cout
        if self.kind == "fbnet_block":
            mid = self.mid_channels
            macs = self.h * self.w * cin * mid // g + ho * wo * mid * k * k + ho * wo * mid * cout // g
            params = cin * mid // g + mid * k * k + mid * cout // g + 2 * mid + 2 * mid + 2 * cout
            return macs, params
        if self.kind == "skip":
            if self.is_identity:
                return 0, 0
            return ho * wo * cin * cout, cin * cout + 2 * cout
        if self.kind == "avgpool":
            return self.h * self.w * cin, 0
        if self.kind == "fc":
            return cin * cout, cin * cout + cout
        raise AssertionError(self.kind)

    @property
    def macs(self) -> int:
        return self.costs()[0]

    @property
    def flops(self) -> int:
        """2 x MACs (one multiply and one add each)."""
        return 2 * self.costs()[0]

    @property
    def params(self) -> int:
        return self.costs()[1]

    def features(self) -> dict[str, float]:
        """Numeric features for learned predictors (names in `FEATURE_NAMES`)."""
        macs, params = self.costs()
        nbytes = DTYPE_BYTES[self.dtype]
        out = self.output_shape
        ho, wo = (out[2], out[3]) if len(out) == 4 else (1, 1)
        input_bytes = _prod(self.input_shape) * nbytes
        output_bytes = _prod(out) * nbytes
        weight_bytes = params * nbytes
        moved = input_bytes + output_bytes + weight_bytes
        return {
            "cin": self.cin, "h": self.h, "w": self.w, "cout": self.cout, "ho": ho, "wo": wo,
            "kernel": self.kernel, "stride": self.stride, "expansion": self.expansion,
            "groups": self.groups, "mid_channels": self.mid_channels,
            "macs": macs, "flops": 2 * macs, "params": params,
            "input_bytes": input_bytes, "output_bytes": output_bytes, "weight_bytes": weight_bytes,
            "bytes_moved": moved, "arithmetic_intensity": 2 * macs / moved,
        }

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _prod(values: Iterable[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


NETWORK_PREFIX = "net"


@dataclass(frozen=True)
class Network:
    """A whole network: the ordered ops of one arch of a search space."""

    space: str
    arch: tuple[int, ...]
    ops: tuple[OpSpec, ...] = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        """``net:<space>:<arch indices joined by '-'>``, e.g. ``net:fbnet-cifar:0-8-3-...``."""
        return f"{NETWORK_PREFIX}:{self.space}:{'-'.join(str(i) for i in self.arch)}"

    @staticmethod
    def parse_key(key: str) -> tuple[str, tuple[int, ...]]:
        """(space, arch) of a network key; ValueError if `key` is not one."""
        parts = key.split(":")
        if len(parts) != 3 or parts[0] != NETWORK_PREFIX:
            raise ValueError(f"not a network key: {key!r}")
        try:
            arch = tuple(int(i) for i in parts[2].split("-"))
        except ValueError:
            raise ValueError(f"not a network key (bad arch): {key!r}") from None
        return parts[1], arch

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops)


def is_network_key(key: str) -> bool:
    return key.startswith(NETWORK_PREFIX + ":")
