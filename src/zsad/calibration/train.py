"""HeadCLIP calibration: train prompts, deep text tokens and head weights on labelled images.

Follows AnomalyCLIP's recipe (Adam 1e-3, betas (0.5, 0.999), 15 epochs, batch 8, 518 px) on an
auxiliary dataset with masks, e.g. the MVTec AD test split, and returns a
:class:`~zsad.formats.artifact.HeadclipArtifact` for zero-shot use elsewhere.

Determinism: the prompt initialisation comes from ``seed`` and the batch order of epoch e from
``(seed, e)``, so a run is a pure function of its settings and data on a given machine, and a run
resumed from a checkpoint continues exactly where it stopped (same batches, same Adam state).

Checkpoints are safetensors files holding the learned tensors, the Adam moments and step counts,
and in their metadata the position (epoch, batch), the loss so far and a fingerprint of the
settings and data; a checkpoint from other settings or data is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from zsad.calibration.losses import headclip_loss
from zsad.data.datasets import Sample
from zsad.data.images import load_image, load_mask
from zsad.errors import ZsadError
from zsad.formats.artifact import HeadclipArtifact
from zsad.formats.atomic import atomic_open
from zsad.formats.local_path import DEFAULT_KIND, LocalPath
from zsad.model.headclip import HeadCLIP, probability_maps
from zsad.model.prompts import DEEP_LAYERS, N_CTX, N_DEEP
from zsad.runtime.preprocess import preprocess_image
from zsad.scoring.headclip import JAS_RATIO, SIGMA, TEMPERATURE, TOP_K_PERCENT

CHECKPOINT_FORMAT = "zsad-headclip-checkpoint/1"
# Settings that may change between a run and its resumption: the run's length and how often it
# saves, and the inference defaults stored in the artifact, none of which alter the trajectory.
_RESUMABLE_CHANGES = ("epochs", "checkpoint_every", "jas_r", "top_k", "sigma")


@dataclass(frozen=True)
class CalibrationConfig:
    """Training settings; the JAS/blur fields are stored as the artifact's inference defaults."""

    image_size: int = 518
    epochs: int = 15
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    seed: int = 0
    lhw: bool = True  # False: head weights stay at 1 (the paper's "without LHW" ablation)
    local_path: str = DEFAULT_KIND  # see zsad.formats.local_path
    csa_layers: tuple[int, ...] | None = None  # None: the local path's default for the model
    readout_layers: tuple[int, ...] | None = None  # None: after the last CSA block
    n_ctx: int = N_CTX
    n_deep: int = N_DEEP
    deep_layers: int = DEEP_LAYERS
    temperature: float = TEMPERATURE
    local_weight: float = 1.0
    jas_r: float = JAS_RATIO  # 1.0: image score from the CLS path only (the "without JAS" ablation)
    top_k: float = TOP_K_PERCENT
    sigma: float = SIGMA
    checkpoint_every: int = 50  # steps; a checkpoint is also written at the end of every epoch

    def __post_init__(self) -> None:
        checks = (
            ("--image-size", self.image_size, self.image_size > 0, "a positive size"),
            ("--epochs", self.epochs, self.epochs >= 0, ">= 0"),
            ("--lr", self.lr, self.lr > 0, "> 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("--jas-ratio", self.jas_r, 0 <= self.jas_r <= 1, "in [0, 1]"),
            ("--top-k", self.top_k, 0 < self.top_k <= 100, "a percentage in (0, 100]"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1"),
        )
        for flag, value, ok, expected in checks:
            if not ok:
                raise ZsadError(f"{flag} {value}: must be {expected}")


@dataclass
class CalibrationResult:
    """The trained artifact and how training went."""

    artifact: HeadclipArtifact
    epoch_losses: list[float]
    first_loss: float | None  # the very first step's, before any update (None: no step run)
    steps: int
    seconds: float
    resumed_from: tuple[int, int] | None = None  # (epoch, batch) of the checkpoint used


def build_model(
    clip_model: torch.nn.Module, model_name: str, config: CalibrationConfig
) -> HeadCLIP:
    """A HeadCLIP around a loaded open_clip model, with open_clip's tokenizer for ``model_name``."""
    local_path = LocalPath.resolve(
        len(clip_model.visual.transformer.resblocks),
        config.local_path,
        config.csa_layers,
        config.readout_layers,
    )
    return HeadCLIP(
        clip_model,
        open_clip.get_tokenizer(model_name),
        image_size=config.image_size,
        local_path=local_path,
        n_ctx=config.n_ctx,
        n_deep=config.n_deep,
        deep_layers=config.deep_layers,
        train_head_weights=config.lhw,
        temperature=config.temperature,
        seed=config.seed,
    )


def training_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Keep labelled samples; an anomalous image without a mask is an error (no pixel target)."""
    kept = [s for s in samples if s.label is not None]
    if not kept:
        raise ZsadError("calibration data: no labelled images")
    for sample in kept:
        if sample.label == 1 and sample.mask_path is None:
            raise ZsadError(f"{sample.path}: anomalous image without a ground-truth mask")
    if len({s.label for s in kept}) < 2:
        raise ZsadError("calibration data: needs both good and anomalous images")
    return kept


def load_batch(
    samples: Sequence[Sample], image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (B, 3, S, S), masks (B, S, S) float32 in {0, 1} and labels (B,) int64."""
    pixels = np.stack([preprocess_image(load_image(s.path), image_size) for s in samples])
    masks = np.zeros((len(samples), image_size, image_size), np.float32)
    for i, sample in enumerate(samples):
        if sample.label == 1:
            masks[i] = load_mask(sample.mask_path, size=(image_size, image_size))
    labels = np.array([s.label for s in samples], np.int64)
    return pixels, masks, labels


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def calibrate(
    model: HeadCLIP,
    samples: Sequence[Sample],
    config: CalibrationConfig,
    *,
    backbone: str,
    device: str | torch.device = "cpu",
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    info: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CalibrationResult:
    """Train ``model``'s learned tensors on ``samples`` and return the artifact.

    ``checkpoint`` is written every ``config.checkpoint_every`` steps and after each epoch;
    ``resume`` continues from it (it must exist and match these settings and data). ``info`` is
    merged into the artifact's hyperparameters (e.g. the training categories).
    """
    samples = training_samples(samples)
    if model.encoder.image_size != config.image_size:
        raise ZsadError(
            f"--image-size {config.image_size}: the model was built for {model.encoder.image_size}"
        )
    device = torch.device(device)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=config.betas)
    fingerprint = _fingerprint(config, backbone, samples)
    steps_per_epoch = math.ceil(len(samples) / config.batch_size)

    state = _TrainState()
    resumed_from = None
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise ZsadError(f"--resume: no checkpoint at {checkpoint}")
        state = _load_checkpoint(checkpoint, model, optimizer, fingerprint)
        resumed_from = (state.epoch, state.batch)

    start = time.perf_counter()
    steps = 0
    total = config.epochs * steps_per_epoch
    done = min(state.epoch * steps_per_epoch + state.batch, total)
    bar = tqdm(total=total, initial=done, desc="calibrating", unit="step", disable=not progress)
    model.eval()  # CLIP has no dropout/batch-norm to train; eval keeps it exactly frozen
    with ThreadPoolExecutor(max_workers=1) as loader, bar:
        while state.epoch < config.epochs:
            order = epoch_order(len(samples), config.seed, state.epoch)
            batches = [
                [samples[i] for i in order[b : b + config.batch_size]]
                for b in range(0, len(samples), config.batch_size)
            ]
            # Decode the next batch in a thread while this one trains.
            pending = loader.submit(load_batch, batches[state.batch], config.image_size)
            while state.batch < len(batches):
                pixels, masks, labels = pending.result()
                if state.batch + 1 < len(batches):
                    pending = loader.submit(load_batch, batches[state.batch + 1], config.image_size)
                loss = _step(model, optimizer, pixels, masks, labels, config, device)
                steps += 1
                if state.first_loss is None:
                    state.first_loss = loss
                state.loss_sum += loss
                state.loss_count += 1
                state.batch += 1
                bar.update(1)
                bar.set_postfix(
                    epoch=state.epoch + 1, loss=f"{state.loss_sum / state.loss_count:.4f}"
                )
                if on_step is not None:
                    on_step(state.epoch * steps_per_epoch + state.batch, loss)
                if state.batch < len(batches) and state.batch % config.checkpoint_every == 0:
                    _save_checkpoint(checkpoint, model, optimizer, state, fingerprint)
            state.epoch_losses.append(state.loss_sum / state.loss_count)
            state.epoch, state.batch, state.loss_sum, state.loss_count = state.epoch + 1, 0, 0.0, 0
            _save_checkpoint(checkpoint, model, optimizer, state, fingerprint)

    hyperparameters = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "epoch_losses": [round(v, 6) for v in state.epoch_losses],
        "train_images": len(samples),
        **(info or {}),
    }
    hyperparameters.pop("checkpoint_every")
    return CalibrationResult(
        artifact=model.to_artifact(backbone, hyperparameters),
        epoch_losses=state.epoch_losses,
        first_loss=state.first_loss,
        steps=steps,
        seconds=time.perf_counter() - start,
        resumed_from=resumed_from,
    )


def _step(
    model: HeadCLIP,
    optimizer: torch.optim.Optimizer,
    pixels: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    config: CalibrationConfig,
    device: torch.device,
) -> float:
    """One optimisation step on one batch; returns the loss before the update."""
    pixels_t = torch.from_numpy(pixels).to(device)
    masks_t = torch.from_numpy(masks).to(device)
    labels_t = torch.from_numpy(labels).to(device)
    out = model(pixels_t)
    probs = probability_maps(out.patch_logits, config.image_size)
    loss = headclip_loss(out.image_logits, labels_t, probs, masks_t, config.local_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass
class _TrainState:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    loss_sum: float = 0.0  # over the current epoch's completed batches
    loss_count: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    first_loss: float | None = None  # kept in checkpoints, so a resumed run still reports it


def _fingerprint(config: CalibrationConfig, backbone: str, samples: Sequence[Sample]) -> str:
    """Hash of everything that determines the training trajectory, except its length."""
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE_CHANGES}
    data = [(str(s.path), s.label, str(s.mask_path)) for s in samples]
    payload = json.dumps({"settings": settings, "backbone": backbone, "data": data}, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _save_checkpoint(
    path: Path | None,
    model: HeadCLIP,
    optimizer: torch.optim.Optimizer,
    state: _TrainState,
    fingerprint: str,
) -> None:
    if path is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"learned.{k}": v.cpu().contiguous() for k, v in model.learned_state().items()}
    for param, moments in optimizer.state.items():
        for key, value in moments.items():
            tensors[f"adam.{names[id(param)]}.{key}"] = value.detach().cpu().contiguous()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "state": json.dumps(asdict(state)),
    }
    with atomic_open(path, "wb") as handle:
        handle.write(save(tensors, metadata=meta))


def _load_checkpoint(
    path: Path, model: HeadCLIP, optimizer: torch.optim.Optimizer, fingerprint: str
) -> _TrainState:
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ZsadError(f"--resume: {path} is not a readable checkpoint ({exc})") from exc
    meta = header.get("__metadata__", {})
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ZsadError(f"--resume: {path} is not a zsad HeadCLIP checkpoint")
    if meta.get("fingerprint") != fingerprint:
        raise ZsadError(
            f"--resume: {path} was made with other settings, backbone or data; run without "
            "--resume to start over"
        )
    model.load_learned_state(
        {k.removeprefix("learned."): v for k, v in tensors.items() if k.startswith("learned.")}
    )
    params = dict(model.named_parameters())
    for param_name, param in params.items():
        # Adam keeps its step counts on the CPU unless it runs in capturable mode.
        moments = {
            key.rsplit(".", 1)[1]: value if key.endswith(".step") else value.to(param.device)
            for key, value in tensors.items()
            if key.startswith(f"adam.{param_name}.")
        }
        if moments:
            optimizer.state[param] = moments
    return _TrainState(**json.loads(meta["state"]))
