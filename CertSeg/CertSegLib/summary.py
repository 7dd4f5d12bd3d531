"""From the backend's report.json to what the module shows, and from parameters to the backend command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BackendParameters:
    sigma: float = 0.25
    n0: int = 10
    n: int = 100
    alpha: float = 0.001
    tau: float = 0.75
    useDenoiser: bool = True
    device: str = "auto"
    modelFolder: str = ""
    seed: int | None = None  # None: fresh noise per run, which the guarantee needs; a seed only reproduces
    force: bool = False  # certify although the out-of-distribution check refuses (the user confirmed; recorded)


# The module's self-test certifies the sample CR with these (CI runs the same backend call):
# n = 80, because below about 63 unanimous votes no pixel of 256^2 can pass Holm at alpha 0.001.
SELF_TEST_PARAMETERS = BackendParameters(n0=2, n=80, device="cpu")


def backend_command(python: str, image: Path, out: Path, parameters: BackendParameters,
                    reference_dicom: Path | None = None) -> list[str]:
    """The `certseg certify-array` command line the module runs in its child process."""
    args = [python, "-m", "certseg", "certify-array", str(image), "--out", str(out), "--progress-lines",
            "--sigma", repr(parameters.sigma), "--n0", str(parameters.n0), "--n", str(parameters.n),
            "--alpha", repr(parameters.alpha), "--tau", repr(parameters.tau), "--device", parameters.device]
    if parameters.seed is not None:
        args += ["--seed", str(parameters.seed)]
    if parameters.force:
        args.append("--force")
    if not parameters.useDenoiser:
        args.append("--no-denoiser")
    if parameters.modelFolder:
        args += ["--model-dir", parameters.modelFolder]
    if reference_dicom is not None:
        args += ["--reference-dicom", str(reference_dicom)]
    return args


OOD_REFUSAL = "spectral OOD score"  # in the backend's one-line refusal (certseg.pipeline)


def ood_refusal(error: str) -> str | None:
    """The panel's question when the backend refused the image as unlike a chest radiograph, else None."""
    if OOD_REFUSAL not in error:
        return None
    start = error.rfind(": ", 0, error.index(OOD_REFUSAL)) + 2  # after "certseg: error: FILE: "
    reason = error[start:].split("; use --force")[0]
    return (f"CertSeg refused this image: {reason}.\n\nCertify it anyway? The override is recorded in the "
            f"report and shown in the segmentation's name; the certificate still holds, but the model may not "
            f"know such images.")


def progress_text(fraction: float, elapsed_s: float) -> str:
    """The progress bar's text: percent, elapsed time and, once there is a basis for it, what remains."""
    text = f"{fraction:.0%} - {_duration(elapsed_s)} elapsed"
    if 0.05 <= fraction < 1:
        text += f", about {_duration(elapsed_s * (1 - fraction) / fraction)} left"
    return text


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def input_problem(class_name: str, dimensions: tuple[int, int, int], components: int) -> str | None:
    """Why a volume is not one grayscale radiograph (None when it is); the Apply button's tooltip says it."""
    if class_name != "vtkMRMLScalarVolumeNode":
        return f"CertSeg certifies grayscale radiographs, not a {class_name.removeprefix('vtkMRML')}"
    if components != 1:
        return f"The input has {components} components per pixel (colour?); CertSeg needs one grayscale value"
    if sorted(dimensions)[0] != 1:
        return f"The input is a 3D volume ({' x '.join(map(str, dimensions))}); CertSeg needs one radiograph (one slice)"
    return None


def panel_summary(report: dict[str, Any]) -> str:
    """Certified area intervals per structure, the cardiothoracic ratio, abstained share, the radius three
    ways and every caveat the backend noted, as plain text lines."""
    lines = [f"Note: {note}" for note in report.get("source", {}).get("notes", [])]
    lines += _measurement_lines(report)
    lines.append(f"Abstained: {report['source_grid']['abstain_fraction']:.1%} of the image")
    radius = report["radius"]
    lines.append(f"Certified L2 radius: {radius['model_space']:.3f} (model input, [0, 1] intensities)")
    lines.append(f"  = {radius['stored_values_l2']:.4g} in stored pixel values over the whole image")
    lines.append(f"  = {radius['rms_per_source_pixel']:.4g} RMS change per pixel")
    verdict = report.get("out_of_distribution")
    if verdict is not None:
        decision = "looks like a chest radiograph" if verdict["in_distribution"] else \
            "does NOT look like a chest radiograph (certified because forced)"
        lines.append(f"Input check: {decision} (spectral score {verdict['score']:.1f}, "
                     f"threshold {verdict['threshold']:.1f})")
    params = report["parameters"]
    lines.append(f"sigma {params['sigma']}, n0 {params['n0']}, n {params['n']}, alpha {params['alpha']}, "
                 f"tau {params['tau']}, {params['correction']}, denoiser {'on' if report['denoiser'] else 'off'}, "
                 f"{params['device']} in {report['execution']['precision']}")
    return "\n".join(lines)


def _measurement_lines(report: dict[str, Any]) -> list[str]:
    """A small table: certified lower and upper bound of each area, and the clean network's value."""
    measurements = report["measurements"]
    in_mm2 = all(s["area_mm2"] is not None for s in measurements["structures"])
    unit, key, scale = ("cm²", "area_mm2", 0.01) if in_mm2 else ("pixels", "area_pixels", 1.0)
    lines = [f"Area ({unit})          certified range      clean"]
    for structure in measurements["structures"]:
        area = {k: v * scale for k, v in structure[key].items()}
        lines.append(f"  {structure['name']:<16} {area['low']:>8.1f} - {area['high']:<8.1f} {area['clean']:>8.1f}")
    ratio = measurements["cardiothoracic_ratio"]
    if ratio is not None and ratio["low"] is not None:
        high = "unbounded" if ratio["high"] is None else f"{ratio['high']:.2f}"
        clean = "-" if ratio["clean"] is None else f"{ratio['clean']:.2f}"
        lines.append(f"Cardiothoracic ratio: {ratio['low']:.2f} - {high} (clean {clean})")
    lines.append("Ranges hold for the smoothed segmenter with the certificate's probability, within its radius.")
    return lines
