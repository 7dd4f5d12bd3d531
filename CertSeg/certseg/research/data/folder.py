"""CertSeg's own dataset folder, written by `certseg data import` from any public layout.

    dataset.json        format, dataset, layout, terms, origin of the copy, split rule, labels, classes
                        (which structures each class value stands for: a clavicle over a lung is its own class),
                        and per image: name, split, files, annotated structures, source shape
    images/<name>.png   16-bit PNG of stored values (bright = attenuating), long side at most
                        `working_size` (antialiased), so a 2048^2 JSRT image is 2 MB, not 32 MB
    labels/<name>.png   8-bit class values on the same grid (nearest neighbour)

The split is fixed by the image's number, never drawn: even numbers (JPCLN002,
MCUCXR_0002_0, CHNCXR_0002_0, ...) are the test fold, odd numbers ending in 1 are
validation, the other odd numbers train.  A layout whose dataset fixes its own folds
(COVID-QU-Ex) sets the split itself and states its rule.  Nothing may train, pick a
checkpoint or set a threshold on the test fold; the `acceptance` split holds images without
masks, only for measuring how many the out-of-distribution check accepts.

`train` and `evaluate` take any mix of these folders and of DRR folders (data/drr_folder.py);
a DRR folder is used whole, in whichever role it is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from certseg.dicom.codes import class_card, label_card
from certseg.errors import CertSegError
from certseg.files import DATASET_CARD
from certseg.research.data.drr_folder import DRR_FORMAT, load_drr_dataset
from certseg.research.data.public import LAYOUTS
from certseg.research.data.sample import Sample

DATASET_FORMAT = "certseg-dataset-2"
# format 1 painted each clavicle over its lung (one structure per pixel); models now learn them overlapping
PAINTED_FORMATS = ("certseg-dataset-1",)
SPLITS = ("train", "validation", "test", "acceptance")
SPLIT_RULE = ("number in the image name: even -> test; odd ending in 1 -> validation; other odd -> train")
WORKING_SIZE = 1024


def split_of(name: str) -> str:
    """The fixed split of an image from its name's first number (JPCLN003 -> 3 -> train)."""
    match = re.search(r"\d+", name)
    if match is None:
        raise CertSegError(f"{name}: no image number in the name, so no fixed split")
    number = int(match.group())
    if number % 2 == 0:
        return "test"
    return "validation" if number % 10 == 1 else "train"


def import_dataset(layout_name: str, source: Path, out: Path, *, masks: Path | None = None, origin: str = "",
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Read a public dataset in `layout_name` from `source` and write it as a CertSeg dataset folder."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from certseg.files import atomic_directory, write_json

    if layout_name not in LAYOUTS:
        raise CertSegError(f"{layout_name}: unknown layout (one of {', '.join(LAYOUTS)})")
    layout = LAYOUTS[layout_name]
    entries = []
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        skipped: dict[str, list[str]] = {}
        for sample in tqdm(layout.read(source, masks, skipped), desc=f"import {layout_name}", disable=not progress):
            stored, labels = _to_working_size(sample)
            file = f"{sample.name}.png"
            sitk.WriteImage(sitk.GetImageFromArray(stored), str(staging / "images" / file))
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(staging / "labels" / file))
            entries.append({"name": sample.name, "split": sample.split or split_of(sample.name), "image": f"images/{file}",
                            "labels": f"labels/{file}", "annotated": list(sample.annotated),
                            "source_shape": list(sample.stored.shape)})
        card = {"format": DATASET_FORMAT, "dataset": layout.dataset, "layout": layout.name,
                "description": layout.description, "terms": layout.terms, "origin": origin or source.name,
                "split_rule": layout.split_rule or SPLIT_RULE, "working_size": WORKING_SIZE,
                "labels": label_card(), "classes": class_card(),
                "counts": {split: sum(e["split"] == split for e in entries) for split in SPLITS},
                "skipped": {reason: sorted(names) for reason, names in sorted(skipped.items())},
                "images": entries}
        write_json(staging / DATASET_CARD, card)
    return card


def _to_working_size(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    from certseg.core.input_map import resize_labels

    height, width = sample.stored.shape
    scale = min(1.0, WORKING_SIZE / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    stored = torch.as_tensor(sample.stored, dtype=torch.float64)[None, None]
    if scale < 1:
        stored = F.interpolate(stored, size=shape, mode="bilinear", antialias=True, align_corners=False)
    stored_u16 = np.clip(np.rint(stored[0, 0].numpy()), 0, 65535).astype(np.uint16)
    return stored_u16, resize_labels(sample.labels, shape)


def read_card(folder: Path) -> dict:
    card_path = folder / DATASET_CARD
    try:
        return json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CertSegError(f"{card_path}: not a CertSeg dataset folder ({error})") from None


def load_dataset(folder: Path, splits: tuple[str, ...] = SPLITS) -> list[Sample]:
    """The images of `splits` from a CertSeg dataset folder, or every view of a DRR folder."""
    import SimpleITK as sitk

    card = read_card(folder)
    if card.get("format") == DRR_FORMAT:
        return load_drr_dataset(folder)
    if card.get("format") in PAINTED_FORMATS:
        raise CertSegError(f"{folder}: imported by an earlier CertSeg, which painted each clavicle over its lung; "
                           "import the dataset again (certseg data import)")
    if card.get("format") != DATASET_FORMAT:
        raise CertSegError(f"{folder / DATASET_CARD}: format {card.get('format')!r} is neither "
                           f"{DATASET_FORMAT!r} nor {DRR_FORMAT!r}")
    read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / path)))  # noqa: E731
    return [Sample(entry["name"], read(entry["image"]).astype(np.float32), read(entry["labels"]).astype(np.uint8),
                   tuple(entry["annotated"]), entry["split"], card["dataset"])
            for entry in card["images"] if entry["split"] in splits]


def load_datasets(folders: list[Path], splits: tuple[str, ...], *, with_drr: bool = True) -> list[Sample]:
    """The images of `splits` from every CertSeg dataset folder, and (with_drr) every DRR folder whole."""
    samples = [sample for folder in folders if with_drr or read_card(folder).get("format") != DRR_FORMAT
               for sample in load_dataset(folder, splits)]
    if with_drr and not samples:
        raise CertSegError(f"{', '.join(map(str, folders))}: no images in split(s) {', '.join(splits)}")
    return samples


def describe(folders: list[Path]) -> list[dict]:
    """Per folder, what a model card names: source, terms, origin and the exact images of every split."""
    described = []
    for folder in folders:
        card = read_card(folder)
        if card.get("format") == DATASET_FORMAT:
            described.append({key: card[key] for key in ("dataset", "layout", "description", "terms", "origin",
                                                          "split_rule")}
                             | {split: [e["name"] for e in card["images"] if e["split"] == split] for split in SPLITS})
        else:
            described.append({key: card[key] for key in ("format", "source", "seed", "count", "size") if key in card})
    return described
