"""Acceptance and refusal rates of the input check (is it a frontal chest radiograph?), with 95% intervals.

    python Testing/benchmarks/ood_rates.py --models MODELS --in-domain DATASET [DATASET ...]
        [--chest NAME=FOLDER ...] [--negatives NAME=FOLDER ...] [--count 60]

Chest sets: the test split of each CertSeg dataset folder and its acceptance split where it has one
(radiographs without masks, such as COVID-QU-Ex's Test folder); neither is used in fitting.  Not chest:
the chest sets inverted (a MONOCHROME1 file read as MONOCHROME2); the CT, MR, ultrasound and
nuclear-medicine images among pydicom's own test files (first frame, colour to grey); `--count` of each
synthetic kind (research.negatives) from a seed the fit does not use; and each `--negatives` folder of
real images (PNG, JPEG or DICOM files), named by NAME; each `--chest` folder of real frontal chest
films is a chest set like the others.  Also the shipped sample CR, with each signal's
margin.  Prints a Markdown table: per set, the share accepted with its 95% Clopper-Pearson interval,
and the signal that refused most of its images.
"""

import argparse
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.stats import beta

from certseg.core.window import DEFAULT_PERCENTILES
from certseg.model.folder import load_models
from certseg.research.data import load_dataset, to_model_space
from certseg.research.negatives import first_frame_grey, inverted, model_space, real_images, synthetic_negatives

MODALITIES = ("CT", "MR", "US", "NM")
SEED = 20261207  # not a seed the fit draws its negatives from


def model_images(samples) -> np.ndarray:
    return np.stack([to_model_space(s, 256, DEFAULT_PERCENTILES)[0] for s in samples])


def pydicom_images(modality: str) -> np.ndarray:
    """Every pydicom test file of `modality` that decodes here, as a model-space image."""
    import pydicom
    from pydicom.data import get_testdata_files

    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                dataset = pydicom.dcmread(path)
                if str(dataset.get("Modality", "")) != modality:
                    continue
                pixels = first_frame_grey(dataset)
            except Exception:  # noqa: BLE001 - test files include deliberately broken ones
                continue
            if pixels.ndim == 2 and min(pixels.shape) >= 32:
                images.append(model_space(pixels))
    return np.stack(images)


def folder_images(folder: Path) -> np.ndarray:
    """Every PNG, JPEG or DICOM file under `folder`, grey, bright = attenuating (research.negatives.real_images)."""
    try:
        return real_images(folder)[1]
    except ValueError as error:
        raise SystemExit(str(error)) from None


def interval(accepted: int, total: int) -> tuple[float, float]:
    """The 95% Clopper-Pearson interval of a binomial share."""
    low = beta.ppf(0.025, accepted, total - accepted + 1) if accepted else 0.0
    high = beta.ppf(0.975, accepted + 1, total - accepted) if accepted < total else 1.0
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, help="a model folder (default: the shipped models)")
    parser.add_argument("--in-domain", type=Path, nargs="+", required=True, help="CertSeg dataset folders")
    parser.add_argument("--negatives", nargs="*", default=[], metavar="NAME=FOLDER",
                        help="folders of real images that are not frontal chest radiographs")
    parser.add_argument("--chest", nargs="*", default=[], metavar="NAME=FOLDER",
                        help="folders of real frontal chest radiographs (PNG, JPEG or DICOM exports)")
    parser.add_argument("--count", type=int, default=60, help="images per synthetic kind")
    args = parser.parse_args()
    models = load_models(args.models, with_denoiser=False)
    check, network, structures = models.ood_detector, models.network, models.anatomy_classes
    chest = {f"{folder.name} {split}": model_images(images) for folder in args.in_domain
             for split in ("test", "acceptance") if (images := load_dataset(folder, (split,)))}
    for entry in args.chest:
        name, _, folder = entry.partition("=")
        chest[name] = folder_images(Path(folder))
    sets = dict(chest)
    sets["inverted radiographs (the chest sets)"] = np.stack([inverted(x) for batch in chest.values() for x in batch])
    sets.update({f"pydicom test files, {m}": pydicom_images(m) for m in MODALITIES})
    sets.update(synthetic_negatives(np.random.default_rng(SEED), args.count))
    for entry in args.negatives:
        name, _, folder = entry.partition("=")
        sets[name] = folder_images(Path(folder))
    print("limits: " + "; ".join(f"{name} {r.low if r.low is not None else ''}..{r.high if r.high is not None else ''}"
                                  for name, r in check.ranges.items()))
    print("| images | n | accepted | 95% interval | refused most by |")
    print("|---|---|---|---|---|")
    for name, batch in sets.items():
        verdicts = [check.verdict(network, image, structures) for image in batch]
        accepted = sum(v.in_distribution for v in verdicts)
        low, high = interval(accepted, len(batch))
        refusers = Counter(v.refused_by for v in verdicts if not v.in_distribution).most_common(1)
        print(f"| {name} | {len(batch)} | {accepted / len(batch):.1%} | {low:.1%}-{high:.1%} | "
              f"{refusers[0][0] + f' ({refusers[0][1]})' if refusers else '-'} |", flush=True)
    _sample_margins(check, network, structures)


def _sample_margins(check, network, structures) -> None:
    """The shipped sample CR as the engine reads and maps it, and each signal's distance from its limit."""
    from certseg.core.input_map import ModelInputMap
    from certseg.core.window import IntensityWindow
    from certseg.dicom.reading import read_radiograph

    sample = read_radiograph(Path(__file__).parents[2] / "CertSeg" / "Resources" / "SampleData" / "sample_cr.dcm")
    window = sample.window or IntensityWindow.from_percentiles(sample.pixels, DEFAULT_PERCENTILES)
    image = ModelInputMap(tuple(sample.pixels.shape), 256, window)(sample.pixels)
    verdict = check.verdict(network, image, structures)
    margins = ", ".join(f"{s.name} {s.value:.2f} (limit {s.low if s.low is not None else s.high:.2f})"
                        for s in verdict.signals)
    print(f"\nshipped sample: {'accepted' if verdict.in_distribution else 'REFUSED'}; {margins}")


if __name__ == "__main__":
    main()
