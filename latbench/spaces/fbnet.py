"""The FBNet search space (Wu et al., CVPR 2019), as laid out in shared/data/README.md.

22 searchable layers x 9 candidate blocks, plus a fixed stem, head, pool and
classifier. Two variants: ImageNet (224x224 input, 1000 classes) and CIFAR
(32x32 input, 100 classes, smaller strides early on).
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass
from typing import Sequence

from latbench.ops import Network, OpSpec, conv_out


@dataclass(frozen=True)
class Candidate:
    name: str
    kernel: int = 3
    expansion: int = 1
    groups: int = 1
    skip: bool = False


#: Candidate index -> block; the order every table of this space uses.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("k3_e1", 3, 1, 1),
    Candidate("k3_e1_g2", 3, 1, 2),
    Candidate("k3_e3", 3, 3, 1),
    Candidate("k3_e6", 3, 6, 1),
    Candidate("k5_e1", 5, 1, 1),
    Candidate("k5_e1_g2", 5, 1, 2),
    Candidate("k5_e3", 5, 3, 1),
    Candidate("k5_e6", 5, 6, 1),
    Candidate("skip", skip=True),
)
SKIP_INDEX = 8

# (layers, cout, stride ImageNet, stride CIFAR) of the seven searchable stages.
_STAGES = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 2, 2),
           (4, 112, 1, 1), (4, 184, 2, 2), (1, 352, 1, 1))
_VARIANTS = {
    # input size, stem stride, head channels, classes
    "imagenet": (224, 2, 1984, 1000),
    "cifar": (32, 1, 1504, 100),
}


@dataclass(frozen=True)
class Layer:
    """One searchable layer: its input map and the output it must produce."""

    index: int
    cin: int
    h: int
    cout: int
    stride: int


class FBNetSpace:
    num_candidates = len(CANDIDATES)
    candidates = CANDIDATES

    def __init__(self, variant: str = "cifar"):
        if variant not in _VARIANTS:
            raise ValueError(f"FBNet variant must be one of {sorted(_VARIANTS)}; got {variant!r}")
        self.variant = variant
        self.name = f"fbnet-{variant}"
        self.input_size, self.stem_stride, self.head_channels, self.num_classes = _VARIANTS[variant]
        self.stem_channels = 16
        self.layers: tuple[Layer, ...] = self._layers()
        self.num_layers = len(self.layers)

    def __repr__(self) -> str:
        return f"FBNetSpace({self.variant!r})"

    def _layers(self) -> tuple[Layer, ...]:
        layers = []
        c, h = self.stem_channels, conv_out(self.input_size, 3, self.stem_stride)
        stride_col = 2 if self.variant == "imagenet" else 3
        for stage in _STAGES:
            n, cout, stride = stage[0], stage[1], stage[stride_col]
            for i in range(n):
                s = stride if i == 0 else 1
                layers.append(Layer(len(layers), c, h, cout, s))
                c, h = cout, conv_out(h, 3, s)
        return tuple(layers)

    @property
    def final_size(self) -> int:
        last = self.layers[-1]
        return conv_out(last.h, 3, last.stride)

    # ---- ops ------------------------------------------------------------------------------

    def candidate_op(self, layer: int, candidate: int) -> OpSpec:
        lay = self.layers[layer]
        cand = CANDIDATES[candidate]
        if cand.skip:
            return OpSpec("skip", lay.cin, lay.h, lay.h, lay.cout, kernel=1, stride=lay.stride,
                          activation="none")
        return OpSpec("fbnet_block", lay.cin, lay.h, lay.h, lay.cout, kernel=cand.kernel,
                      stride=lay.stride, expansion=cand.expansion, groups=cand.groups)

    def stem_op(self) -> OpSpec:
        return OpSpec("conv_bn_relu", 3, self.input_size, self.input_size, self.stem_channels,
                      kernel=3, stride=self.stem_stride)

    def head_ops(self) -> tuple[OpSpec, OpSpec, OpSpec]:
        """Head 1x1 conv, global average pool and classifier."""
        last, hf = self.layers[-1].cout, self.final_size
        return (
            OpSpec("conv_bn_relu", last, hf, hf, self.head_channels, kernel=1),
            OpSpec("avgpool", self.head_channels, hf, hf, self.head_channels, kernel=hf,
                   activation="none"),
            OpSpec("fc", self.head_channels, 1, 1, self.num_classes, activation="none"),
        )

    def fixed_ops(self) -> tuple[OpSpec, ...]:
        return (self.stem_op(), *self.head_ops())

    def ops(self) -> list[OpSpec]:
        """Every unique op of the space, in a stable order (fixed ops, then layer by layer)."""
        seen: dict[OpSpec, None] = dict.fromkeys(self.fixed_ops())
        for layer in range(self.num_layers):
            for cand in range(self.num_candidates):
                seen.setdefault(self.candidate_op(layer, cand), None)
        return list(seen)

    # ---- networks -------------------------------------------------------------------------

    def check_arch(self, arch: Sequence[int] | str) -> tuple[int, ...]:
        """`arch` as a tuple of candidate indices, or a ValueError saying what is wrong where.

        Takes a sequence of ints (numpy and torch integers too) or a string of digits
        separated by '-', ',' or spaces: the forms of latbench network keys and HELP's CSV.
        Floats and bools are refused rather than truncated, since 1.5 is no candidate.
        """
        want = (f"an arch of {self.name} is {self.num_layers} candidate indices in "
                f"0..{self.num_candidates - 1}")
        if isinstance(arch, str):
            # '-' separates only between digits: "0,-1" is a negative index, not "0,1"
            parts = [p for p in re.split(r"\s*,\s*|\s+|(?<=\d)-(?=\d)", arch.strip()) if p]
            for pos, part in enumerate(parts):
                if not re.fullmatch(r"[0-9]+", part):
                    raise ValueError(f"{want}, separated by '-', ',' or spaces; "
                                     f"position {pos} (from 0) is {part!r} in {arch!r}")
            items: list = [int(p) for p in parts]
        elif isinstance(arch, (bytes, bytearray)) or not hasattr(arch, "__iter__"):
            raise ValueError(f"{want}; got {type(arch).__name__} {arch!r}, not a sequence or string")
        else:
            items = list(arch)
        out = []
        for pos, item in enumerate(items):
            try:
                if isinstance(item, bool):
                    raise TypeError
                out.append(operator.index(item))
            except TypeError:
                raise ValueError(f"{want}; position {pos} (from 0) is {item!r} ({type(item).__name__}), "
                                 f"not an integer") from None
        if len(out) != self.num_layers:
            raise ValueError(f"{want}; got {len(out)} (one per searchable layer, in order)")
        for pos, index in enumerate(out):
            if not 0 <= index < self.num_candidates:
                raise ValueError(f"{want}; position {pos} (from 0) is {index}, out of range")
        return tuple(out)

    def network(self, arch: Sequence[int]) -> Network:
        arch = self.check_arch(arch)
        ops = (self.stem_op(), *(self.candidate_op(i, c) for i, c in enumerate(arch)),
               *self.head_ops())
        return Network(self.name, arch, ops)

    def sample_arch(self, rng: random.Random) -> tuple[int, ...]:
        return tuple(rng.randrange(self.num_candidates) for _ in range(self.num_layers))

    def sample_networks(self, count: int, seed: int = 0) -> list[Network]:
        """`count` distinct archs drawn uniformly with `seed` (the same list for the same seed)."""
        rng = random.Random(seed)
        archs: dict[tuple[int, ...], None] = {}
        while len(archs) < count:
            archs.setdefault(self.sample_arch(rng), None)
        return [self.network(a) for a in archs]

    def build(self, arch: Sequence[int]):
        """A torch module for `arch` (eval mode), made of exactly the ops `network(arch)` lists."""
        from latbench.modules import build_network

        return build_network(self.network(arch))
