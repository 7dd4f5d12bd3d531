"""What the module shows besides the report (certseg.report writes that), and the backend command it runs."""

from __future__ import annotations

from pathlib import Path

from certseg.errors import EXIT_OUT_OF_DISTRIBUTION, OOD_REFUSAL
from certseg.request import CertificationRequest, RunOptions

# The module's self-test certifies the sample CR with these (CI runs the same backend call):
# n = 80, because below about 63 unanimous votes no pixel of 256^2 can pass Holm at alpha 0.001.
SELF_TEST_REQUEST = CertificationRequest(n0=2, n=80)
SELF_TEST_OPTIONS = RunOptions(device="cpu")


def backend_command(python: str, image: Path, out: Path, request: CertificationRequest, options: RunOptions,
                    reference_dicom: Path | None = None) -> list[str]:
    """The `certseg certify-array` command line the module runs in its child process."""
    args = [python, "-m", "certseg", "certify-array", str(image), "--out", str(out), "--progress-lines",
            *request.arguments(), *options.arguments()]
    if reference_dicom is not None:
        args += ["--reference-dicom", str(reference_dicom)]
    return args


def dicom_file_or_none(path: str | None) -> Path | None:
    """`path` if it is a readable DICOM file (a volume loaded with Add Data from a .dcm), else None.

    Its header is what the backend's metadata gate reads; a NRRD, PNG or missing file has none."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path or not Path(path).is_file():
        return None
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError):
        return None
    return Path(path) if "SOPClassUID" in header else None


def ood_refusal(error: str, exit_code: int | None) -> str | None:
    """The panel's question when the backend refused the image as unlike a chest radiograph, else None.

    Recognised by the backend's exit code (EXIT_OUT_OF_DISTRIBUTION) alone; the error line only words it."""
    if exit_code != EXIT_OUT_OF_DISTRIBUTION:
        return None
    at = error.find(OOD_REFUSAL)
    start = error.rfind(": ", 0, at) + 2 if at >= 0 else 0  # after "certseg: error: FILE: "
    reason = error[start:].split("; use --force")[0].removeprefix("certseg: error: ")
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
