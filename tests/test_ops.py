"""OpSpec: identity (frozen, hashable, canonical key) and features checked against torch."""

from __future__ import annotations

import dataclasses
import math

import pytest

from latbench.ops import FEATURE_NAMES, Network, OpSpec, is_network_key
from latbench.spaces import SPACES, get_space

SPACE_NAMES = sorted(SPACES)


def all_ops(name: str) -> list[OpSpec]:
    return get_space(name).ops()


BLOCK = OpSpec("fbnet_block", 16, 32, 32, 24, kernel=5, stride=2, expansion=3, groups=1)


def test_opspec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BLOCK.cin = 8  # type: ignore[misc]


def test_opspec_is_hashable_and_equal_by_value():
    twin = OpSpec("fbnet_block", 16, 32, 32, 24, kernel=5, stride=2, expansion=3, groups=1)
    other = dataclasses.replace(BLOCK, kernel=3)
    assert twin == BLOCK and hash(twin) == hash(BLOCK)
    assert len({BLOCK, twin, other}) == 2
    assert {BLOCK: "x"}[twin] == "x"
    assert twin.key == BLOCK.key and other.key != BLOCK.key


def test_key_reads_like_its_fields():
    assert BLOCK.key == "fbnet_block:1x16x32x32:c24:k5:s2:e3:g1:relu:float32"


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_key_round_trips_for_every_op(space):
    ops = all_ops(space)
    keys = [op.key for op in ops]
    assert len(set(keys)) == len(ops), "two different ops share a key"
    for op in ops:
        back = OpSpec.from_key(op.key)
        assert back == op
        assert back.key == op.key


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_network_key_round_trips(space):
    sp = get_space(space)
    net = sp.network([3, 8, 1] + [0] * 19)
    assert is_network_key(net.key) and not is_network_key(BLOCK.key)
    assert Network.parse_key(net.key) == (space, net.arch)
    with pytest.raises(ValueError, match="not a network key"):
        Network.parse_key(BLOCK.key)
    with pytest.raises(ValueError, match="bad arch"):
        Network.parse_key(f"net:{space}:0-x-1")


@pytest.mark.parametrize("key, part", [
    ("fbnet_block:1x16x32x32:c24:k5:s2:e3:g1:relu", "9 ':'-separated parts"),
    ("fbnet_block:2x16x32x32:c24:k5:s2:e3:g1:relu:float32", "batch must be 1"),
    ("fbnet_block:1x16x32:c24:k5:s2:e3:g1:relu:float32", "1x16x32"),
    ("fbnet_block:1x16x32x32:x24:k5:s2:e3:g1:relu:float32", "'x24' should start with 'c'"),
    ("fbnet_block:1x16x32x32:c24:k5:t2:e3:g1:relu:float32", "'t2' should start with 's'"),
    ("fbnet_block:1x16x32x32:c24:k5:s2:e3:gg:relu:float32", "gg"),
    ("conv3d:1x16x32x32:c24:k5:s2:e3:g1:relu:float32", "kind"),
    ("fbnet_block:1x16x32x32:c24:k5:s2:e3:g1:gelu:float32", "activation"),
    ("fbnet_block:1x16x32x32:c24:k5:s2:e3:g1:relu:float64", "dtype"),
    ("fbnet_block:1x16x32x32:c24:k0:s2:e3:g1:relu:float32", "kernel"),
    ("fbnet_block:1x16x32x32:c24:k5:s2:e3:g5:relu:float32", "groups=5"),
])
def test_bad_key_raises_value_error_naming_the_part(key, part):
    with pytest.raises(ValueError) as info:
        OpSpec.from_key(key)
    assert part in str(info.value)


@pytest.mark.parametrize("key", [
    "fbnet_block:1x16x32x32:c024:k5:s2:e3:g1:relu:float32",
    "fbnet_block:1x16x32x32:c+24:k5:s2:e3:g1:relu:float32",
    "fbnet_block:1x 16x32x32:c24:k5:s2:e3:g1:relu:float32",
])
def test_a_non_canonical_key_is_refused(key):
    """One op, one key: a key the store would never match must not parse as if it were valid."""
    with pytest.raises(ValueError, match="canonical form is 'fbnet_block:1x16x32x32:c24"):
        OpSpec.from_key(key)


@pytest.mark.parametrize("field, value", [
    ("kind", "pool"), ("cin", 0), ("h", -1), ("cout", 2.5), ("stride", True), ("expansion", 0),
    ("activation", "swish"), ("dtype", "bfloat16"),
])
def test_bad_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(BLOCK, **{field: value})


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups=2"):
        OpSpec("fbnet_block", 15, 8, 8, 16, groups=2)


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_features_have_the_declared_names_and_consistent_bytes(space):
    for op in all_ops(space):
        f = op.features()
        assert tuple(f) == FEATURE_NAMES
        assert f["flops"] == 2 * f["macs"]
        assert f["input_bytes"] == math.prod(op.input_shape) * 4
        assert f["output_bytes"] == math.prod(op.output_shape) * 4
        assert f["weight_bytes"] == f["params"] * 4
        assert f["bytes_moved"] == f["input_bytes"] + f["output_bytes"] + f["weight_bytes"]


@pytest.fixture(scope="module")
def cifar_modules() -> dict:
    """The torch module of every fbnet-cifar op, built once for the tests below."""
    pytest.importorskip("torch")
    from latbench.modules import build_module

    return {op: build_module(op) for op in all_ops("fbnet-cifar")}


def test_params_equal_the_torch_module_for_every_fbnet_cifar_op(cifar_modules):
    for op, module in cifar_modules.items():
        torch_params = sum(p.numel() for p in module.parameters())
        assert op.params == torch_params, op.key
        assert op.features()["params"] == torch_params, op.key


def _check_output_shapes(modules: dict) -> None:
    """Run each module on an input of the op's input shape; the output must have its output shape."""
    import torch

    from latbench.modules import example_input

    with torch.no_grad():
        for op, module in modules.items():
            y = module(example_input(op.input_shape))
            assert tuple(y.shape) == op.output_shape, op.key
            f = op.features()
            if len(op.output_shape) == 4:
                assert (f["ho"], f["wo"]) == tuple(y.shape[2:]), op.key


def test_output_shape_equals_the_torch_output_for_every_fbnet_cifar_op(cifar_modules):
    _check_output_shapes(cifar_modules)


def test_output_shape_equals_the_torch_output_for_every_fbnet_imagenet_op():
    pytest.importorskip("torch")
    from latbench.modules import build_module

    _check_output_shapes({op: build_module(op) for op in all_ops("fbnet-imagenet")})


def test_macs_equal_the_multiplies_torch_performs_for_every_fbnet_cifar_op(cifar_modules):
    """Count the MACs of the real module with forward hooks (conv: out elements x Cin/groups x
    k x k; linear: in x out; global pool: one add per input element) and compare."""
    import torch

    from latbench.modules import GlobalAvgPool, example_input

    def count(module, x) -> int:
        total = 0

        def hook(mod, inputs, output):
            nonlocal total
            if isinstance(mod, torch.nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                total += output.numel() * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, torch.nn.Linear):
                total += mod.in_features * mod.out_features
            elif isinstance(mod, GlobalAvgPool):
                total += inputs[0].numel()

        handles = [m.register_forward_hook(hook) for m in module.modules()]
        with torch.no_grad():
            module(x)
        for h in handles:
            h.remove()
        return total

    for op, module in cifar_modules.items():
        assert op.macs == count(module, example_input(op.input_shape)), op.key


@pytest.mark.parametrize("spec", [
    OpSpec("conv_bn_relu", 8, 6, 6, 8, kernel=3), OpSpec("conv_bn_relu", 8, 6, 6, 8, kernel=3, activation="none"),
    OpSpec("fbnet_block", 8, 6, 6, 8, expansion=3), OpSpec("fbnet_block", 8, 6, 6, 8, expansion=3, activation="none"),
    OpSpec("fc", 8, 1, 1, 4, activation="none"), OpSpec("fc", 8, 1, 1, 4, activation="relu"),
    OpSpec("skip", 8, 6, 6, 16, stride=2, activation="relu"),
])
def test_the_module_has_the_activation_its_key_names(spec):
    torch = pytest.importorskip("torch")
    from latbench.modules import build_module, example_input

    module = build_module(spec)
    has_relu = any(isinstance(m, torch.nn.ReLU) for m in module.modules())
    assert has_relu == (spec.activation == "relu")
    out = module(example_input(spec.input_shape))
    if spec.kind != "fbnet_block":  # a block's ReLUs are inside it, before its last convolution
        assert (bool((out < 0).any()) is False) == (spec.activation == "relu")
