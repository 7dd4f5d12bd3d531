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
    if not parameters.useDenoiser:
        args.append("--no-denoiser")
    if parameters.modelFolder:
        args += ["--model-dir", parameters.modelFolder]
    if reference_dicom is not None:
        args += ["--reference-dicom", str(reference_dicom)]
    return args


def panel_summary(report: dict[str, Any]) -> str:
    """Certified area per structure, abstained share and the radius three ways, as plain text lines."""
    lines = []
    for structure in report["structures"]:
        if structure["certified_area_mm2"] is not None:
            lines.append(f"{structure['name']}: {structure['certified_area_mm2'] / 100:.1f} cm² certified")
        else:
            lines.append(f"{structure['name']}: {structure['certified_pixels']} pixels certified")
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
