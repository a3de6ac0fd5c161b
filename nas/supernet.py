"""The FBNet supernet: every searchable layer mixes its candidates with Gumbel-softmax weights.

Blocks are built with `latbench.modules`, so what is trained is the block that was
measured. `width_mult` scales the channels of the trained supernet only (to make a
search affordable on a small CPU); costs always come from the full-width space.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from latbench.modules import build_module
from latbench.ops import OpSpec

CHANNEL_DIVISOR = 4


def gumbel_softmax(theta: torch.Tensor, tau: float, batch: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, layers, candidates) weights: softmax((theta + g) / tau) with fresh Gumbel noise
    g for every sample, so one batch trains many archs at once."""
    where = generator.device if generator is not None else theta.device
    u = torch.rand((batch, *theta.shape), generator=generator, device=where).to(theta.device)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    return torch.softmax((theta.unsqueeze(0) + g) / tau, dim=-1)


def temperature(epoch: int, initial: float = 5.0, decay: float = 0.956) -> float:
    """Gumbel-softmax temperature of `epoch` (0-based): initial * decay ** epoch."""
    return initial * decay ** epoch


def channel_map(channels: Sequence[int], width_mult: float) -> dict[int, int]:
    """Scaled channel counts: multiples of CHANNEL_DIVISOR, and distinct where the originals are,
    so a projection skip stays a projection and an identity stays an identity."""
    out: dict[int, int] = {}
    last = 0
    for c in sorted(set(channels)):
        scaled = max(CHANNEL_DIVISOR, int(round(c * width_mult / CHANNEL_DIVISOR)) * CHANNEL_DIVISOR)
        scaled = max(scaled, last + CHANNEL_DIVISOR)
        out[c] = last = scaled
    return out


def space_channels(space, width_mult: float) -> dict[int, int]:
    """`channel_map` over every channel count the space's ops use."""
    fixed = space.fixed_ops()
    channels = [op.cout for op in fixed[:-1]] + [lay.cout for lay in space.layers]  # not fc's classes
    channels += [lay.cin for lay in space.layers]
    return channel_map(channels, width_mult)


def scaled_spec(spec: OpSpec, channels: dict[int, int]) -> OpSpec:
    """`spec` with its channels mapped; the stem keeps its 3 input channels."""
    if spec.kind == "conv_bn_relu" and spec.cin == 3:
        return replace(spec, cout=channels[spec.cout])
    if spec.kind == "fc":
        return replace(spec, cin=channels[spec.cin])
    return replace(spec, cin=channels[spec.cin], cout=channels[spec.cout])


def _reset(modules: nn.Module, seed: int) -> None:
    """Fresh weights from `seed`: build_module seeds each block by its key (for stable
    exports), but a search wants independent weights per layer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules.modules():
            if module is not modules and hasattr(module, "reset_parameters"):
                module.reset_parameters()


class MixedLayer(nn.Module):
    """The candidates of one layer; output = sum over candidates of weight x candidate(x)."""

    def __init__(self, candidates: Sequence[nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`weights` is (batch, candidates)."""
        out = None
        for c, module in enumerate(self.candidates):
            y = weights[:, c].view(-1, 1, 1, 1) * module(x)
            out = y if out is None else out + y
        return out


class Supernet(nn.Module):
    """Stem, mixed layers, head, pool and classifier of an FBNet space, plus theta."""

    def __init__(self, space, num_classes: int, *, width_mult: float = 1.0, seed: int = 0):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0; got {width_mult}")
        self.space = space
        self.width_mult = width_mult
        self.channels = space_channels(space, width_mult)
        stem, head, pool, fc = space.fixed_ops()
        self.stem = build_module(scaled_spec(stem, self.channels))
        self.mixed = nn.ModuleList(
            MixedLayer([build_module(scaled_spec(space.candidate_op(l, c), self.channels))
                        for c in range(space.num_candidates)])
            for l in range(space.num_layers))
        self.head = build_module(scaled_spec(head, self.channels))
        self.pool = build_module(scaled_spec(pool, self.channels))
        self.fc = build_module(replace(scaled_spec(fc, self.channels), cout=num_classes))
        _reset(self, seed)
        self.theta = nn.Parameter(torch.zeros(space.num_layers, space.num_candidates))

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "theta"]

    def probs(self) -> torch.Tensor:
        """Candidate probabilities per layer: softmax(theta), (layers, candidates)."""
        return torch.softmax(self.theta, dim=-1)

    def forward(self, x: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits with per-sample Gumbel-softmax mixtures at temperature `tau`."""
        weights = gumbel_softmax(self.theta, tau, x.shape[0], generator)
        return self.forward_weights(x, weights)

    def forward_weights(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits for explicit (batch, layers, candidates) mixture weights."""
        x = self.stem(x)
        for l, layer in enumerate(self.mixed):
            x = layer(x, weights[:, l])
        return self.fc(self.pool(self.head(x)))

    def forward_arch(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """Logits of one arch: only its chosen candidate runs in each layer (shared weights)."""
        x = self.stem(x)
        for layer, c in zip(self.mixed, arch):
            x = layer.candidates[c](x)
        return self.fc(self.pool(self.head(x)))

    def argmax_arch(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.theta.detach().argmax(dim=-1).tolist())

    def sample_archs(self, count: int, generator: torch.Generator | None = None) -> list[tuple[int, ...]]:
        """`count` archs drawn from the candidate probabilities (one categorical draw per layer)."""
        probs = self.probs().detach().cpu()
        draws = torch.multinomial(probs, count, replacement=True, generator=generator)  # (layers, count)
        return [tuple(int(i) for i in draws[:, k].tolist()) for k in range(count)]


class ArchNet(nn.Sequential):
    """One arch of the space at the supernet's width, trained alone (for accuracy comparisons)."""

    def __init__(self, space, arch: Sequence[int], num_classes: int, *, width_mult: float = 1.0,
                 seed: int = 0):
        channels = space_channels(space, width_mult)
        network = space.network(arch)
        specs = [scaled_spec(op, channels) for op in network.ops]
        specs[-1] = replace(specs[-1], cout=num_classes)
        super().__init__(*(build_module(s) for s in specs))
        _reset(self, seed)
        self.arch = network.arch
