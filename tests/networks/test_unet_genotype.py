import json
import os

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from monai_nasscam.networks import POSITIONS, Genotype, NASSCAMUNet, add_attention, arch_parameters
from monai_nasscam.networks.attentions import attention_names

from tests.utils import REPO

BUNDLE = REPO / "bundle"
SMALL = (4, 8, 8, 8, 8)  # tiny widths keep the tests fast; the paper's are (16, 32, 64, 128, 256)


def _derive(net):
    """A genotype with distinct, non-trivial choices per module (alpha pushed towards random ops)."""
    with torch.no_grad():
        for alpha in arch_parameters(net):
            alpha.normal_(0, 1)
    return Genotype.from_model(net)


def test_paper_network_sizes():
    net = NASSCAMUNet(2, 3, 4)
    assert len(net.arch_parameters()) == 16  # 8 modules x (SAM, CAM)
    total = sum(p.numel() for p in net.parameters())
    assert 7.8e6 < total < 8.0e6  # the reference's 7.95 M holds about 0.2 M dead `none` convolutions
    assert sum(p.numel() for p in NASSCAMUNet(2, 3, 4, attention="none").parameters()) == 3_647_524


@pytest.mark.parametrize("attention", attention_names(aliases=False, blocks_only=True))
def test_every_attention_2d(attention):
    net = NASSCAMUNet(2, 3, 4, attention=attention, features=SMALL)
    assert net(torch.randn(2, 3, 32, 48)).shape == (2, 4, 32, 48)


@pytest.mark.parametrize("attention", ["nas-scam-p", "nas-scam-s", "cbam", "scse"])
def test_3d(attention):
    net = NASSCAMUNet(3, 1, 2, attention=attention, features=SMALL)
    assert net(torch.randn(2, 1, 16, 16, 32)).shape == (2, 2, 16, 16, 32)


def test_parameter_partition():
    net = NASSCAMUNet(2, 3, 4, features=SMALL)
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert {id(p) for p in arch} | {id(p) for p in weights} == {id(p) for p in net.parameters()}
    assert len(arch) + len(weights) == len(list(net.parameters()))


def test_synchronous_alphas_are_independent_and_shared_alphas_are_one():
    x, target = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 32, 32)
    for synchronous, count in ((True, 8), (False, 1)):
        net = NASSCAMUNet(2, 3, 4, attention="nas-sam", synchronous=synchronous, features=SMALL)
        assert len(net.arch_parameters()) == count
        opt = torch.optim.SGD(net.arch_parameters(), lr=10.0)
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), target).backward()
        opt.step()
        alphas = [b.cell.alpha.detach() for b in net.attention_blocks().values()]
        distinct = {tuple(a.flatten().tolist()) for a in alphas}
        assert len(distinct) == count
        genotype = Genotype.from_model(net)
        assert genotype.synchronous is synchronous
    assert len(NASSCAMUNet(2, 3, 4, synchronous=False, features=SMALL).arch_parameters()) == 2  # one SAM, one CAM


def test_fixed_network_equals_supernet_with_one_hot_alphas():
    supernet = NASSCAMUNet(2, 3, 4, features=SMALL, dropout=0.0)
    genotype = _derive(supernet)
    x = torch.randn(2, 3, 32, 32)
    supernet.train()(x)  # non-trivial running statistics
    with torch.no_grad():
        for position, block in supernet.attention_blocks().items():
            for kind in ("sam", "cam"):
                cell = getattr(block, kind).cell
                index = torch.tensor([cell.candidates.index(o) for o in genotype.entry(position)[kind]])
                cell.alpha.copy_(1e4 * torch.nn.functional.one_hot(index, len(cell.candidates)))
    fixed = genotype_net = NASSCAMUNet(2, 3, 4, genotype=genotype, features=SMALL, dropout=0.0)
    assert fixed.load_state_dict(supernet.state_dict(), strict=False).missing_keys == []
    assert genotype_net.arch_parameters() == []
    for mode in ("train", "eval"):
        getattr(supernet, mode)(), getattr(fixed, mode)()
        torch.testing.assert_close(fixed(x), supernet(x), atol=1e-4, rtol=1e-4)


def test_genotype_json_round_trip(tmp_path):
    genotype = _derive(NASSCAMUNet(2, 3, 4, features=SMALL))
    path = genotype.save(tmp_path / "g" / "genotype.json")
    data = json.loads(path.read_text())
    assert data["format"] == "nasscam-genotype" and data["version"] == 3
    assert data["edges"] == [[0, 1], [0, 2], [1, 2], [0, 3], [1, 3], [2, 3]]
    assert [m["position"] for m in data["modules"]] == list(POSITIONS)
    loaded = Genotype.load(path)
    assert loaded == genotype
    assert list(tmp_path.joinpath("g").iterdir()) == [path]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
    net = NASSCAMUNet(2, 3, 4, genotype=str(path), features=SMALL)
    assert Genotype.from_dict(data).modules == [dict(m) for m in data["modules"]]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)


def test_exclude_none():
    net = NASSCAMUNet(2, 3, 4, attention="nas-sam", features=SMALL)
    with torch.no_grad():
        net.arch_parameters()[0][:, 0] = 5.0  # `none` wins every edge of module down1
    assert Genotype.from_model(net).entry("down1")["sam"] == ["none"] * 6
    assert "none" not in Genotype.from_model(net, exclude_none=True).entry("down1")["sam"]


def _valid(tmp_path):
    return _derive(NASSCAMUNet(2, 3, 4, features=SMALL)).to_dict()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["modules"][2]["sam"].__setitem__(1, "conv7"), "down3: unknown sam operation"),
        (lambda d: d["modules"].pop(), r"'modules' must list the 8 positions down1, down2, down3, down4, up1, up2, up3, "
                                       r"up4 once each, in this order; got 7 module\(s\): missing up4\.$"),
        (lambda d: d["modules"].pop(5), r"got 7 module\(s\): missing up2\.$"),
        (lambda d: d["modules"].__setitem__(6, dict(d["modules"][5])), r"got 8 module\(s\): missing up3; up2 listed more "
                                                                         r"than once\.$"),
        (lambda d: d["modules"][0].__setitem__("position", "down0"), r"missing down1; unknown position\(s\) \['down0'\]\.$"),
        (lambda d: d["modules"].__setitem__(2, "conv3"), r"module 2 must be a JSON object with a 'position', got 'conv3'\."),
        (lambda d: d["modules"][0]["cam"].pop(), "down1: 'cam' must list 6 operations"),
        (lambda d: d.__setitem__("version", 9), "unknown genotype version 9"),
        (lambda d: d.__setitem__("format", "darts"), "'format' must be"),
        (lambda d: d.__setitem__("attention", "cbam"), "'attention' must be one of"),
        (lambda d: d.__setitem__("edges", [[0, 1]]), "'edges' must be"),
        (lambda d: d["modules"].reverse(), r"got 8 module\(s\): listed in the order \['up4', 'up3', "),
        # recorded alphas that do not fit the operations: named by cell, with what is wrong
        (lambda d: d["alphas"]["up2"]["cam"].pop(), r"the alphas of the cam cell at up2 must be 6 rows \(one per edge\) of "
                                                    r"8 weights \(one per cam operation: none, conv1, conv3, conv5, conv9, "
                                                    r"conv15, dil_conv3, dil_conv5\), got 5 rows\.$"),
        (lambda d: d["alphas"]["down3"]["sam"][4].append(0.0), r"the alphas of the sam cell at down3 must be 6 rows \(one "
                                                               r"per edge\) of 6 weights .*; edge 4 \(1->3\) has 7 weights\.$"),
        (lambda d: d["alphas"]["down1"].__setitem__("sam", d["alphas"]["down1"]["cam"]), r"sam cell at down1 must be 6 rows"),
        (lambda d: d["alphas"]["up1"]["sam"].__setitem__(0, [0.5] * 6), r"the alphas of the sam cell at up1 must be softmax "
                                                                        r"weights \(each in \[0, 1\], each edge's summing to "
                                                                        r"1\); edge 0 \(0->1\) has weights from 0\.5 to 0\.5 "
                                                                        r"summing to 3\.$"),
        (lambda d: d["alphas"]["up1"]["sam"].__setitem__(1, [2.0, -1.0, 0, 0, 0, 0]), r"edge 1 \(0->2\) has weights from -1 to 2 "),
        (lambda d: d["alphas"].__setitem__("up5", {}), r"'alphas': unknown position 'up5'; positions are \['down1', "),
        (lambda d: d["alphas"]["up3"].__setitem__("ecam", []), r"'alphas' of up3: 'ecam' is not a cell kind of nas-scam-p "
                                                              r"\(it searches \['sam', 'cam'\]\)\.$"),
        (lambda d: d.__setitem__("synchronous", False), "same operations at all 8 positions"),
    ],
)
def test_bad_genotype_files_name_the_problem(tmp_path, mutate, message):
    data = _valid(tmp_path)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        Genotype.load(path)
    assert str(path) in str(err.value)


def test_genotype_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Genotype.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Genotype.load(tmp_path / "broken.json")
    genotype = Genotype.from_dict(_valid(tmp_path))
    with pytest.raises(ValueError, match="does not match the genotype's 'nas-scam-p'"):
        NASSCAMUNet(2, 3, 4, attention="nas-sam", genotype=genotype)


def test_network_argument_errors():
    with pytest.raises(ValueError, match="unknown attention 'nas-foo'"):
        NASSCAMUNet(2, 3, 4, attention="nas-foo")
    with pytest.raises(ValueError, match="divisible by 16"):
        NASSCAMUNet(2, 3, 4, features=SMALL)(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match="5 widths"):
        NASSCAMUNet(2, 3, 4, features=(8, 16))


def test_derived_network_traces(tmp_path):
    net = NASSCAMUNet(2, 3, 4, genotype=_derive(NASSCAMUNet(2, 3, 4, features=SMALL)), features=SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(net, x)
    torch.jit.save(traced, tmp_path / "net.ts")
    torch.testing.assert_close(torch.jit.load(tmp_path / "net.ts")(x), net(x))
    for attention in ("none", "cbam", "scse"):
        baseline = NASSCAMUNet(2, 3, 4, attention=attention, features=SMALL).eval()
        torch.testing.assert_close(torch.jit.script(baseline)(x), baseline(x))


def test_add_attention_to_basic_unet():
    x = torch.randn(2, 3, 32, 32)
    net = add_attention(BasicUNet(2, 3, 4, features=(4, 8, 8, 8, 8, 4)), "nas-scam-p")
    assert len(arch_parameters(net)) == 16
    assert net(x).shape == (2, 4, 32, 32)
    genotype = _derive(net)
    fixed = add_attention(BasicUNet(2, 3, 4, features=(4, 8, 8, 8, 8, 4)), "nas-scam-p", genotype=genotype)
    assert arch_parameters(fixed) == [] and fixed(x).shape == (2, 4, 32, 32)
    shared = add_attention(BasicUNet(2, 3, 4, features=(4, 8, 8, 8, 8, 4)), "nas-sam", synchronous=False)
    assert len(arch_parameters(shared)) == 1
    with pytest.raises(ValueError, match="already has attention"):
        add_attention(net, "cbam")


@pytest.mark.parametrize("attention", ["cbam", "scse"])
def test_basic_unet_with_baseline_attention_scripts(attention):
    """torch.jit.script works on add_attention's wrappers (down blocks and UpCat); NAS blocks trace (as NASSCAMUNet)."""
    net = add_attention(BasicUNet(2, 3, 4, features=(4, 8, 8, 8, 8, 4)), attention).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_bundle_config_example_builds_the_network():
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "basic_unet_attention.yaml")
    net = parser.get_parsed_content("network_def")
    assert len(arch_parameters(net)) == 16
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)
