"""The per-image result files: DICOM SEG, .seg.nrrd, report.json and overlay.png.

Segments: one per structure with certified pixels, and "Abstained" for every pixel
without a certificate.  Anatomy is coded in SNOMED CT; abstention has no standard
code, so it carries the private code ("ABSTAINED", "99CERTSEG", "Certification
abstained") in category ("CERTOUTCOME", "99CERTSEG", "Certification outcome"),
documented in README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from . import __version__
from .labels import ANATOMICAL_STRUCTURE, STRUCTURES
from .outputs import write_json
from .smoothing import ABSTAIN

ABSTAINED_CATEGORY = ("CERTOUTCOME", "99CERTSEG", "Certification outcome")
ABSTAINED_TYPE = ("ABSTAINED", "99CERTSEG", "Certification abstained")
ABSTAINED_COLOR = (255, 0, 255)
SLICER_CONTEXT = "Segmentation category and type - DICOM master list"


def segment_specs(labels: np.ndarray) -> list[dict[str, Any]]:
    """What to draw: name, mask, colour and codes of each certified structure, then Abstained."""
    specs = []
    for structure in STRUCTURES:
        mask = labels == structure["value"]
        if mask.any():
            specs.append({**structure, "name": f"certified {structure['name']}", "mask": mask,
                          "category": ANATOMICAL_STRUCTURE})
    specs.append({"name": "Abstained", "value": ABSTAIN, "mask": labels == ABSTAIN, "color": ABSTAINED_COLOR,
                  "category": ABSTAINED_CATEGORY, "type": ABSTAINED_TYPE, "modifier": None})
    return specs


def ijk_to_lps(dataset, spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """4x4 voxel (column i, row j, k) to LPS matrix of a single-frame image.

    Uses ImageOrientationPatient/ImagePositionPatient when the image has them
    (some DX do); projection radiographs usually do not, and then the image lies
    in the identity plane at the origin, as Slicer's DICOM import places it.
    """
    row_spacing, column_spacing = spacing_mm or (1.0, 1.0)
    orientation = [float(v) for v in dataset.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    position = [float(v) for v in dataset.get("ImagePositionPatient", [0, 0, 0])]
    along_row, along_column = np.array(orientation[:3]), np.array(orientation[3:])
    matrix = np.eye(4)
    matrix[:3, 0] = along_row * column_spacing
    matrix[:3, 1] = along_column * row_spacing
    matrix[:3, 2] = np.cross(along_row, along_column)
    matrix[:3, 3] = position
    return matrix


def write_seg_nrrd(path: Path, labels: np.ndarray, geometry: np.ndarray, tags: dict[str, str]) -> None:
    """Slicer's .seg.nrrd through slicerio: segment names, colours, terminology and tags."""
    import slicerio

    segmentation = slicerio.create_segmentation((labels.shape[1], labels.shape[0], 1), geometry)
    for spec in segment_specs(labels):
        terminology = {"contextName": SLICER_CONTEXT, "category": _slicer_code(spec["category"]),
                       "type": _slicer_code(spec["type"])}
        if spec["modifier"]:
            terminology["typeModifier"] = _slicer_code(spec["modifier"])
        slicerio.add_segment(segmentation, spec["mask"].T[:, :, None], {
            "id": spec["name"].replace(" ", "_"),
            "name": spec["name"],
            "color": [c / 255 for c in spec["color"]],
            "terminology": terminology,
            "tags": dict(tags),
        })
    slicerio.write_segmentation(str(path), segmentation)


def _slicer_code(code: tuple[str, str, str]) -> list[str]:
    value, scheme, meaning = code
    return [scheme, value, meaning]


def write_dicom_seg(path: Path, radiograph, labels: np.ndarray, models_card: dict[str, Any]) -> None:
    """A BINARY DICOM SEG (highdicom) in the source's study, new series, referencing the source image."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"CertSeg {models_card['name']}", family=codes.cid7162.ArtificialIntelligence,
        version=str(models_card.get("version", "unknown")), source="CertSeg randomized smoothing",
    )
    descriptions, masks = [], []
    for number, spec in enumerate(segment_specs(labels), start=1):
        category = (codes.SCT.AnatomicalStructure if spec["category"] == ANATOMICAL_STRUCTURE
                    else hd.sr.CodedConcept(*spec["category"]))
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec["name"], segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(*spec["type"]), algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*spec["color"]),
        )
        if spec["modifier"]:  # laterality, nested in the type's item as PS3.3 C.8.20.4 places it (highdicom has no
            # argument for it)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(*spec["modifier"])]
        descriptions.append(description)
        masks.append(spec["mask"])
    # Projection images have no Frame of Reference, so Slice Thickness is not required; dcmqi (Slicer's
    # DICOM SEG reader) and highdicom's reader still need it, so we state the nominal 1 mm.
    measures, source = None, radiograph.dataset
    if radiograph.spacing_mm is not None:
        measures = hd.PixelMeasuresSequence(pixel_spacing=list(radiograph.spacing_mm), slice_thickness=1.0)
    elif "PixelSpacing" in source:
        # Without measures highdicom copies the source's Pixel Spacing, which we found unusable (0\0 on a
        # real CR, which dciodvfy rejects): the SEG then states no spacing, as the report does.
        source = pydicom.Dataset(source)
        source.file_meta = radiograph.dataset.file_meta
        del source.PixelSpacing
    segmentation = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(masks, axis=-1)[None],
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(radiograph.dataset.get("SeriesNumber", 0) or 0) + 9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="CertSeg",
        manufacturer_model_name=models_card["name"],
        software_versions=__version__,
        device_serial_number="n/a",
        series_description="CertSeg certified segmentation",
        content_label="CERTSEG",
        content_description="certified structures and abstained region",
        pixel_measures=measures,
        omit_empty_frames=False,
    )
    if "FrameOfReferenceUID" not in segmentation:
        # General Image: Patient Orientation is Type 2C without a frame of reference; highdicom leaves it out.
        segmentation.PatientOrientation = radiograph.dataset.get("PatientOrientation", "")
    segmentation.save_as(path)


def write_result_folder(folder: Path, stored: np.ndarray, result, report: dict[str, Any], geometry: np.ndarray,
                        models_card: dict[str, Any], radiograph=None) -> None:
    """Every output of one image into `folder`: seg.dcm and measurements.dcm (DICOM sources only), certseg.seg.nrrd,
    overlay.png, certificate.npz (model-grid arrays for research) and report.json."""
    if radiograph is not None:
        from .sr import write_measurement_sr

        write_dicom_seg(folder / "seg.dcm", radiograph, result.source_labels, models_card)
        write_measurement_sr(folder / "measurements.dcm", radiograph, folder / "seg.dcm", report, models_card)
    write_seg_nrrd(folder / "certseg.seg.nrrd", result.source_labels, geometry, segment_tags(report))
    write_overlay(folder / "overlay.png", stored, result.source_labels)
    write_certificate_arrays(folder / "certificate.npz", result, report)
    write_radius_map(folder / "pixel_radius.nrrd", result, geometry)
    write_json(folder / "report.json", report)


CERTIFICATE_ARRAYS = {
    "model_labels": "certified class per model-grid pixel, -1 = abstained. Guarantee (probability >= 1 - alpha "
                    "over the sampling): every certified pixel carries the smoothed segmenter's label, unchanged "
                    "under any L2 perturbation of the model input below radius.model_space",
    "candidates": "class tested per pixel (from the n0 selection samples); certified or not",
    "counts": "votes for the candidate among the estimation samples drawn",
    "pixel_radius": "model-input L2 radius per certified pixel (NaN elsewhere) for its candidate, from a "
                    "Clopper-Pearson bound at each look's share of alpha / pixels: holds with probability "
                    ">= 1 - alpha on its own, together with model_labels with probability >= 1 - 2 alpha",
    "pixel_radius_stored_values": "pixel_radius / ||A||, L2 over the source grid in the units of "
                                  "radius.stored_values_units; all NaN when the intensity window came from the "
                                  "image itself (no per-pixel bound is computed for a movable window)",
}


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


def write_certificate_arrays(path: Path, result, report: dict[str, Any]) -> None:
    """certificate.npz: the model-grid arrays and, as `guarantees` (a JSON string), what each one promises."""
    certificate = result.certificate
    fixed_window = report["radius"]["window_fixed_by_header"]
    per_pixel_stored = (certificate.pixel_radius / result.input_map.operator_norm() if fixed_window
                        else np.full_like(certificate.pixel_radius, np.nan))
    guarantees = {**CERTIFICATE_ARRAYS, "alpha": certificate.parameters.alpha,
                  "radius_model_space": certificate.radius}
    np.savez_compressed(path, model_labels=certificate.labels, candidates=certificate.candidates,
                        counts=certificate.counts, pixel_radius=certificate.pixel_radius,
                        pixel_radius_stored_values=per_pixel_stored, guarantees=np.array(json.dumps(guarantees)))


def segment_tags(report: dict[str, Any]) -> dict[str, str]:
    """Parameters and radius as segment tags, for the Slicer module's panel."""
    params = report["parameters"]
    tags = {f"CertSeg.{k}": str(params[k]) for k in ("sigma", "n0", "n", "alpha", "tau", "correction")}
    tags["CertSeg.seed"] = str(report["noise"]["run_seed"])  # what --seed takes to reproduce this run
    tags.update({f"CertSeg.radius.{k}": f"{report['radius'][k]:.6g}"
                 for k in ("model_space", "stored_values_l2", "rms_per_source_pixel")})
    tags["CertSeg.denoiser"] = str(report["denoiser"])
    return tags


def write_overlay(path: Path, stored: np.ndarray, labels: np.ndarray, max_side: int = 1024) -> None:
    """A PNG for a quick look: the image, certified structures tinted, abstained pixels magenta."""
    from PIL import Image

    low, high = np.percentile(stored, [0.5, 99.5])
    gray = np.clip((stored - low) / max(high - low, 1e-9), 0, 1)
    rgb = np.repeat(gray[..., None] * 255, 3, axis=-1)
    for spec in segment_specs(labels):
        alpha = 0.55 if spec["value"] == ABSTAIN else 0.35
        rgb[spec["mask"]] = (1 - alpha) * rgb[spec["mask"]] + alpha * np.array(spec["color"], dtype=float)
    image = Image.fromarray(rgb.astype(np.uint8))
    image.thumbnail((max_side, max_side))
    image.save(path)
