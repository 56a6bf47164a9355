"""DeepLab V3+ baseline (Chen et al., ECCV 2018) built from MONAI parts: MONAI's ResNet encoder, no pretraining."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

__all__ = ["DeepLabV3Plus", "DeepLabASPP", "DeepLabDecoder", "RESNET_BACKBONES"]

#: backbone name -> (MONAI ResNet block, blocks per stage)
RESNET_BACKBONES: dict[str, tuple[type[ResNetBlock | ResNetBottleneck], list[int]]] = {
    "resnet10": (ResNetBlock, [1, 1, 1, 1]),
    "resnet18": (ResNetBlock, [2, 2, 2, 2]),
    "resnet34": (ResNetBlock, [3, 4, 6, 3]),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
    "resnet101": (ResNetBottleneck, [3, 4, 23, 3]),
}

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Replace the stride of a MONAI ResNet stage by dilation (the "atrous" backbone trick), in place."""
    for module in stage.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.stride = (1,) * len(module.stride)
            if module.kernel_size[0] > 1:
                module.dilation = (dilation,) * len(module.dilation)
                module.padding = tuple(dilation * (k // 2) for k in module.kernel_size)


class DeepLabASPP(nn.Module):
    """
    Atrous spatial pyramid pooling of DeepLab V3/V3+: a 1x1 conv branch, one 3x3 atrous conv branch per rate and
    an image-pooling branch (global average pooling, 1x1 conv, broadcast back), concatenated and projected by a
    1x1 conv, then dropout. Conv branches are conv -> norm -> act (MONAI ``Convolution``); the image-pooling branch
    is conv (with bias) -> act without normalisation, so that it also trains with batch size 1.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: channels of every branch and of the output.
        atrous_rates: dilation rates of the 3x3 branches.
        norm: normalisation of the conv branches and the projection (MONAI ``Norm`` factory name/args).
        act: activation (MONAI ``Act`` factory name/args).
        dropout: dropout probability after the projection.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        norm: tuple | str = "batch",
        act: tuple | str = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches = [
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, act=act, norm=norm, bias=False)
        ]
        for rate in atrous_rates:
            branches.append(
                Convolution(
                    spatial_dims, in_channels, out_channels, kernel_size=3, dilation=rate, padding=rate,
                    act=act, norm=norm, bias=False,
                )
            )
        self.branches = nn.ModuleList(branches)
        self.image_pool = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=True),
            get_act_layer(act),
        )
        self.project = Convolution(
            spatial_dims, out_channels * (len(branches) + 1), out_channels, kernel_size=1, act=act, norm=norm,
            dropout=dropout if dropout > 0 else None, bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        outputs.append(F.interpolate(pooled, size=x.shape[2:], mode="nearest"))
        return self.project(torch.cat(outputs, dim=1))


class DeepLabDecoder(nn.Module):
    """
    DeepLab V3+ decoder: the low-level features are projected to ``low_level_out`` channels by a 1x1 conv, the
    ASPP output is upsampled (bi/trilinear) to their size, both are concatenated and refined by two 3x3 convs.

    Args:
        spatial_dims: number of spatial dimensions.
        low_level_channels: channels of the low-level (stride 4) features.
        aspp_channels: channels of the ASPP output.
        low_level_out: channels of the low-level projection (48 in the paper).
        out_channels: channels of the two 3x3 convs.
        norm: normalisation (MONAI ``Norm`` factory).
        act: activation (MONAI ``Act`` factory).
    """

    def __init__(
        self,
        spatial_dims: int,
        low_level_channels: int,
        aspp_channels: int,
        low_level_out: int = 48,
        out_channels: int = 256,
        norm: tuple | str = "batch",
        act: tuple | str = "relu",
    ) -> None:
        super().__init__()
        self.interp_mode = _INTERP_MODES[spatial_dims]
        self.low_level = Convolution(
            spatial_dims, low_level_channels, low_level_out, kernel_size=1, act=act, norm=norm, bias=False
        )
        self.fuse = nn.Sequential(
            Convolution(spatial_dims, low_level_out + aspp_channels, out_channels, kernel_size=3, act=act,
                        norm=norm, bias=False),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, act=act, norm=norm, bias=False),
        )

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.low_level(low_level)
        x = F.interpolate(x, size=low_level.shape[2:], mode=self.interp_mode, align_corners=False)
        return self.fuse(torch.cat([x, low_level], dim=1))


class DeepLabV3Plus(nn.Module):
    """
    DeepLab V3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
    Segmentation", ECCV 2018) for 2-D and 3-D, from MONAI parts, as the NAS-SCAM paper's baseline:

    - encoder: MONAI's ``ResNet`` (randomly initialised, no pretrained weights, no torchvision): 7x7 stride-2 stem
      and max-pool (stride 4), then four stages; the stride of the last stage (``output_stride=16``) or of the last
      two (``output_stride=8``, dilations 2 and 4) is replaced by dilation, so the deepest features are at 1/16
      (or 1/8) of the input size;
    - :py:class:`DeepLabASPP` with atrous rates 6/12/18 (+ 1x1 and image-pooling branches) on the deepest
      features (the DeepLab papers double the rates for ``output_stride=8``: pass ``atrous_rates=(12, 24, 36)``);
    - :py:class:`DeepLabDecoder` with the stride-4 features of the first stage (48-channel projection);
    - a 1x1 conv classifier, upsampled (bi/trilinear) to the input size.

    Plain (not depthwise-separable) convolutions throughout. Any input size works (outputs are resized to the
    input). Returns logits (B, out_channels, *spatial): apply sigmoid (multi-label, the project default) or
    softmax outside, as for ``NASSCAMUNet``. Scripts with ``torch.jit.script``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3; 1 also works).
        in_channels: input channels (3 for RGB).
        out_channels: output channels (4 classes for MoNuSAC's sigmoid head).
        backbone: one of ``RESNET_BACKBONES`` (``resnet10/18/34`` basic blocks, ``resnet50/101`` bottlenecks).
        widen_factor: multiplies the ResNet widths (64, 128, 256, 512).
        output_stride: 16 or 8.
        atrous_rates: ASPP rates.
        aspp_channels: channels of the ASPP branches and output.
        low_level_channels: channels of the decoder's low-level projection.
        decoder_channels: channels of the decoder's 3x3 convs.
        norm: normalisation of the ASPP and decoder (MONAI's ResNet itself uses batch norm).
        act: activation of the ASPP and decoder.
        dropout: dropout after the ASPP projection.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        backbone: str = "resnet18",
        widen_factor: float = 1.0,
        output_stride: int = 16,
        atrous_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        norm: tuple | str = "batch",
        act: tuple | str = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if spatial_dims not in _INTERP_MODES:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if backbone not in RESNET_BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(RESNET_BACKBONES)}, got '{backbone}'.")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}.")
        block, layers = RESNET_BACKBONES[backbone]
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_stride = output_stride
        self.interp_mode = _INTERP_MODES[spatial_dims]
        self.encoder = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=widen_factor,
            feed_forward=False,
            shortcut_type="B",
            bias_downsample=False,
        )
        if output_stride == 8:
            _dilate_stage(self.encoder.layer3, 2)
            _dilate_stage(self.encoder.layer4, 4)
        else:
            _dilate_stage(self.encoder.layer4, 2)
        widths = [int(w * widen_factor) * block.expansion for w in (64, 128, 256, 512)]
        self.aspp = DeepLabASPP(spatial_dims, widths[3], aspp_channels, atrous_rates, norm=norm, act=act,
                                dropout=dropout)
        self.decoder = DeepLabDecoder(spatial_dims, widths[0], aspp_channels, low_level_channels, decoder_channels,
                                      norm=norm, act=act)
        self.classifier = Conv[Conv.CONV, spatial_dims](decoder_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}.")
        size = x.shape[2:]
        enc = self.encoder
        h = enc.maxpool(enc.act(enc.bn1(enc.conv1(x))))
        low_level = enc.layer1(h)
        h = enc.layer4(enc.layer3(enc.layer2(low_level)))
        h = self.decoder(self.aspp(h), low_level)
        h = self.classifier(h)
        return F.interpolate(h, size=size, mode=self.interp_mode, align_corners=False)
