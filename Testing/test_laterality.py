"""The laterality rule inside the base function: a lung label is never certified on the other side."""

import numpy as np
import torch

from certseg.core.labels import ABSTAIN
from certseg.model.folder import load_models
from certseg.model.laterality import LateralityRule, midline_columns, rule_for_labels
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest

SIDE, CLASSES = 128, 6
BACKGROUND, RIGHT_LUNG, LEFT_LUNG, HEART, RIGHT_CLAVICLE, LEFT_CLAVICLE = range(6)


def chest(tilt: float = 0.0) -> np.ndarray:
    """Right lung on the viewer's left, heart, left lung; `tilt` columns of shift per row."""
    labels = np.zeros((SIDE, SIDE), dtype=np.int64)
    for row in range(16, 112):
        shift = int(round(tilt * (row - 64)))
        labels[row, 10 + shift:58 + shift] = RIGHT_LUNG
        labels[row, 70 + shift:118 + shift] = LEFT_LUNG
        if row >= 60:
            labels[row, 52 + shift:80 + shift] = HEART
    for row in range(8, 14):
        shift = int(round(tilt * (row - 64)))
        labels[row, 20 + shift:58 + shift], labels[row, 70 + shift:108 + shift] = RIGHT_CLAVICLE, LEFT_CLAVICLE
    return labels


class PaintedNetwork(torch.nn.Module):
    """A network that answers one fixed label map for any input: its top class is certain under any noise."""

    def __init__(self, labels: np.ndarray):
        super().__init__()
        onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), CLASSES).permute(2, 0, 1).float()
        self.register_buffer("logits", 10 * onehot[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1, -1, -1)


def wrong_side_chest() -> np.ndarray:
    """The finding: 12% of the patient's left upper lung labelled as the right lung."""
    labels = chest()
    labels[20:44, 80:110] = RIGHT_LUNG
    return labels


def certify(labels: np.ndarray, rule: LateralityRule | None) -> np.ndarray:
    segmenter = CertifiedSegmenter(PaintedNetwork(labels), CLASSES, None, "cpu", laterality=rule)
    image = np.full((SIDE, SIDE), 0.5, dtype=np.float32)
    certificate = segmenter.certify(image, CertificationRequest(sigma=0.25, n0=5, n=100, alpha=0.001, tau=0.75), noise_seed=0)
    return certificate.labels


def test_without_the_rule_a_stable_wrong_side_is_certified():
    certified = certify(wrong_side_chest(), None)
    assert (certified[20:44, 80:110] == RIGHT_LUNG).all()  # certified, with the full guarantee, on the wrong side


def test_with_the_rule_no_lung_pixel_is_certified_on_the_other_side():
    certified = certify(wrong_side_chest(), LateralityRule())
    assert (certified != ABSTAIN).all()  # the rule is deterministic: nothing becomes uncertain
    assert (certified[20:44, 80:110] == LEFT_LUNG).all()
    columns = np.arange(SIDE)[None, :].repeat(SIDE, 0)
    assert not ((certified == RIGHT_LUNG) & (columns >= 64)).any()
    assert not ((certified == LEFT_LUNG) & (columns < 64)).any()
    # everything else is untouched: heart, clavicles and background keep their labels
    untouched = ~np.isin(wrong_side_chest(), (RIGHT_LUNG, LEFT_LUNG))
    assert (certified[untouched] == wrong_side_chest()[untouched]).all()


def test_the_midline_is_the_mediastinum_and_follows_a_tilted_chest():
    for tilt in (0.0, 0.15):
        labels = chest(tilt)
        lungs = torch.as_tensor(np.isin(labels, (RIGHT_LUNG, LEFT_LUNG)))[None]
        midline = midline_columns(lungs)[0].numpy()
        for row in (20, 64, 100):
            shift = tilt * (row - 64)
            gap_centre = (57 + 70) / 2 + shift if row < 60 else (51 + 80) / 2 + shift  # widest gap: mediastinum
            assert abs(midline[row] - gap_centre) < 4.0
        swapped = labels.copy()
        swapped[30:50, 90:115][swapped[30:50, 90:115] == LEFT_LUNG] = RIGHT_LUNG
        fixed = LateralityRule()(torch.as_tensor(swapped)[None])[0].numpy()
        assert (fixed == labels).all()


def test_a_hole_in_one_lung_does_not_move_the_midline():
    labels = chest()
    labels[20:50, 20:45] = BACKGROUND  # a large opacity in the right upper lung, wider than the mediastinum
    lungs = torch.as_tensor(np.isin(labels, (RIGHT_LUNG, LEFT_LUNG)))[None]
    midline = midline_columns(lungs)[0].numpy()
    assert np.all(np.abs(midline[16:112] - 63.5) < 4.0)


def test_no_lungs_no_change_and_clavicles_follow_the_same_midline():
    labels = np.zeros((1, SIDE, SIDE), dtype=np.int64)
    assert (LateralityRule()(torch.as_tensor(labels)) == 0).all()
    labels = chest()
    labels[8:14, 70:90] = RIGHT_CLAVICLE  # the right clavicle's label across the midline
    fixed = LateralityRule()(torch.as_tensor(labels)[None])[0].numpy()
    assert (fixed[8:14, 70:90] == LEFT_CLAVICLE).all()


def test_the_shipped_model_has_the_rule_and_agrees_with_its_own_sides_on_the_sample():
    from certseg.core.input_map import ModelInputMap
    from certseg.core.window import IntensityWindow
    from certseg.dicom.reading import read_radiograph
    from support.dicom_files import SAMPLE_CR

    models = load_models(with_denoiser=False)
    assert models.laterality == rule_for_labels({"right lung": 1, "left lung": 2, "right clavicle": 4,
                                                 "left clavicle": 5}, models.class_table)
    assert models.laterality.lungs == (1, 2, 6, 7)  # each lung alone and under its clavicle
    stored = read_radiograph(SAMPLE_CR).pixels
    image = ModelInputMap(stored.shape, 256, IntensityWindow.from_percentiles(stored, (0.5, 99.5)))(stored)
    plain = CertifiedSegmenter(models.network, models.num_classes, None, "cpu").segment_clean(image)
    ruled = CertifiedSegmenter(models.network, models.num_classes, None, "cpu",
                               laterality=models.laterality).segment_clean(image)
    assert np.mean(plain != ruled) < 0.01  # the network already keeps its sides on a normal film
    right, left = (models.class_table.mask(ruled, lung) for lung in (RIGHT_LUNG, LEFT_LUNG))
    columns = np.flatnonzero(right.any(axis=0))
    assert columns.max() < np.flatnonzero(left.any(axis=0)).min()
