"""The attention registry: one registration adds an attention everywhere (the U-Net, train.yaml's choices and
messages, the comparison's models), NAS blocks expose their cells, and a plugin module registered through a second
config file (``+imports``) trains with ``train.yaml --attention <name>`` through the real bundle."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from monai_nasscam.networks import attentions
from monai_nasscam.networks.attentions import (
    attention_block,
    attention_names,
    block_cells,
    get_attention,
    register_attention,
    share_alphas,
)
from tests.utils import REPO

TRAIN = str(REPO / "bundle" / "configs" / "train.yaml")


class ChannelGate(nn.Module):
    """x * sigmoid(w), one learned weight per channel."""

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(in_channels))

    def forward(self, x):
        return x * torch.sigmoid(self.gate).view(1, -1, *([1] * (x.ndim - 2)))


#: the plugin a user would write: one class and one registration (the class above, as a module of its own)
PLUGIN = (
    "import torch\nimport torch.nn as nn\nfrom monai_nasscam.networks import register_attention\n\n\n"
    + inspect.getsource(ChannelGate)
    + '\n\nregister_attention("toy-gate", label="U-Net + toy gate", block=ChannelGate, replace=True)\n'
)


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(attentions, "_REGISTRY", dict(attentions._REGISTRY))
    monkeypatch.setattr(attentions, "_ALIASES", dict(attentions._ALIASES))
    return attentions


def test_builtin_names_labels_and_kinds():
    assert attention_names() == (
        "unet", "none", "deeplabv3plus", "cbam", "scse", "nas-sam", "nas-cam", "nas-scam-s", "nas-scam-p"
    )
    assert attention_names(searchable=True) == ("nas-sam", "nas-cam", "nas-scam-s", "nas-scam-p")
    blocks = attention_names(aliases=False, blocks_only=True)
    assert {name: get_attention(name).cells for name in blocks} == {
        "none": (), "cbam": (), "scse": (), "nas-sam": ("sam",), "nas-cam": ("cam",),
        "nas-scam-s": ("sam", "cam"), "nas-scam-p": ("sam", "cam"),
    }
    assert get_attention(" UNet ").name == "none" and get_attention("none").public_name == "unet"
    assert get_attention("deeplabv3plus").network is not None and "deeplabv3plus" not in blocks
    with pytest.raises(ValueError, match="unknown attention 'transformer'.*'nas-scam-p'"):
        get_attention("transformer")
    with pytest.raises(ValueError, match="whole network, not a block"):
        attention_block("deeplabv3plus", 2, 8)


def test_one_registration_reaches_the_unet_train_choices_and_compare(registry):
    from monai_nasscam.compare import comparison_models
    from monai_nasscam.networks import NASSCAMUNet
    from monai_nasscam.networks.run_folder import build_network, resolve_network_choice

    register_attention("toy-gate", label="U-Net + toy gate", block=ChannelGate)
    assert attention_names(searchable=False)[-1] == "toy-gate" and get_attention("toy-gate").cells == ()
    net = NASSCAMUNet(attention="toy-gate", features=(4, 4, 8, 8, 16))
    assert all(isinstance(b, ChannelGate) for b in net.attention_blocks().values())
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    assert resolve_network_choice("toy-gate") == ("toy-gate", None, None)  # a baseline: no genotype
    assert isinstance(build_network("toy-gate", features=[4, 4, 8, 8, 16]), NASSCAMUNet)
    assert comparison_models()["toy-gate"] == ("U-Net + toy gate", "toy-gate", None)
    with pytest.raises(ValueError, match="already registered"):
        register_attention("toy-gate", label="again", block=ChannelGate)
    with pytest.raises(ValueError, match="exactly one of block"):
        register_attention("toy-2", label="toy", block=ChannelGate, network=ChannelGate)


def test_nas_blocks_expose_their_cells_and_share_alphas():
    block = attention_block("nas-scam-s", 2, 8)
    cells = block_cells(block)
    assert list(cells) == ["sam", "cam"] and block.attention_name == "nas-scam-s"
    assert cells["sam"] is block.sam.cell and cells["cam"] is block.cam.cell
    assert block_cells(attention_block("cbam", 2, 8)) == {}
    blocks = [attention_block("nas-scam-p", 2, c) for c in (8, 16, 32)]
    share_alphas(blocks)
    for kind in ("sam", "cam"):
        assert len({id(block_cells(b)[kind].alpha) for b in blocks}) == 1
    assert block_cells(blocks[0])["sam"].alpha is not block_cells(blocks[0])["cam"].alpha


def test_a_plugin_attention_trains_through_train_yaml(tmp_path):
    """train.yaml with --attention toy-gate, registered by a module a second config file imports (+imports)."""
    from monai_nasscam.data import generate_dataset, prepare_dataset

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_attention_plugin.py").write_text(PLUGIN)
    plugin_config = tmp_path / "plugin.yaml"
    plugin_config.write_text("+imports:\n- $import toy_attention_plugin\n")
    generate_dataset(tmp_path / "raw", n_images=6, n_patients=3, seed=0, min_size=64, max_size=64)
    prepare_dataset(tmp_path / "raw", tmp_path / "prep", workers=0, progress=False)
    run = tmp_path / "run"
    settings = {
        "dataset_dir": str(tmp_path / "prep"), "output_dir": str(run), "attention": "toy-gate", "epochs": 1,
        "roi_size": [32, 32], "features": [4, 4, 8, 8, 16], "num_workers": 0, "epoch_crops": 4, "progress": False,
        "sw_batch_size": 16,
    }
    args = [a for k, v in settings.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, (list, bool)) else str(v))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([TRAIN, str(plugin_config)]), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), str(REPO)])}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((run / "network.json").read_text())["attention"] == "toy-gate"
    state = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    gates = [k for k in state if k.endswith("attention.gate")]
    assert len(gates) == 8  # one gate at each of the 8 positions
