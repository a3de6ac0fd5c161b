"""The FBNet space in both variants, checked against the layout in shared/data/README.md,
against HW-NAS-Bench's block table, against torch, and against costs computed by hand."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from latbench.spaces import get_space

BLOCKS_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fbnet-hwnasbench" / "blocks.csv"

# ---- the layout of shared/data/README.md, written out layer by layer --------------------
# (cin, input h = w, cout, stride) of the 22 searchable layers.
CIFAR_LAYERS = [
    (16, 32, 16, 1),                                                    # stage 1
    (16, 32, 24, 1), (24, 32, 24, 1), (24, 32, 24, 1), (24, 32, 24, 1),  # stage 2
    (24, 32, 32, 2), (32, 16, 32, 1), (32, 16, 32, 1), (32, 16, 32, 1),  # stage 3
    (32, 16, 64, 2), (64, 8, 64, 1), (64, 8, 64, 1), (64, 8, 64, 1),     # stage 4
    (64, 8, 112, 1), (112, 8, 112, 1), (112, 8, 112, 1), (112, 8, 112, 1),  # stage 5
    (112, 8, 184, 2), (184, 4, 184, 1), (184, 4, 184, 1), (184, 4, 184, 1),  # stage 6
    (184, 4, 352, 1),                                                   # stage 7
]
IMAGENET_LAYERS = [
    (16, 112, 16, 1),
    (16, 112, 24, 2), (24, 56, 24, 1), (24, 56, 24, 1), (24, 56, 24, 1),
    (24, 56, 32, 2), (32, 28, 32, 1), (32, 28, 32, 1), (32, 28, 32, 1),
    (32, 28, 64, 2), (64, 14, 64, 1), (64, 14, 64, 1), (64, 14, 64, 1),
    (64, 14, 112, 1), (112, 14, 112, 1), (112, 14, 112, 1), (112, 14, 112, 1),
    (112, 14, 184, 2), (184, 7, 184, 1), (184, 7, 184, 1), (184, 7, 184, 1),
    (184, 7, 352, 1),
]
# input size, stem stride, map size after the last layer, head channels, classes
VARIANTS = {
    "fbnet-cifar": (32, 1, 4, 1504, 100, CIFAR_LAYERS),
    "fbnet-imagenet": (224, 2, 7, 1984, 1000, IMAGENET_LAYERS),
}
# candidate index -> (kernel, expansion, groups); 8 is skip
CANDIDATES = [(3, 1, 1), (3, 1, 2), (3, 3, 1), (3, 6, 1), (5, 1, 1), (5, 1, 2), (5, 3, 1), (5, 6, 1)]
SPACES = sorted(VARIANTS)


@pytest.mark.parametrize("name", SPACES)
def test_layers_match_the_readme_layout(name):
    size, stem_stride, final, head, classes, layers = VARIANTS[name]
    space = get_space(name)
    assert space.num_layers == 22 and space.num_candidates == 9
    assert [(l.cin, l.h, l.cout, l.stride) for l in space.layers] == layers
    stem = space.stem_op()
    assert (stem.kind, stem.cin, stem.h, stem.cout, stem.kernel, stem.stride) == \
        ("conv_bn_relu", 3, size, 16, 3, stem_stride)
    conv, pool, fc = space.head_ops()
    assert (conv.kind, conv.cin, conv.h, conv.cout, conv.kernel) == ("conv_bn_relu", 352, final, head, 1)
    assert (pool.kind, pool.cin, pool.h, pool.output_shape) == ("avgpool", head, final, (1, head))
    assert (fc.kind, fc.cin, fc.cout) == ("fc", head, classes)


@pytest.mark.parametrize("name", SPACES)
def test_candidates_are_the_nine_fbnet_blocks(name):
    space = get_space(name)
    for layer, (cin, h, cout, stride) in enumerate(VARIANTS[name][5]):
        for cand, (k, e, g) in enumerate(CANDIDATES):
            op = space.candidate_op(layer, cand)
            assert (op.kind, op.cin, op.h, op.w, op.cout, op.kernel, op.expansion, op.groups,
                    op.stride) == ("fbnet_block", cin, h, h, cout, k, e, g, stride)
        skip = space.candidate_op(layer, 8)
        assert (skip.kind, skip.cin, skip.h, skip.cout, skip.stride) == ("skip", cin, h, cout, stride)
        assert skip.is_identity == (cin == cout and stride == 1)


@pytest.mark.parametrize("name", SPACES)
def test_the_space_has_112_unique_ops(name):
    """12 distinct layer configs x 9 candidates + stem, head, avgpool, fc."""
    space = get_space(name)
    ops = space.ops()
    assert len(ops) == 112 == len(set(ops))
    candidate_ops = {space.candidate_op(l, c) for l in range(22) for c in range(9)}
    assert len(candidate_ops) == 12 * 9
    assert set(ops) == candidate_ops | set(space.fixed_ops())
    assert len(space.fixed_ops()) == 4


def _csv_blocks(variant: str) -> set[tuple]:
    """HW-NAS-Bench's raspi4 blocks of one input size, as comparable tuples."""
    cifar_sizes = {"32", "16", "8", "4"}
    found = set()
    with open(BLOCKS_CSV, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["device"] != "raspi4":
                continue
            is_cifar = r["cin"] == "1504" if r["op"] == "fc" else r["h"] in cifar_sizes
            if is_cifar != (variant == "fbnet-cifar"):
                continue
            found.add(_tuple(r["op"], *(int(r[c]) if r[c] else None for c in
                                        ("h", "cin", "cout", "expansion", "kernel", "stride", "groups"))))
    return found


def _tuple(kind, h, cin, cout, expansion, kernel, stride, groups) -> tuple:
    if kind == "fbnet_block":
        return (kind, h, cin, cout, expansion, kernel, stride, groups)
    if kind == "skip":
        return (kind, h, cin, cout, stride)
    if kind == "conv_bn_relu":
        return (kind, h, cin, cout, kernel, stride)
    if kind == "avgpool":
        return (kind, h, cin, cout)
    return (kind, cin, cout)


@pytest.mark.parametrize("name", SPACES)
def test_the_space_is_the_hw_nas_bench_space(name):
    """Every block config HW-NAS-Bench measured for this input size is in our space and vice versa
    (HW-NAS-Bench also lists a 10-class classifier for CIFAR-10; our CIFAR variant has 100)."""
    if not BLOCKS_CSV.exists():
        pytest.skip(f"{BLOCKS_CSV} not present (shared data folder)")
    ours = {_tuple(op.kind, op.h, op.cin, op.cout, op.expansion, op.kernel, op.stride, op.groups)
            for op in get_space(name).ops()}
    theirs = _csv_blocks(name) - {("fc", 1504, 10)}
    assert len(theirs) == 112
    assert ours - theirs == set(), "ops of our space missing from HW-NAS-Bench"
    assert theirs - ours == set(), "HW-NAS-Bench blocks missing from our space"


def _archs(name: str) -> list[tuple[int, ...]]:
    rng = random.Random(7)
    archs = [(0,) * 22, (8,) * 22, tuple(i % 9 for i in range(22)),
             tuple(rng.randrange(9) for _ in range(22))]
    return archs if name == "fbnet-cifar" else archs[1:3]


@pytest.mark.parametrize("name", SPACES)
def test_whole_networks_run_in_torch_with_matching_shapes(name):
    torch = pytest.importorskip("torch")
    from latbench.modules import example_input

    size, classes = VARIANTS[name][0], VARIANTS[name][4]
    space = get_space(name)
    for arch in _archs(name):
        net = space.network(arch)
        model = space.build(arch)
        assert len(net.ops) == len(model) == 26
        x = example_input((1, 3, size, size))
        with torch.no_grad():
            y = x
            for i, (op, module) in enumerate(zip(net.ops, model)):
                assert tuple(y.shape) == op.input_shape, (arch, i, op.key)
                y = module(y)
                assert tuple(y.shape) == op.output_shape, (arch, i, op.key)
                if i + 1 < len(net.ops):
                    assert op.output_shape == net.ops[i + 1].input_shape, (arch, i)
            assert tuple(y.shape) == (1, classes)
            assert torch.equal(model(x), y)


def test_bad_archs_are_refused():
    space = get_space("fbnet-cifar")
    with pytest.raises(ValueError, match="22 candidate indices"):
        space.network([0] * 21)
    with pytest.raises(ValueError, match="0..8"):
        space.network([0] * 21 + [9])


@pytest.mark.parametrize("arch, message", [
    ([0] * 21, r"22 candidate indices in 0\.\.8; got 21 "),
    ([0] * 23, r"; got 23 "),
    ([0] * 5 + [9] + [0] * 16, r"position 5 \(from 0\) is 9, out of range"),
    ([0] * 3 + [-1] + [0] * 18, r"position 3 \(from 0\) is -1, out of range"),
    ([1.5] + [0] * 21, r"position 0 \(from 0\) is 1\.5 \(float\), not an integer"),
    ([0, 2.0] + [0] * 20, r"position 1 \(from 0\) is 2\.0 \(float\), not an integer"),
    ([0, 0, True] + [0] * 19, r"position 2 \(from 0\) is True \(bool\)"),
    ([0] * 21 + ["1"], r"position 21 \(from 0\) is '1' \(str\)"),
    ("7 8 1 8 x 0", r"separated by '-', ',' or spaces; position 4 \(from 0\) is 'x'"),
    ("7 8 1.5", r"position 2 \(from 0\) is '1\.5'"),
    ("0,-1," + ",".join(["0"] * 20), r"position 1 \(from 0\) is '-1'"),  # not read as 1
    ("-1" + "-0" * 21, r"position 0 \(from 0\) is '-1'"),
    (" ".join(["1"] * 21), r"; got 21 "),
    ("", r"; got 0 "),
    (7, r"got int 7, not a sequence or string"),
])
def test_bad_archs_say_what_and_where(arch, message):
    with pytest.raises(ValueError, match=message):
        get_space("fbnet-cifar").check_arch(arch)


def test_archs_come_as_ints_numpy_ints_or_separated_digits():
    np = pytest.importorskip("numpy")
    space = get_space("fbnet-cifar")
    arch = (7, 8, 1, 8, 0, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0)
    help_csv = " ".join(map(str, arch))  # HELP's arch column
    key = "-".join(map(str, arch))  # a latbench network key's arch
    forms = [list(arch), np.asarray(arch), list(np.asarray(arch, dtype=np.int32)), help_csv, key,
             ",".join(map(str, arch)), ", ".join(map(str, arch)), f"  {help_csv}\n",
             pytest.importorskip("torch").tensor(arch)]
    for form in forms:
        assert space.check_arch(form) == arch, form
        assert type(space.check_arch(form)[0]) is int
    assert space.network(help_csv) == space.network(arch)
    assert space.network(key).key == f"net:fbnet-cifar:{key}"


def test_sampled_networks_are_seeded_and_distinct():
    space = get_space("fbnet-cifar")
    a = space.sample_networks(20, seed=3)
    assert [n.arch for n in a] == [n.arch for n in space.sample_networks(20, seed=3)]
    assert [n.arch for n in a] != [n.arch for n in space.sample_networks(20, seed=4)]
    assert len({n.key for n in a}) == 20
    assert all(len(n.arch) == 22 and all(0 <= i < 9 for i in n.arch) for n in a)


# ---- costs by hand ----------------------------------------------------------------------
# A conv producing a Ho x Wo x Cout map from Cin channels with a k x k kernel in `groups`
# groups does Ho*Wo*Cin*Cout*k*k/groups multiply-accumulates and has Cin*Cout*k*k/groups
# weights (no bias: BatchNorm follows, 2 parameters per channel). A global average pool
# accumulates each input element once; fc: Cin*Cout MACs, Cin*Cout + Cout parameters.

def conv(ho: int, cin: int, cout: int, k: int, groups: int = 1) -> tuple[int, int]:
    return ho * ho * cin * cout * k * k // groups, cin * cout * k * k // groups


def bn(c: int) -> tuple[int, int]:
    return 0, 2 * c


def block(cin: int, h: int, cout: int, s: int, k: int, e: int, g: int) -> tuple[int, int]:
    """1x1 group conv + BN, k x k depthwise (stride s) + BN, 1x1 group conv + BN."""
    mid, ho = cin * e, h // s
    parts = [conv(h, cin, mid, 1, g), bn(mid), conv(ho, mid, mid, k, groups=mid), bn(mid),
             conv(ho, mid, cout, 1, g), bn(cout)]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def skip(cin: int, h: int, cout: int, s: int) -> tuple[int, int]:
    if cin == cout and s == 1:
        return 0, 0
    macs, params = conv(h // s, cin, cout, 1)
    return macs, params + 2 * cout


def hand_costs(name: str, arch: tuple[int, ...]) -> tuple[int, int]:
    size, stem_stride, final, head, classes, layers = VARIANTS[name]
    parts = [conv(size // stem_stride, 3, 16, 3), bn(16)]
    for (cin, h, cout, s), cand in zip(layers, arch):
        parts.append(skip(cin, h, cout, s) if cand == 8 else block(cin, h, cout, s, *CANDIDATES[cand]))
    parts += [conv(final, 352, head, 1), bn(head), (final * final * head, 0),
              (head * classes, head * classes + classes)]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def test_costs_of_the_all_k3_e1_cifar_net_by_hand():
    """Spelled out: stem 32*32*3*16*9 MACs, the 22 k3_e1 blocks, head 4*4*352*1504, pool, fc."""
    net = get_space("fbnet-cifar").network([0] * 22)
    stem = 32 * 32 * 3 * 16 * 9
    layer0 = 32 * 32 * 16 * 16 + 32 * 32 * 16 * 9 + 32 * 32 * 16 * 16
    head = 4 * 4 * 352 * 1504 + 4 * 4 * 1504 + 1504 * 100
    macs, params = hand_costs("fbnet-cifar", (0,) * 22)
    assert net.ops[0].macs == stem
    assert net.ops[1].macs == layer0
    assert sum(op.macs for op in net.ops[-3:]) == head
    assert net.macs == macs
    assert net.flops == 2 * macs
    assert net.params == params
    # stem 3*16*9 + 2*16; fc 1504*100 + 100
    assert net.ops[0].params == 464 and net.ops[-1].params == 150500


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("arch", [(0,) * 22, tuple(i % 9 for i in range(22)),
                                  (7, 5, 3, 1, 8, 6, 4, 2, 0, 8, 1, 3, 5, 7, 8, 2, 4, 6, 1, 8, 3, 5)])
def test_network_costs_match_a_hand_computation(name, arch):
    net = get_space(name).network(arch)
    macs, params = hand_costs(name, arch)
    assert (net.macs, net.params, net.flops) == (macs, params, 2 * macs)


def test_network_params_equal_the_torch_model():
    pytest.importorskip("torch")
    space = get_space("fbnet-cifar")
    arch = (7, 5, 3, 1, 8, 6, 4, 2, 0, 8, 1, 3, 5, 7, 8, 2, 4, 6, 1, 8, 3, 5)
    model = space.build(arch)
    assert space.network(arch).params == sum(p.numel() for p in model.parameters())
    assert hand_costs("fbnet-cifar", arch)[1] == sum(p.numel() for p in model.parameters())


def test_every_op_of_a_network_is_an_op_of_the_space():
    space = get_space("fbnet-imagenet")
    ops = set(space.ops())
    for net in space.sample_networks(10, seed=1):
        assert set(net.ops) <= ops


def test_predictors_take_the_arch_forms_and_refuse_bad_ones():
    predictors = pytest.importorskip("predictors")
    model = predictors.load("flops")
    arch = [7, 8, 1, 8, 0, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    expected = model.predict_network("fbnet-cifar", arch)
    assert model.predict_network("fbnet-cifar", " ".join(map(str, arch))) == expected
    assert list(model.predict_networks("fbnet-cifar", ["-".join(map(str, arch)), arch])) == [expected] * 2
    with pytest.raises(ValueError, match=r"position 0 \(from 0\) is 1\.5 \(float\), not an integer"):
        model.predict_network("fbnet-cifar", [1.5] + [0] * 21)
