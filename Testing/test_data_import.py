"""Public datasets in the layout of their public copies, the import into CertSeg's dataset folder,
its fixed split, the partial-label loss and the training augmentation (tiny files the tests write)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from certseg.commands import main
from certseg.dicom.codes import CLASS_TABLE
from certseg.errors import ParameterError
from certseg.research.data import Sample, import_dataset, load_dataset, split_of
from certseg.research.data.augment import augment_batch, geometry
from certseg.research.train import TrainConfig, annotated_structures, partial_label_loss, train_segmenter
from support.cli import run_certseg

SIZE = 128  # image side of the fake copy; its masks are stored at half resolution, as in the copy
STRUCTURES = {"right_lung": (64, 40, 22), "left_lung": (64, 88, 22), "heart": (80, 64, 12),
              "right_clavicle": (40, 40, 8), "left_clavicle": (40, 88, 8)}  # clavicles cross the lungs' apices


def _disc(shape, centre, radius):
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2


def write_jsrt_png_copy(root, names):
    """The github:AnishHota/JSRT-Segmentation layout: inverted-palette PNGs, half-size GIF (or PNG) masks."""
    images = root / "JSRT" / "jsrt_images" / "images"
    images.mkdir(parents=True)
    palette = [v for level in range(255, -1, -1) for v in (level, level, level)]  # index 0 shows white
    for number, name in enumerate(names):
        index = np.tile(np.arange(SIZE, dtype=np.uint8), (SIZE, 1))  # index = column: bright bone on the left
        picture = Image.fromarray(index, mode="P")
        picture.putpalette(palette)
        picture.save(images / f"{name}.IMG.png")
        for structure, (row, col, radius) in STRUCTURES.items():
            disc = _disc((SIZE // 2, SIZE // 2), (row // 2, col // 2), radius // 2)
            mask = Image.fromarray(disc.astype(np.uint8) * 255)
            as_png = number % 2 == 1 and structure == "heart"  # the copy has both; read whichever is there
            folder = root / "JSRT" / "masks" / "masks" / (f"{structure}_png" if as_png else structure)
            folder.mkdir(parents=True, exist_ok=True)
            mask.save(folder / (f"{name}.png" if as_png else f"{name}.gif"))


def test_split_is_fixed_by_the_image_number():
    assert [split_of(n) for n in ("JPCLN001", "JPCLN002", "JPCLN003", "JPCNN011", "JPCNN154")] == \
        ["validation", "test", "train", "validation", "test"]
    assert split_of("MCUCXR_0004_0") == "test" and split_of("CHNCXR_0013_1") == "train"


def test_public_png_copy_imports_with_its_split_laterality_and_card(tmp_path):
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001", "JPCLN002", "JPCLN003"])
    card = import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", origin="test copy", progress=False)
    assert card["counts"] == {"train": 1, "validation": 1, "test": 1, "acceptance": 0} and card["skipped"] == {}
    assert "redistribution" in card["terms"] and card["origin"] == "test copy"
    written = json.loads((tmp_path / "jsrt" / "dataset.json").read_text())
    assert [(e["name"], e["split"]) for e in written["images"]] == \
        [("JPCLN001", "validation"), ("JPCLN002", "test"), ("JPCLN003", "train")]

    (train,) = load_dataset(tmp_path / "jsrt", ("train",))
    assert train.name == "JPCLN003" and train.stored.shape == train.labels.shape == (SIZE, SIZE)
    assert train.stored[0, 0] == 255 and train.stored[0, -1] == 255 - (SIZE - 1)  # read through the palette
    # Masks at half resolution land on the image grid; the patient's right is on the viewer's left.
    assert train.labels[64, 30] == 1 and train.labels[64, 98] == 2 and train.labels[80, 64] == 3
    assert train.labels[34, 40] == 4 and train.labels[34, 88] == 5 and train.labels[120, 5] == 0
    # Each structure as drawn: a lung under its clavicle is the class standing for both, and the lungs'
    # seam with the heart is heart (SCR's lungs exclude the heart).
    assert CLASS_TABLE.structures_of[train.labels[46, 40]] == (1, 4)
    assert CLASS_TABLE.structures_of[train.labels[46, 88]] == (2, 5)
    assert train.labels[80, 56] == 3 and written["classes"] == CLASS_TABLE.card()
    assert load_dataset(tmp_path / "jsrt", ("test",))[0].labels[80, 64] == 3  # heart read from heart_png


def test_a_dataset_folder_with_clavicles_painted_over_lungs_is_refused_in_one_line(tmp_path, capsys):
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN003"])
    import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", progress=False)
    card = json.loads((tmp_path / "jsrt" / "dataset.json").read_text())
    (tmp_path / "jsrt" / "dataset.json").write_text(json.dumps({**card, "format": "certseg-dataset-1"}))
    assert main(["train", "segmenter", "--data", str(tmp_path / "jsrt"), "--out", str(tmp_path / "m"),
                 "--steps", "1", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "painted each clavicle over its lung" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "m").exists()


def write_covid_qu_ex_copy(root):
    """The COVID-QU-Ex 'Infection Segmentation Data' layout: 8-bit images, one mask for both lungs."""
    both = _disc((64, 64), (32, 18), 12) | _disc((64, 64), (32, 46), 12)
    merged = _disc((64, 64), (32, 32), 20)
    unequal = _disc((64, 64), (32, 18), 14) | _disc((64, 64), (32, 50), 4)
    stacked = _disc((64, 64), (16, 32), 10) | _disc((64, 64), (48, 32), 10)
    cases = [("Train", "COVID-19", "covid_3.png", both), ("Train", "Normal", "Normal (11).png", both),
             ("Train", "Non-COVID", "Non_COVID (5).png", merged), ("Train", "Non-COVID", "Non_COVID (7).png", unequal),
             ("Train", "COVID-19", "covid_9.png", stacked), ("Val", "Normal", "Normal (4).png", both),
             ("Test", "COVID-19", "covid_20.png", None)]
    base = root / "Infection Segmentation Data"
    for fold, klass, name, mask in cases:
        for kind, picture in (("images", np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))),
                              ("lung masks", None if mask is None else mask.astype(np.uint8) * 255)):
            if picture is not None:
                (base / fold / klass / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture).save(base / fold / klass / kind / name)


def test_covid_qu_ex_splits_its_lungs_by_side_and_counts_what_it_cannot_split(tmp_path):
    write_covid_qu_ex_copy(tmp_path / "copy")
    card = import_dataset("covid-qu-ex", tmp_path / "copy", tmp_path / "covid", origin="test copy", progress=False)
    assert card["counts"] == {"train": 1, "validation": 1, "test": 1, "acceptance": 1}
    assert card["skipped"] == {"lung sizes too unequal": ["non_covid_7"], "lungs not side by side": ["covid_9"],
                               "one lung region": ["non_covid_5"]}
    splits = {e["name"]: e["split"] for e in card["images"]}
    assert splits == {"covid_3": "train", "normal_11": "validation", "normal_4": "test", "covid_20": "acceptance"}
    assert "Val/ -> test" in card["split_rule"] and "Tahir" in card["terms"]
    (train,) = load_dataset(tmp_path / "covid", ("train",))
    assert train.annotated == (1, 2) and train.source == "covid-qu-ex"
    assert train.labels[32, 18] == 1 and train.labels[32, 46] == 2 and train.labels[5, 5] == 0
    (unlabelled,) = load_dataset(tmp_path / "covid", ("acceptance",))
    assert unlabelled.annotated == () and not unlabelled.labels.any()


def test_equal_dataset_shares_give_each_dataset_half_of_the_draws():
    from certseg.research.train import sampling_weights

    samples = [Sample(f"a{i}", np.zeros((2, 2)), np.zeros((2, 2), np.uint8), source="jsrt") for i in range(2)]
    samples += [Sample(f"b{i}", np.zeros((2, 2)), np.zeros((2, 2), np.uint8), source="covid") for i in range(98)]
    weights = sampling_weights(samples, "equal")
    assert weights[:2].sum() == pytest.approx(0.5) and weights.sum() == pytest.approx(1.0)
    assert sampling_weights(samples, "by-size") == pytest.approx(np.full(100, 0.01))


def test_import_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "import", "jsrt-png", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "no images found" in error and len(error.splitlines()) == 1 and not (tmp_path / "out").exists()
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001"])
    (tmp_path / "copy" / "JSRT" / "masks" / "masks" / "heart" / "JPCLN001.gif").unlink()
    assert main(["data", "import", "jsrt-png", str(tmp_path / "copy"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "mask missing" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_existing_dataset_folder_is_kept_unless_overwrite(tmp_path):
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001"])
    (tmp_path / "jsrt").mkdir()
    (tmp_path / "jsrt" / "mine.txt").write_text("keep")
    assert main(["data", "import", "jsrt-png", str(tmp_path / "copy"), "--out", str(tmp_path / "jsrt"), "--quiet"]) == 2
    assert (tmp_path / "jsrt" / "mine.txt").read_text() == "keep"


def _logits_favouring(labels: np.ndarray, num_classes: int = CLASS_TABLE.num_classes) -> torch.Tensor:
    return 8.0 * F.one_hot(torch.as_tensor(labels), num_classes).permute(2, 0, 1)[None].float()


def test_partial_label_loss_treats_unannotated_structures_as_unknown():
    truth = np.zeros((32, 32), np.int64)
    truth[8:24, 4:14], truth[8:24, 18:28] = 1, 2  # lungs
    with_heart = truth.copy()
    with_heart[20:30, 14:18] = 3  # the network also draws a heart where the lung-only truth says 0
    under_clavicle = truth.copy()
    under_clavicle[8:10, 4:14] = 6  # ... and a clavicle over the right lung's apex: still lung
    labels = torch.as_tensor(truth)[None, None]
    lung_only = annotated_structures([Sample("mc", np.zeros((1, 1)), np.zeros((1, 1), np.uint8), (1, 2))])
    everything = annotated_structures([Sample("jsrt", np.zeros((1, 1)), np.zeros((1, 1), np.uint8))])
    assert lung_only.tolist() == [[True, True, False, False, False]]

    plain = partial_label_loss(_logits_favouring(truth), labels, lung_only)
    assert partial_label_loss(_logits_favouring(with_heart), labels, lung_only) == pytest.approx(float(plain), abs=1e-4)
    assert partial_label_loss(_logits_favouring(under_clavicle), labels, lung_only) == pytest.approx(float(plain),
                                                                                                    abs=1e-4)
    assert partial_label_loss(_logits_favouring(with_heart), labels, everything) > plain + 0.01
    assert partial_label_loss(_logits_favouring(under_clavicle), labels, everything) > plain + 0.01
    lungs_missed = truth.copy()
    lungs_missed[8:24, 4:14] = 0  # background where the lung-only truth marks the right lung
    assert partial_label_loss(_logits_favouring(lungs_missed), labels, lung_only) > plain + 1.0  # Dice alone: +0.5
    # With every structure annotated the cross-entropy term is the ordinary one, and Dice is taken per whole
    # structure: a structure's probability is the sum over the classes standing for it.
    truth[8:10, 18:28] = 7  # the left lung's apex under the left clavicle
    labels = torch.as_tensor(truth)[None, None]
    logits = torch.randn(1, CLASS_TABLE.num_classes, 32, 32, generator=torch.Generator().manual_seed(0))
    probabilities = logits.softmax(1)[0]
    dice = []
    for structure in (1, 2, 3, 4, 5):
        members = [c for c, m in enumerate(CLASS_TABLE.structures_of) if structure in m]
        p = sum(probabilities[c] for c in members)
        t = torch.as_tensor(np.isin(truth, members)).float()
        dice.append(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    expected = F.cross_entropy(logits, labels[:, 0]) + torch.stack(dice).mean()
    assert float(partial_label_loss(logits, labels, everything)) == pytest.approx(float(expected), rel=1e-5)


def test_geometry_moves_labels_with_the_image():
    labels = torch.zeros(4, 1, 64, 64, dtype=torch.int64)
    labels[:, :, 16:48, 10:30], labels[:, :, 20:44, 36:56] = 1, 2
    images = labels.float() / 2
    moved, moved_labels = geometry(images, labels, np.random.default_rng(0), probability=1.0)
    assert not torch.equal(moved_labels, labels)
    agree = (moved * 2).round().long() == moved_labels
    assert agree.float().mean() > 0.97  # bilinear and nearest differ only along edges


def test_augmented_batches_stay_in_range_and_shape():
    images = torch.rand(6, 1, 64, 64)
    labels = torch.randint(0, 6, (6, 1, 64, 64))
    out, out_labels = augment_batch(images, labels, np.random.default_rng(1))
    assert out.shape == images.shape and out_labels.shape == labels.shape and out_labels.dtype == labels.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and not torch.equal(out, images)


def test_painted_opacities_stay_inside_the_lungs_and_devices_only_brighten():
    from certseg.research.data.augment import devices, opacities

    labels = torch.zeros(8, 1, 64, 64, dtype=torch.long)
    labels[:, :, 16:48, 8:28], labels[:, :, 16:48, 36:56] = 1, 2
    labels[:, :, 30:50, 28:36] = 3
    images = torch.where(labels > 0, 0.15, 0.7) * (labels != 3) + 0.9 * (labels == 3)
    painted = opacities(images, labels, np.random.default_rng(2), lung_classes=(1, 2), probability=1.0)
    changed = (painted - images).abs() > 1e-6
    assert changed.any() and not changed[labels >= 3].any() and not changed[labels == 0].any()
    assert float((painted - images)[changed].mean()) > 0  # opaque lung is brighter than aerated lung
    with_devices = devices(images, np.random.default_rng(3), probability=1.0)
    assert (with_devices >= images).all() and (with_devices > images).any()


def test_segmenter_training_keeps_the_best_validation_weights(tmp_path):
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001", "JPCLN003", "JPCLN005"])
    import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", progress=False)
    config = TrainConfig(steps=3, batch_size=2, checkpoint_every=1, device="cpu", validate_every=1, channels=(8, 16))
    card = train_segmenter(load_dataset(tmp_path / "jsrt", ("train",)), tmp_path / "models", config, progress=False,
                           validation=load_dataset(tmp_path / "jsrt", ("validation",)))
    validation = card.training["validation"]
    assert validation["images"] == ["JPCLN001"] and [h["step"] for h in validation["history"]] == [1, 2, 3]
    best = max(validation["history"], key=lambda h: h["mean_dice"])
    assert validation["best_step"] == best["step"] and card.architecture.kwargs["channels"] == [8, 16]


def test_ood_fit_names_its_images_and_hooks_every_encoder_level(tmp_path):
    from certseg.model.folder import load_models
    from certseg.model.networks import build_segmenter_network
    from certseg.model.ood import DEFAULT_LAYERS, encoder_layers
    from certseg.research.train import fit_ood, segmenter_architecture

    assert encoder_layers(build_segmenter_network(segmenter_architecture(None))) == DEFAULT_LAYERS
    assert len(encoder_layers(build_segmenter_network(segmenter_architecture((8, 16, 32, 64, 128))))) == 5
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001", "JPCLN003", "JPCLN005", "JPCLN011", "JPCLN007"])
    import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", progress=False)
    config = TrainConfig(steps=1, batch_size=2, device="cpu", channels=(4, 8, 16))
    train_segmenter(load_dataset(tmp_path / "jsrt", ("train",)), tmp_path / "models", config, progress=False)
    card = fit_ood(tmp_path / "models", load_dataset(tmp_path / "jsrt", ("train",)),
                   load_dataset(tmp_path / "jsrt", ("validation",)), 0.05, augmented_copies=3, negatives_per_kind=2)
    detector = card.ood_detector
    assert detector.training_images == ("JPCLN003", "JPCLN005", "JPCLN007") and detector.augmented_copies == 3
    models = load_models(tmp_path / "models", with_denoiser=False)
    assert len(models.ood_detector.spectrum.layers) == 3  # two levels and the bottom of the 3-level network
    assert set(detector.ranges) == set(models.ood_detector.ranges) and len(models.ood_detector.scores) == 3


def test_ood_fit_takes_real_negative_folders_and_names_each_image(tmp_path):
    """A hospital's own non-chest images (PNG or DICOM, a CT frame among them) join the negatives, named in the card."""
    import shutil

    from pydicom.data import get_testdata_file

    from certseg.research.train import fit_ood

    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001", "JPCLN003", "JPCLN005", "JPCLN011", "JPCLN007"])
    import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", progress=False)
    train_segmenter(load_dataset(tmp_path / "jsrt", ("train",)), tmp_path / "models",
                    TrainConfig(steps=1, batch_size=2, device="cpu", channels=(4, 8, 16)), progress=False)
    negatives = tmp_path / "our laterals"
    (negatives / "more").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (80, 60), dtype=np.uint8)).save(negatives / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 90), dtype=np.uint8)).save(negatives / "more" / "b.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), negatives / "ct.dcm")
    (negatives / "notes.txt").write_text("not an image")
    card = fit_ood(tmp_path / "models", load_dataset(tmp_path / "jsrt", ("train",)),
                   load_dataset(tmp_path / "jsrt", ("validation",)), 0.05, negatives_per_kind=2,
                   real_negatives=(negatives,))
    assert "3 real images of the folder 'our laterals': a.png, ct.dcm, more/b.png" in card.ood_detector.negatives
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError, match="no PNG, JPEG or DICOM image"):
        fit_ood(tmp_path / "models", load_dataset(tmp_path / "jsrt", ("train",)),
                load_dataset(tmp_path / "jsrt", ("validation",)), 0.05, real_negatives=(tmp_path / "empty",))


def test_train_ood_refuses_a_negatives_path_that_is_not_a_folder_at_once(tmp_path):
    write_jsrt_png_copy(tmp_path / "copy", ["JPCLN001", "JPCLN003"])
    import_dataset("jsrt-png", tmp_path / "copy", tmp_path / "jsrt", progress=False)
    (tmp_path / "x.png").write_bytes(b"")
    run = run_certseg("train", "ood", "--data", tmp_path / "jsrt", "--out", tmp_path / "m", "--negatives",
                      tmp_path / "x.png")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "x.png: --negatives takes folders of images" in run.stderr


def test_the_cosine_schedule_runs_from_the_rate_to_the_final_rate_by_step_alone():
    from certseg.research.train import _set_learning_rate

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    config = TrainConfig(steps=100, learning_rate=1e-3, final_learning_rate=1e-5)
    rates = []
    for step in range(101):
        _set_learning_rate(optimizer, config, step)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5) and rates[50] == pytest.approx(5.05e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    _set_learning_rate(optimizer, TrainConfig(steps=100, learning_rate=1e-3), 50)
    assert optimizer.param_groups[0]["lr"] == rates[-1]  # no final rate: the rate is left alone
