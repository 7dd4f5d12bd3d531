"""Slicer's side of a result: the certified segmentation as .seg.nrrd (slicerio), and the per-pixel radius map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.sr.coding import Code

from certseg.core.labels import ClassTable
from certseg.dicom.codes import segments
from certseg.record import Report

SLICER_CONTEXT = "Segmentation category and type - DICOM master list"


def write_seg_nrrd(path: Path, labels: np.ndarray, table: ClassTable, geometry: np.ndarray,
                   tags: dict[str, str]) -> None:
    """Slicer's .seg.nrrd through slicerio: segment names, colours, terminology and tags.

    Overlapping segments (a clavicle over a lung) go to separate layers, as slicerio places them."""
    import slicerio

    segmentation = slicerio.create_segmentation((labels.shape[1], labels.shape[0], 1), geometry)
    for segment in segments(labels, table):
        terminology = {"contextName": SLICER_CONTEXT, "category": _slicer_code(segment.category),
                       "type": _slicer_code(segment.type)}
        if segment.modifier:
            terminology["typeModifier"] = _slicer_code(segment.modifier)
        slicerio.add_segment(segmentation, segment.mask.T[:, :, None], {
            "id": segment.name.replace(" ", "_"),
            "name": segment.name,
            "color": [c / 255 for c in segment.color],
            "terminology": terminology,
            "tags": dict(tags),
        })
    slicerio.write_segmentation(str(path), segmentation)


def _slicer_code(code: Code) -> list[str]:
    return [code.scheme_designator, code.value, code.meaning]


def segment_tags(report: Report) -> dict[str, str]:
    """Parameters and radius as segment tags, for the Slicer module's panel."""
    params, radius = report.parameters, report.radius
    tags = {f"CertSeg.{name}": str(getattr(params, name)) for name in ("sigma", "n0", "n", "alpha", "tau", "correction")}
    tags["CertSeg.seed"] = str(report.noise.run_seed)  # what --seed takes to reproduce this run
    tags.update({f"CertSeg.radius.{name}": f"{getattr(radius, name):.6g}"
                 for name in ("model_space", "stored_values_l2", "rms_per_source_pixel")})
    tags["CertSeg.denoiser"] = str(report.denoiser)
    return tags


RADIUS_MAP_MEANING = ("per-pixel certified L2 radius of the model input (certificate.npz pixel_radius) on the source "
                      "grid; 0 where no pixel is certified. A second event: it holds with probability >= 1 - alpha "
                      "on its own; the segmentation's radius is the one every certified pixel shares")


def write_radius_map(path: Path, result, geometry: np.ndarray) -> None:
    """pixel_radius.nrrd: the per-pixel radius as a volume on the source geometry, for a viewer's colour map."""
    import SimpleITK as sitk

    radius = result.input_map.labels_to_source(np.nan_to_num(result.certificate.pixel_radius, nan=0.0))
    image = sitk.GetImageFromArray(radius.astype(np.float32)[None])
    axes = geometry[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    image.SetOrigin([float(v) for v in geometry[:3, 3]])
    image.SetMetaData("CertSeg.meaning", RADIUS_MAP_MEANING)
    image.SetMetaData("CertSeg.units", "model-input L2 ([0, 1] intensities on the model grid)")
    sitk.WriteImage(image, str(path), useCompression=True)
