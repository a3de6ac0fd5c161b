"""Torch modules for OpSpecs and networks. Imports torch; keep it off cheap paths."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from latbench.ops import Network, OpSpec


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def activation(spec: OpSpec) -> nn.Module:
    """The spec's activation (a module without weights, so the seeded weights stay the same)."""
    return nn.ReLU(inplace=True) if spec.activation == "relu" else nn.Identity()


class FBNetBlock(nn.Module):
    """1x1 group conv -> shuffle -> kxk depthwise -> 1x1 group conv, residual when shapes match."""

    def __init__(self, spec: OpSpec):
        super().__init__()
        mid, g, k = spec.mid_channels, spec.groups, spec.kernel
        layers: list[nn.Module] = [
            nn.Conv2d(spec.cin, mid, 1, groups=g, bias=False), nn.BatchNorm2d(mid), activation(spec),
        ]
        if g > 1:
            layers.append(ChannelShuffle(g))
        layers += [
            nn.Conv2d(mid, mid, k, stride=spec.stride, padding=k // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid), activation(spec),
            nn.Conv2d(mid, spec.cout, 1, groups=g, bias=False), nn.BatchNorm2d(spec.cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = spec.cin == spec.cout and spec.stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_module(spec: OpSpec) -> nn.Module:
    """The module for one op, in eval mode, with weights seeded by its key (same key, same file)."""
    seed = int(hashlib.sha256(spec.key.encode()).hexdigest()[:8], 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_module(spec)


def _build_module(spec: OpSpec) -> nn.Module:
    if spec.dtype != "float32":
        raise ValueError(f"only float32 ops can be built; got dtype {spec.dtype!r}")
    if spec.kind == "conv_bn_relu":
        k = spec.kernel
        mod: nn.Module = nn.Sequential(
            nn.Conv2d(spec.cin, spec.cout, k, stride=spec.stride, padding=k // 2,
                      groups=spec.groups, bias=False),
            nn.BatchNorm2d(spec.cout), activation(spec),
        )
    elif spec.kind == "fbnet_block":
        mod = FBNetBlock(spec)
    elif spec.kind == "skip":
        mod = nn.Identity() if spec.is_identity else nn.Sequential(
            nn.Conv2d(spec.cin, spec.cout, 1, stride=spec.stride, bias=False), nn.BatchNorm2d(spec.cout))
    elif spec.kind == "avgpool":
        mod = GlobalAvgPool()
    elif spec.kind == "fc":
        mod = nn.Linear(spec.cin, spec.cout)
    else:  # pragma: no cover - OpSpec validates kinds
        raise ValueError(spec.kind)
    if spec.kind in ("skip", "avgpool", "fc") and spec.activation == "relu":  # no activation of their own
        mod = nn.Sequential(mod, nn.ReLU())
    return mod.eval()


def build_network(network: Network) -> nn.Sequential:
    return nn.Sequential(*(build_module(op) for op in network.ops)).eval()


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)
