"""Certified Dice: MONAI's Dice with abstained pixels counted as errors."""

import numpy as np
import pytest

from certseg.research.evaluate import Row, dice_per_structure, markdown_table, write_outputs


def reference_dice(predicted, truth, c):
    p, t = predicted == c, truth == c
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else 2 * np.sum(p & t) / total


def test_dice_matches_the_definition_on_random_maps_with_abstention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 4, size=(20, 20))
        predicted = np.where(rng.uniform(size=(20, 20)) < 0.8, truth, rng.integers(-1, 4, size=(20, 20)))
        ours = dice_per_structure(predicted, truth, 4)
        np.testing.assert_allclose(ours, [reference_dice(predicted, truth, c) for c in (1, 2, 3)], rtol=1e-6)


def test_abstaining_on_a_structure_costs_its_dice_and_empty_structures_score_one():
    truth = np.zeros((10, 10), dtype=int)
    truth[:, :5] = 1
    predicted = truth.copy()
    predicted[:, :2] = -1  # abstain on 2 of the 5 columns of structure 1
    dice = dice_per_structure(predicted, truth, 3)
    assert dice[0] == pytest.approx(2 * 30 / (30 + 50))
    assert dice[1] == 1.0  # structure 2 absent from both


def test_outputs_are_written(tmp_path):
    rows = [Row("clean", None, "right lung", 0.97, None, None, None, None),
            Row("segmenter alone", 0.25, "right lung", 0.97, 0.91, 0.05, 1.2, 110),
            Row("segmenter alone", 0.5, "right lung", 0.97, 0.85, 0.09, 1.1, 70)]
    write_outputs(rows, tmp_path, 0.75)
    assert (tmp_path / "evaluation.csv").read_text().count("\n") == 4
    assert "| segmenter alone | 0.25 | right lung | 0.970 | 0.910 | 5.0% | 1.2 |" in markdown_table(rows)
    assert (tmp_path / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
