"""Model-input map and the operator-norm bounds that convert radii to source units."""

import numpy as np
import pytest
import torch

from certseg.core.input_map import ModelInputMap
from certseg.core.radius import PercentileSensitivity, radius_in_source_units
from certseg.core.window import IntensityWindow

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


def dense_matrix(linear, shape):
    """The matrix of a linear map, column by column (small shapes only)."""
    size = int(np.prod(shape))
    columns = []
    for k in range(size):
        basis = torch.zeros(size, dtype=torch.float64)
        basis[k] = 1
        columns.append(linear(basis.reshape(shape)).reshape(-1).numpy())
    return np.stack(columns, axis=1)


def power_iteration_norm(linear, shape, iterations=500):
    """||A|| by power iteration on A^T A, the adjoint taken by autograd: independent of the SVD route."""
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    estimate = 0.0
    for _ in range(iterations):
        x = (x / x.norm()).requires_grad_(True)
        image = linear(x)
        (x,) = torch.autograd.grad(image, x, grad_outputs=image)
        previous, estimate = estimate, float(image.detach().norm())
        if abs(estimate - previous) < 1e-12 * estimate:
            break
    return estimate


@pytest.mark.parametrize("source_shape, size", [((20, 13), 8), ((9, 9), 16), ((31, 40), 12), ((7, 30), 30)])
def test_operator_norm_equals_the_dense_matrix_norm(source_shape, size):
    input_map = ModelInputMap(source_shape, size, IntensityWindow(100.0, 4095.0))
    true_norm = np.linalg.norm(dense_matrix(input_map.linear, source_shape), 2)
    assert input_map.operator_norm() == pytest.approx(true_norm, rel=1e-9)


def test_operator_norm_agrees_with_power_iteration_on_a_radiograph_sized_map():
    input_map = ModelInputMap((700, 560), 256, IntensityWindow(0.0, 1.0))
    estimate = power_iteration_norm(input_map.linear, (700, 560))
    assert estimate <= input_map.operator_norm() * (1 + 1e-9)
    assert estimate == pytest.approx(input_map.operator_norm(), rel=2e-3)  # converges slowly, from below


def test_map_keeps_aspect_and_puts_the_window_on_zero_to_one():
    stored = np.full((40, 20), 1000.0)
    stored[:, :10] = 3000.0
    input_map = ModelInputMap(stored.shape, 16, IntensityWindow(1000.0, 3000.0))
    model = input_map(stored)
    assert model.shape == (16, 16) and model.dtype == np.float32
    assert model.min() >= 0 and model.max() <= 1
    assert np.all(model[:, :3] == 0) and np.all(model[:, -3:] == 0)  # padding left and right, not top and bottom
    assert model[8, 5] == pytest.approx(1.0) and model[8, 10] == pytest.approx(0.0)


def test_labels_return_to_the_source_grid():
    input_map = ModelInputMap((30, 60), 16, IntensityWindow(0.0, 1.0))
    labels = np.zeros((16, 16), dtype=np.int64)
    labels[:, :8] = 1
    labels[:, 8:] = 2
    back = input_map.labels_to_source(labels)
    assert back.shape == (30, 60) and back.dtype == np.int64
    assert np.all(back[:, :29] == 1) and np.all(back[:, 31:] == 2)


def test_radius_in_three_units_is_consistent():
    input_map = ModelInputMap((512, 512), 256, IntensityWindow(0.0, 4095.0))
    radii = radius_in_source_units(0.169, input_map)
    # 2x downsampling averages about four pixels (norm ~1/2), times the window scale 1/4095.
    assert input_map.operator_norm() == pytest.approx(0.5 / 4095, rel=0.01)
    assert radii.model_space == 0.169
    assert radii.stored_values_l2 == pytest.approx(0.169 / input_map.operator_norm())
    assert radii.rms_per_source_pixel == pytest.approx(radii.stored_values_l2 / 512)


def test_window_from_percentiles_and_bad_windows():
    image = np.arange(1000, dtype=float)
    window = IntensityWindow.from_percentiles(image)
    assert window.low == pytest.approx(np.percentile(image, 0.5))
    assert IntensityWindow.from_percentiles(np.full((4, 4), 7.0)).high > 7.0
    with pytest.raises(ValueError, match="window"):
        IntensityWindow(5.0, 5.0)


PERCENTILES = (0.5, 99.5)


def move_values_near_percentile(values: np.ndarray, percentile: float, budget: float, count: int,
                                direction: int) -> np.ndarray:
    """An attack on np.percentile: spend `budget` (L2) moving the `count` values next to it one way."""
    flat = values.ravel().copy()
    order = np.argsort(flat, kind="stable")
    rank = int(np.floor(percentile / 100 * (flat.size - 1)))
    chosen = order[rank + 1 : rank + 1 + count] if direction > 0 else order[max(rank - count + 1, 0) : rank + 1]
    step = np.zeros_like(flat)
    step[chosen] = direction
    return (flat + step * budget / np.linalg.norm(step)).reshape(values.shape)


@pytest.mark.parametrize("kind", ["evenly spaced", "normal", "integers with ties"])
def test_percentile_shift_bound_holds_against_attacks(kind):
    rng = np.random.default_rng(1)
    values = {"evenly spaced": np.arange(2000.0), "normal": rng.normal(0, 100, 2000),
              "integers with ties": rng.integers(0, 50, 2000).astype(float)}[kind]
    sensitivity = PercentileSensitivity(values)
    for percentile in PERCENTILES:
        for budget in (0.5, 5.0, 50.0):
            bound = sensitivity.shift_bound(percentile, budget)
            shifts = [abs(np.percentile(move_values_near_percentile(values, percentile, budget, k, d), percentile)
                          - np.percentile(values, percentile)) for k in (1, 2, 5, 20, 200) for d in (-1, 1)]
            for _ in range(20):
                noise = rng.standard_normal(values.shape)
                moved = values + noise * budget / np.linalg.norm(noise)
                shifts.append(abs(np.percentile(moved, percentile) - np.percentile(values, percentile)))
            assert max(shifts) <= bound + 1e-9
            assert bound <= 20 * max(max(shifts), 1e-3)  # an upper bound, not a vacuous one


def test_movable_window_radius_withstands_window_attacks_that_break_the_fixed_window_radius():
    """A percentile window moves with the pixels: R / ||A|| is then unsound, the movable-window radius is not."""
    rng = np.random.default_rng(0)
    model_radius, broken_fixed = 0.169, 0
    for _ in range(3):
        stored = np.clip(rng.normal(2000, 600, size=(200, 160)), 0, 4095).round()
        input_map = ModelInputMap(stored.shape, 64, IntensityWindow.from_percentiles(stored, PERCENTILES))
        sound = radius_in_source_units(model_radius, input_map, (stored, PERCENTILES)).stored_values_l2
        fixed = radius_in_source_units(model_radius, input_map).stored_values_l2
        assert 0 < sound < fixed
        original = input_map(stored)

        def worst_move(budget: float) -> float:
            attacks = [move_values_near_percentile(stored, p, budget, k, d)
                       for p in PERCENTILES for k in (5, 40, 400) for d in (-1, 1)]
            noise = rng.standard_normal(stored.shape)
            attacks.append(stored + noise * budget / np.linalg.norm(noise))
            return max(np.linalg.norm(ModelInputMap(stored.shape, 64, IntensityWindow.from_percentiles(a, PERCENTILES))(a)
                                      - original) for a in attacks)

        assert worst_move(0.999 * sound) < model_radius
        broken_fixed += worst_move(0.999 * fixed) > model_radius
    assert broken_fixed == 3
    flat = np.full((20, 20), 100.0)
    flat_map = ModelInputMap(flat.shape, 16, IntensityWindow.from_percentiles(flat, PERCENTILES))
    assert radius_in_source_units(model_radius, flat_map, (flat, PERCENTILES)).stored_values_l2 == 0.0
