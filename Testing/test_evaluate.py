"""Certified Dice of whole, possibly overlapping structures, abstained pixels counted as errors."""

import numpy as np
import pytest

from certseg.core.labels import ClassTable
from certseg.dicom.codes import CLASS_TABLE

from certseg.commands.research import CONFIGURATION_NAMES
from certseg.research.evaluation.metrics import dice_per_structure, wrong_side_shares
from certseg.research.evaluation.protocol import Configuration, Evaluation, RatioRecord, Row
from certseg.research.evaluation.writers import markdown_table, ratio_summary, write_outputs


def reference_dice(predicted, truth, c):
    p, t = predicted == c, truth == c
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else 2 * np.sum(p & t) / total


def test_dice_matches_the_definition_on_random_maps_with_abstention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 4, size=(20, 20))
        predicted = np.where(rng.uniform(size=(20, 20)) < 0.8, truth, rng.integers(-1, 4, size=(20, 20)))
        ours = dice_per_structure(predicted, truth, *[ClassTable.one_class_per_structure(4)] * 2)
        np.testing.assert_allclose(ours, [reference_dice(predicted, truth, c) for c in (1, 2, 3)], rtol=1e-6)


def test_abstaining_on_a_structure_costs_its_dice_and_empty_structures_score_one():
    truth = np.zeros((10, 10), dtype=int)
    truth[:, :5] = 1
    predicted = truth.copy()
    predicted[:, :2] = -1  # abstain on 2 of the 5 columns of structure 1
    dice = dice_per_structure(predicted, truth, *[ClassTable.one_class_per_structure(3)] * 2)
    assert dice[0] == pytest.approx(2 * 30 / (30 + 50))
    assert dice[1] == 1.0  # structure 2 absent from both


def test_outputs_are_written(tmp_path):
    rows = [Row("clean", None, "right lung", 0.97, None, None, None, None),
            Row("segmenter alone", 0.25, "right lung", 0.97, 0.91, 0.05, 1.2, 110),
            Row("segmenter alone", 0.5, "right lung", 0.97, 0.85, 0.09, 1.1, 70)]
    ratios = [RatioRecord("a", "segmenter alone", 0.25, 0.45, 0.46, 0.40, 0.48),
              RatioRecord("b", "segmenter alone", 0.25, 0.55, 0.50, 0.45, 0.58)]
    write_outputs(Evaluation(rows, ratios), tmp_path, 0.75)
    assert (tmp_path / "evaluation.csv").read_text().count("\n") == 4
    assert "| segmenter alone | 0.25 | right lung | 0.970 | 0.910 | 5.0% | 1.2 |" in markdown_table(rows)
    assert (tmp_path / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ctr-bland-altman.png").read_bytes()[:4] == b"\x89PNG"
    assert "| segmenter alone | 0.25 | 2 | 0.030 | 100.0% | 100.0% | 50.0% | 100.0% |" in (tmp_path / "ctr.md").read_text()


def test_ratio_summary_counts_containment_and_decisions_against_an_independent_count():
    rng = np.random.default_rng(1)
    records = []
    for index in range(200):
        reference = rng.uniform(0.35, 0.65)
        low, high = sorted(rng.uniform(0.3, 0.7, size=2))
        records.append(RatioRecord(str(index), "c", 0.25, reference, reference + rng.normal(0, 0.02), low, high))
    summary = ratio_summary(records)
    contains = sum(r.low <= r.reference <= r.high for r in records) / 200
    decided = [r for r in records if r.high < 0.5 or r.low > 0.5]
    right = sum((r.low > 0.5) == (r.reference > 0.5) for r in decided)
    assert summary.images == 200 and summary.certified == 1.0
    assert summary.contains_reference == pytest.approx(contains)
    assert summary.decides == pytest.approx(len(decided) / 200)
    assert summary.decides_rightly == pytest.approx(right / len(decided))
    assert summary.clean_mae == pytest.approx(np.mean([abs(r.clean - r.reference) for r in records]))


def test_dice_scores_overlapping_structures_whole_against_masks_built_independently():
    """A lung under its clavicle is lung and clavicle: Dice per structure from explicit masks."""
    rng = np.random.default_rng(2)
    members = CLASS_TABLE.structures_of
    for _ in range(20):
        truth = rng.integers(0, CLASS_TABLE.num_classes, size=(16, 16))
        predicted = np.where(rng.uniform(size=truth.shape) < 0.7, truth,
                             rng.integers(-1, CLASS_TABLE.num_classes, size=truth.shape))
        expected = []
        for structure in (1, 2, 3, 4, 5):
            has = np.vectorize(lambda value: value >= 0 and structure in members[value])
            expected.append(reference_dice(has(predicted), has(truth), True))
        np.testing.assert_allclose(dice_per_structure(predicted, truth, CLASS_TABLE), expected, rtol=1e-9)


def test_an_earlier_model_without_overlaps_loses_the_lung_under_the_clavicle():
    truth = np.full((4, 4), 1)
    truth[0] = 6  # right lung under the right clavicle, as SCR draws it
    painted = np.full((4, 4), 1)
    painted[0] = 4  # an earlier model painted the clavicle over the lung
    old_table = ClassTable.one_class_per_structure(6)
    lung, _, _, clavicle, _ = dice_per_structure(painted, truth, old_table)
    assert lung == pytest.approx(2 * 12 / (12 + 16)) and clavicle == 1.0
    assert dice_per_structure(truth, truth, CLASS_TABLE)[0] == 1.0


def test_wrong_side_share_counts_lungs_under_clavicles():
    truth = np.zeros((4, 8), dtype=int)
    truth[:, :4], truth[:, 4:] = 1, 2
    truth[0, 4:] = 7  # left lung under the left clavicle
    labels = truth.copy()
    labels[0, 4:6] = 6  # 2 of the left lung's 16 pixels given to the right lung (under the right clavicle)
    assert wrong_side_shares(labels, truth, CLASS_TABLE) == (0.0, 2 / 16)


def test_the_command_names_every_configuration():
    assert sorted(CONFIGURATION_NAMES.values()) == sorted(map(str, Configuration))


def test_a_recorded_command_names_folders_not_the_machine_they_were_on():
    from certseg.commands.research import recorded_command

    assert recorded_command(["train", "segmenter", "--data", "/work/data/jsrt", "covid", "--out", "/tmp/m"]) == \
        "certseg train segmenter --data jsrt covid --out m"
