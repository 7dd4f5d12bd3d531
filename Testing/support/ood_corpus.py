"""Images that are not chest radiographs, in model space ([0, 1], 256 x 256), for the OOD tests and benchmark.

Each builder takes a numpy Generator and returns one image; in-domain views come from
DRR folders.  Out-of-domain: abdomen-only views rendered from the same CT, natural-image-like
textures (1/f noise with edges), pure noise, an axial CT slice, and inverted radiographs.
"""

import numpy as np

from certseg.core.window import DEFAULT_PERCENTILES
from certseg.research.data import to_model_space
from certseg.research.drr import ViewParameters, load_phantom, render_view

SIZE = 256


def model_space(stored: np.ndarray) -> np.ndarray:
    from certseg.research.data import Sample

    return to_model_space(Sample("x", stored.astype(np.float64), np.zeros(stored.shape, np.uint8)), SIZE,
                          DEFAULT_PERCENTILES)[0]


def abdomen_view(rng):
    """The same CT seen 90-130 mm lower: liver, bowel and spine, hardly any lung."""
    params = ViewParameters.draw(rng)
    lowered = ViewParameters(**{**params.__dict__, "shift_mm": (params.shift_mm[0], -float(rng.uniform(90, 130)))})
    return model_space(render_view(load_phantom(), lowered, SIZE)[0])


def natural_texture(rng):
    """1/f ('pink') noise with a few sharp-edged shapes: the statistics of photographs, not radiographs."""
    frequencies = np.sqrt(np.add.outer(np.fft.fftfreq(SIZE) ** 2, np.fft.fftfreq(SIZE) ** 2))
    spectrum = (rng.standard_normal((SIZE, SIZE)) + 1j * rng.standard_normal((SIZE, SIZE))) / np.maximum(frequencies, 1 / SIZE)
    image = np.real(np.fft.ifft2(spectrum))
    rows, cols = np.indices((SIZE, SIZE))
    for _ in range(rng.integers(3, 8)):
        r, c, h, w = rng.integers(0, SIZE, 4)
        image[(rows >= r) & (rows < r + h // 3) & (cols >= c) & (cols < c + w // 3)] = rng.uniform(-3, 3) * image.std()
    return model_space(image)


def pure_noise(rng):
    return model_space(rng.uniform(0, 4095, (SIZE, SIZE)))


def ct_slice(rng):
    """An axial slice of the CT, soft-tissue window."""
    phantom = load_phantom()
    hu = phantom.channels[0].numpy() / 0.019 * 1000 - 1000  # water-equivalent attenuation back to HU
    index = int(rng.integers(hu.shape[0] // 4, 3 * hu.shape[0] // 4))
    return model_space(np.clip(hu[index], -160, 240))


def inverted(image: np.ndarray) -> np.ndarray:
    """A radiograph with its grey scale flipped (a MONOCHROME1 file read as MONOCHROME2)."""
    return 1.0 - image


OUT_OF_DOMAIN = {"abdomen-only view": abdomen_view, "natural texture": natural_texture, "pure noise": pure_noise,
                 "CT slice": ct_slice}
