"""`certseg train segmenter|denoiser`: seeded, resumable training on model-space images.

Checkpoints are safetensors (weights and optimizer tensors) plus a JSON file
(step, optimizer hyper-parameters, random states); nothing is pickled.
Training stops at `steps` or after `max_minutes`, whichever comes first, and
always leaves a checkpoint and the finished model folder behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .datasets import Sample, to_model_space
from .denoiser import timestep_for_sigma
from .labels import NUM_CLASSES, label_card
from .models import (
    DEFAULT_DENOISER_CONFIG,
    DEFAULT_SEGMENTER_ARCHITECTURE,
    build_segmenter_network,
    save_denoiser,
    save_segmenter,
)
from .outputs import write_json
from .preprocess import DEFAULT_PERCENTILES
from .smoothing import resolve_device

MODEL_SIZE = 256
INTENDED_USE = "Demonstration and research only; not for clinical use."


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    max_minutes: float | None = None
    checkpoint_every: int = 25
    device: str = "auto"
    # segmenter: noise augmentation sigma drawn uniformly from this range per image (the smoothing noise)
    noise_sigma: tuple[float, float] = (0.0, 0.5)
    # denoiser: train only the timesteps that serve these sigmas, on random crops of this size
    denoiser_sigma: tuple[float, float] = (0.05, 1.2)
    crop: int = 128
    extra_card: dict[str, Any] = field(default_factory=dict)


def model_space_arrays(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [to_model_space(s, MODEL_SIZE, DEFAULT_PERCENTILES) for s in samples]
    images = torch.as_tensor(np.stack([p[0] for p in pairs]))[:, None]
    labels = torch.as_tensor(np.stack([p[1] for p in pairs]).astype(np.int64))[:, None]
    return images, labels


def train_segmenter(samples: list[Sample], out: Path, config: TrainConfig, progress: bool = True) -> dict:
    """MONAI U-Net, Dice + cross-entropy, Gaussian noise augmentation at the smoothing sigmas."""
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, RandAffined, RandGaussianSmoothd

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    images, labels = model_space_arrays(samples)
    network = build_segmenter_network(DEFAULT_SEGMENTER_ARCHITECTURE).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    augment = Compose([
        RandAffined(keys=("image", "label"), prob=0.8, rotate_range=0.08, scale_range=0.1,
                    translate_range=(12, 12), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianSmoothd(keys="image", prob=0.3, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
    ])
    augment.set_random_state(config.seed)
    rng = np.random.default_rng(config.seed)

    def step_loss() -> torch.Tensor:
        batch = [augment({"image": images[i], "label": labels[i]})
                 for i in rng.integers(len(images), size=config.batch_size)]
        x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).to(device)
        y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).to(device)
        sigma = torch.as_tensor(rng.uniform(*config.noise_sigma, size=(len(x), 1, 1, 1)), dtype=x.dtype, device=device)
        return loss_function(network(x + sigma * torch.randn_like(x)), y)

    steps = _run(network, optimizer, step_loss, out / "checkpoints" / "segmenter", config, progress, "segmenter")
    card = {
        "name": "certseg-cxr-unet",
        "version": "0.1.0",
        "task": "chest X-ray multi-class segmentation (JSRT/SCR structure set)",
        "architecture": DEFAULT_SEGMENTER_ARCHITECTURE,
        "labels": label_card(),
        "input": {"size": MODEL_SIZE, "channels": 1, "percentiles": list(DEFAULT_PERCENTILES),
                  "mapping": "stored values, MONOCHROME2, percentile window -> [0, 1], zero-pad to square, "
                             "antialiased bilinear resize"},
        "training": {"steps": steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                     "loss": "DiceCE", "noise_sigma_uniform": list(config.noise_sigma), "seed": config.seed,
                     "images": len(samples), **config.extra_card},
        "intended_use": INTENDED_USE,
    }
    return save_segmenter(network.cpu(), card, out / "segmenter")


def train_denoiser(samples: list[Sample], out: Path, config: TrainConfig, progress: bool = True) -> dict:
    """diffusers UNet2DModel, epsilon loss, only the timesteps our sigmas use, random crops."""
    from diffusers import DDPMScheduler, UNet2DModel

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    images, _ = model_space_arrays(samples)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    unet = UNet2DModel(**DEFAULT_DENOISER_CONFIG).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    abar = scheduler.alphas_cumprod
    t_low, t_high = (timestep_for_sigma(abar, s) for s in config.denoiser_sigma)
    rng = np.random.default_rng(config.seed)

    def step_loss() -> torch.Tensor:
        index = rng.integers(len(images), size=config.batch_size)
        top, left = rng.integers(0, MODEL_SIZE - config.crop + 1, size=2)
        x0 = (2 * images[index, :, top : top + config.crop, left : left + config.crop] - 1).to(device)
        t = torch.as_tensor(rng.integers(t_low, t_high + 1, size=config.batch_size), device=device)
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, noise, t.cpu()).to(device)
        return torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)

    steps = _run(unet, optimizer, step_loss, out / "checkpoints" / "denoiser", config, progress, "denoiser")
    card = {
        "name": "certseg-cxr-ddpm",
        "version": "0.1.0",
        "task": "one-shot denoising of chest X-rays for diffusion denoised smoothing",
        "input": {"size": MODEL_SIZE, "range": "[0, 1] model space, scaled to [-1, 1] inside"},
        "training": {"steps": steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                     "crop": config.crop, "timesteps": [t_low, t_high],
                     "sigma_range": list(config.denoiser_sigma), "seed": config.seed, "images": len(samples),
                     **config.extra_card},
        "intended_use": INTENDED_USE,
    }
    return save_denoiser(unet.cpu(), scheduler, card, out / "denoiser")


def _run(model, optimizer, step_loss, checkpoint: Path, config: TrainConfig, progress: bool, name: str) -> int:
    """The training loop shared by both models: resume, step, checkpoint, stop on steps or time."""
    step = _load_checkpoint(checkpoint, model, optimizer) if checkpoint.exists() else 0
    model.train()
    started = time.monotonic()
    with tqdm(total=config.steps, initial=step, desc=f"train {name}", disable=not progress) as bar:
        while step < config.steps:
            loss = step_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                _save_checkpoint(checkpoint, model, optimizer, step)
            if out_of_time:
                break
    model.eval()
    return step


def _save_checkpoint(folder: Path, model, optimizer, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.json.tmp").write_text(json.dumps(
        {"step": step, "param_groups": state["param_groups"], "scalars": scalars, "torch_rng": torch.get_rng_state().tolist()}
    ))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json.tmp").replace(folder / "state.json")


def _load_checkpoint(folder: Path, model, optimizer) -> int:
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    return int(meta["step"])


def fit_ood(model_dir: Path, training: list[Sample], held_out: list[Sample], false_rejection_rate: float) -> dict:
    """Fit the spectral OOD detector for the segmenter in `model_dir` and store it in its card."""
    from .models import load_segmenter, sha256_of
    from .ood import fit_detector

    if not 0 < false_rejection_rate < 1:
        raise ValueError(f"false rejection rate must lie in (0, 1), got {false_rejection_rate}")
    network, card = load_segmenter(model_dir / "segmenter")
    train_images, _ = model_space_arrays(training)
    held_out_images, _ = model_space_arrays(held_out)
    detector = fit_detector(network, train_images[:, 0].numpy(), held_out_images[:, 0].numpy(), false_rejection_rate)
    detector_path = model_dir / "segmenter" / "ood.safetensors"
    detector.save(detector_path)
    card = {**card, "ood_detector": {
        "file": detector_path.name, "sha256": sha256_of(detector_path), "method": "spectral signature (Mahalanobis)",
        "threshold": detector.threshold, "false_rejection_rate": detector.false_rejection_rate,
        "training_images": len(training), "held_out_images": len(held_out)}}
    write_json(model_dir / "segmenter" / "card.json", card)
    return card
