"""The Detector: one deployed method over one encoder, with predict, score_set and stream."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.encoders import (
    DEFAULT_MODEL,
    Deployment,
    EncoderSpec,
    open_encoder,
    read_deployment,
    require_torch,
    set_outputs_on,
)
from zsad.api.results import Result, SetResult, decide
from zsad.api.scorers import SCORERS, HeadclipScoring, MethodOptions
from zsad.api.stream import Stream, image_label
from zsad.api.subsets import SetPlan, plan_set
from zsad.data.images import ImageInput, as_rgb_array, decode_each
from zsad.errors import ZsadError
from zsad.formats.artifact import load_artifact, parse_artifact
from zsad.formats.backbones import get_arch
from zsad.formats.bundle import ENGINE_SUFFIXES
from zsad.formats.memory import ScoringShape, kept_per_image, pair_bytes
from zsad.formats.methods import (
    DEFAULT_BANK,
    DEFAULT_METHOD,
    STREAMABLE,
    Method,
    default_method,
    get_method,
)
from zsad.formats.thresholds import bundle_threshold, mismatched_settings
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.encode import EncodedImages, encode_image, encode_images
from zsad.runtime.preprocess import decode_side
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.subsets import MIN_SET_SIZE

# Set scoring keeps a set's taps in float16: half the memory, image scores within 1e-4 of
# float32 taps and the same AUROC (docs/methods.md, "Large sets").
HALF_OUTPUTS = ("taps",)


class Detector:
    """Zero-shot anomaly detection with one method; build it with a ``from_*`` constructor.

    ``predict`` scores one image on its own (HeadCLIP), ``score_set`` scores a set of images
    (STAPS/MuSc: against each other; HeadCLIP: each alone), ``stream`` scores images one at a
    time in arrival order (STAPS: against a rolling bank). ``close`` (or ``with``) releases the
    encoder's sessions and GPU memory.
    """

    def __init__(
        self,
        method: str,
        backend: EncoderBackend,
        *,
        options: MethodOptions | None = None,
        headclip: HeadclipScoring | None = None,
        threshold: float | None = None,
        progress: bool = False,
        source: str = "",
    ) -> None:
        self.method: Method = get_method(method)
        self.backend = backend
        self.options = options or MethodOptions()
        self.headclip = headclip
        self.progress = progress
        self.source = source or backend.name
        self._threshold = threshold
        self.notes: list[str] = []  # what a user should know about this setup, one line each
        if self.method.needs_calibration and headclip is None:
            raise ZsadError(f"--method {method}: needs HeadCLIP calibration (an artifact)")
        self._score_set, self.settings = SCORERS[self.method.name][0](
            self.method.name, self.options, headclip, progress, backend.image_size
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_spec(
        cls,
        spec: EncoderSpec,
        method: str | None = None,
        *,
        calibration: str | os.PathLike[str] | None = None,
        options: MethodOptions | None = None,
        threshold: float | None = None,
        progress: bool = False,
    ) -> Detector:
        """A Detector for ``method`` over ``spec``'s encoder (None: musc, or the method of a
        bundle that cannot serve musc)."""
        options = options or MethodOptions()
        deployment = read_deployment(spec)
        try:
            chosen = get_method(method or default_method(deployment.method))
            headclip = None
            dino = None if spec.deployed else get_arch(spec.model)
            if chosen.needs_calibration and dino is not None:
                raise ZsadError(dino.headclip_refusal)
            if chosen.needs_calibration:
                backend, artifact = _headclip_encoder(spec, calibration, deployment)
                headclip = HeadclipScoring.from_artifact(artifact, backend.image_size, options)
            elif calibration is not None:
                raise ZsadError(f"--calibration {calibration}: only used with --method headclip")
            else:
                on = set_outputs_on(spec, chosen.name, options.scoring.device)
                backend = open_encoder(spec, chosen.outputs, outputs_on=on, deployment=deployment)
        except BaseException:
            deployment.close()
            raise
        return cls(
            chosen.name,
            backend,
            options=options,
            headclip=headclip,
            threshold=threshold,
            progress=progress,
            source=spec.describe(),
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        method: str | None = None,
        device: str = "auto",
        threshold: float | None = None,
        scoring: SetScoringConfig | None = None,
        jas_r: float | None = None,
        top_k: float | None = None,
        local_path: str | None = None,
        csa_layers: Sequence[int] | None = None,
        readout_layers: Sequence[int] | None = None,
        progress: bool = False,
    ) -> Detector:
        """From a `zsad export` bundle folder, one of its .onnx files or its engine; no torch.

        A folder runs ONNX Runtime (FP16 on CUDA, FP32 on CPU), an .engine/.plan file TensorRT.
        ``device``: auto, cpu or cuda. ``threshold`` overrides the bundle's OK/NG threshold.
        HeadCLIP's ``local_path``/``csa_layers``/``readout_layers`` (None: the calibration's)
        must match what the calibration was trained with.
        """
        path = Path(path)
        engine = path if path.suffix in ENGINE_SUFFIXES else None
        spec = EncoderSpec(device=device, bundle=None if engine else path, engine=engine)
        options = _options(scoring, jas_r, top_k, local_path, csa_layers, readout_layers)
        return cls.from_spec(spec, method, options=options, threshold=threshold, progress=progress)

    @classmethod
    def from_triton(
        cls,
        url: str,
        model: str,
        *,
        method: str | None = None,
        bundle: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        ca_file: str | os.PathLike[str] | None = None,
        token_file: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        scoring: SetScoringConfig | None = None,
        jas_r: float | None = None,
        top_k: float | None = None,
        progress: bool = False,
    ) -> Detector:
        """From an encoder served by Triton Inference Server (`zsad triton` wrote its model).

        ``url``: grpc://host:8001 (default protocol) or http://host:8000, grpcs:// or https://
        for TLS (``ca_file``: the CA that signed the server's certificate, default the system's).
        An access token, from the first line of ``token_file`` or else $ZSAD_TRITON_TOKEN, goes
        with every request as ``Authorization: Bearer``. The served model's metadata is checked
        on connect; with ``bundle`` its file must also be that bundle's. Scoring runs here. A
        server down or too slow raises zsad.errors.ServiceUnavailable.
        """
        spec = EncoderSpec(
            bundle=None if bundle is None else Path(bundle),
            triton=url,
            triton_model=model,
            triton_timeout_s=timeout_s,
            triton_ca=None if ca_file is None else Path(ca_file),
            triton_token_file=None if token_file is None else Path(token_file),
        )
        options = MethodOptions(scoring or SetScoringConfig(), jas_r, top_k)
        return cls.from_spec(spec, method, options=options, threshold=threshold, progress=progress)

    @classmethod
    def from_model(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        method: str = DEFAULT_METHOD,
        weights: str | os.PathLike[str] | None = None,
        pretrained: str | None = None,
        image_size: int | None = None,
        device: str = "auto",
        calibration: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        scoring: SetScoringConfig | None = None,
        jas_r: float | None = None,
        top_k: float | None = None,
        local_path: str | None = None,
        csa_layers: Sequence[int] | None = None,
        readout_layers: Sequence[int] | None = None,
        progress: bool = False,
    ) -> Detector:
        """From a model on PyTorch (the export extra): an open_clip CLIP model or a DINO/DINOv2
        backbone (``zsad models``), with ``weights`` FILE, else the ``pretrained`` release (None:
        the model's standard one). HeadCLIP (CLIP models only) also needs ``calibration`` (from
        `zsad calibrate`), whose local path ``local_path``/``csa_layers``/``readout_layers``
        must match when given."""
        spec = EncoderSpec(
            model=model,
            weights=None if weights is None else Path(weights),
            pretrained=pretrained,
            image_size=image_size,
            device=device,
        )
        options = _options(scoring, jas_r, top_k, local_path, csa_layers, readout_layers)
        return cls.from_spec(
            spec,
            method,
            calibration=calibration,
            options=options,
            threshold=threshold,
            progress=progress,
        )

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """The method's name."""
        return self.method.name

    @property
    def image_size(self) -> int:
        """The encoder's input size in pixels (maps come at this resolution)."""
        return self.backend.image_size

    @property
    def bundle(self) -> Any:
        """The bundle the encoder was opened from, or None for a model."""
        return getattr(self.backend, "bundle", None)

    def threshold(self, settings: dict[str, Any] | None = None) -> float | None:
        """The OK/NG threshold: the one given, else the bundle's for this method and settings."""
        if self._threshold is not None:
            return self._threshold
        bundle = self.bundle
        if bundle is None:
            self.note("no threshold given and no bundle: results carry scores, no OK/NG")
            return None
        entry = bundle_threshold(bundle, self.name)
        if entry is None:
            self.note(
                f"{bundle.root} has no {self.name} threshold (zsad calibrate-threshold): "
                "results carry scores, no OK/NG"
            )
            return None
        differ = mismatched_settings(entry, self.settings if settings is None else settings)
        if differ:
            self.note(
                f"warning: the {self.name} threshold in {bundle.root} was calibrated with other "
                f"settings ({', '.join(differ)}); recalibrate for reliable OK/NG"
            )
        return float(entry["score"])

    def note(self, line: str) -> None:
        """Keep a line a user should know about this setup (once)."""
        if line not in self.notes:
            self.notes.append(line)

    # ------------------------------------------------------------------ scoring

    def encode_one(self, image: ImageInput) -> dict[str, np.ndarray]:
        """The encoder outputs of one image (a batch of 1), decoded at a bounded size (on the GPU
        as ``encode``'s are)."""
        return encode_image(self.backend, as_rgb_array(image, decode_side(self.image_size)))

    def encode(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int = 8,
        progress: bool | None = None,
        positions: Sequence[int] | None = None,
    ) -> EncodedImages:
        """Run the encoder over images; unreadable ones are listed in ``failures`` (named by
        their place in ``positions``, default their index). The outputs are CuPy arrays on the
        GPU when this detector's set scoring runs there (a bundle or engine with STAPS/MuSc and
        CuPy), else NumPy."""
        show = self.progress if progress is None else progress
        decoded = decode_each(images, decode_side(self.image_size), positions)
        return encode_images(
            self.backend,
            decoded,
            count=len(images),
            batch_size=batch_size,
            progress=show,
            half=HALF_OUTPUTS,
        )

    def plan(
        self,
        images: Sequence[ImageInput],
        *,
        subset_size: int | None = None,
        divide: int | None = None,
        strata: Sequence[str] | None = None,
        memory_gb: float | None = None,
    ) -> SetPlan:
        """How ``score_set`` splits ``images``: ``divide`` subsets, or subsets of about
        ``subset_size``, else as large as fit ``memory_gb`` (None: the memory available now);
        stratified by ``strata`` (a label or group per image; default: its folder)."""
        return plan_set(
            images,
            lambda order: self._footprint(images, order),
            subset_size=subset_size,
            divide=divide,
            strata=strata,
            memory_gb=memory_gb,
            seed=self.options.scoring.seed,
        )

    def score_set(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int = 8,
        progress: bool | None = None,
        subset_size: int | None = None,
        divide: int | None = None,
        strata: Sequence[str] | None = None,
        memory_gb: float | None = None,
    ) -> SetResult:
        """Score a set: one Result per input, in order; unreadable inputs carry an ``error``.

        STAPS/MuSc score the images against each other (at least 2 readable, 5 for scores that
        mean something; 50-200 of one product is typical), in subsets when asked or when the
        set would not fit in memory (see ``plan``). HeadCLIP scores each on its own and decides
        OK/NG when a threshold is set; set-relative STAPS scores carry no decision. The scores
        do not depend on the order of ``images`` (unless STAPS takes it as time:
        ``order="input"``).
        """
        plan = self.plan(
            images, subset_size=subset_size, divide=divide, strata=strata, memory_gb=memory_gb
        )
        results: list[Result] = []
        infos: list[dict[str, Any]] = []
        timing = {"encode_s": 0.0, "score_s": 0.0}
        for subset in range(plan.count):
            part = self.score_subset(
                images,
                plan.members(subset, self.time_is_input_order),
                subset=subset,
                batch_size=batch_size,
                progress=progress,
            )
            results += part.results
            infos.append(part.info)
            timing = {k: round(v + part.timing[k], 3) for k, v in timing.items()}
        results.sort(key=lambda r: r.index)  # type: ignore[arg-type, return-value]
        info = infos[0] if plan.count == 1 else {"subsets": plan.count, "parts": infos}
        return SetResult(results, info, timing)

    @property
    def time_is_input_order(self) -> bool:
        """Whether the input order is STAS's time (STAPS with ``order="input"``); otherwise a
        set is scored in content order, so its scores do not depend on how it was listed."""
        scoring = self.options.scoring
        return self.name == "staps" and scoring.use_stas and scoring.order == "input"

    def score_subset(
        self,
        images: Sequence[ImageInput],
        members: Sequence[int],
        *,
        subset: int = 0,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> SetResult:
        """Score ``images[i] for i in members`` as one set, in that order (STAS's time): one
        Result per member, in input order, carrying its position in ``images`` and ``subset``."""
        start = time.perf_counter()
        chosen = [images[i] for i in members]
        encoded = self.encode(chosen, batch_size=batch_size, progress=progress, positions=members)
        encoded_at = time.perf_counter()
        scores, maps, info = self._score_set(encoded)
        timing = {
            "encode_s": round(encoded_at - start, 3),
            "score_s": round(time.perf_counter() - encoded_at, 3),
        }
        limit = self.threshold() if self.method.per_image else None
        set_size = None if self.method.per_image else len(encoded)
        if set_size is not None and set_size < MIN_SET_SIZE:
            self.note(
                f"warning: {set_size} images scored against each other, fewer than "
                f"{MIN_SET_SIZE}: their scores say little (records carry set_size)"
            )
        results = [
            Result(image_label(chosen[k]), None, index=i, subset=subset)
            for k, i in enumerate(members)
        ]
        for k, message in encoded.failures:
            results[k].error = message
        for row, k in enumerate(encoded.indices):
            score = float(scores[row])
            results[k] = Result(
                image_label(chosen[k]),
                score,
                maps[row],
                self.image_size,
                decision=decide(score, limit),
                threshold=limit,
                index=members[k],
                phase="set",
                subset=subset,
                set_size=set_size,
            )
        results.sort(key=lambda r: r.index)  # type: ignore[arg-type, return-value]
        return SetResult(results, info, timing)

    def _footprint(
        self, images: Sequence[ImageInput], order: Sequence[int]
    ) -> tuple[int, int] | None:
        """(bytes per image, bytes per pair) of scoring these images as a set, measured on the
        first that decodes in ``order``; None if none does."""
        for i in order:
            try:
                outputs = self.encode_one(images[i])
            except ZsadError:
                continue
            if "taps" not in outputs:
                per_image = sum(int(v.size) * v.itemsize for v in outputs.values())
                return per_image, 0
            _, n_taps, tokens, channels = outputs["taps"].shape
            experts = n_taps * len(self.options.scoring.r_list)
            cls = int(outputs["cls"].size) if "cls" in outputs else 0
            shape = ScoringShape(n_taps, tokens, channels, experts, cls)
            return kept_per_image(shape), pair_bytes(shape)
        return None

    def predict(self, image: ImageInput) -> Result:
        """Score one image on its own: a path, a PIL image or an (H, W, 3) uint8 array."""
        if not self.method.per_image:
            raise ZsadError(
                f"predict: {self.name} scores images against each other; use score_set(images) "
                "or stream(bank=K) (a rolling bank of recent images)"
            )
        outputs = self.encode_one(image)
        assert self.headclip is not None
        scores, maps = self.headclip(outputs["cls"], outputs["local"])
        score = float(scores[0])
        limit = self.threshold()
        label = image_label(image)
        return Result(label, score, maps[0], self.image_size, decide(score, limit), limit)

    def stream(self, bank: int = DEFAULT_BANK, *, threshold: float | None = None) -> Stream:
        """Score images one at a time in arrival order (STAPS: each against the last ``bank``)."""
        if not self.method.streams:
            raise ZsadError(
                f"stream: {self.name} does not score streams; use {' or '.join(STREAMABLE)}"
            )
        if bank < 2:
            raise ZsadError(f"--bank {bank}: a bank holds at least 2 images")
        scorer, settings = SCORERS[self.name][1](self.options, self.headclip, bank, self.image_size)
        limit = threshold if threshold is not None else self.threshold(settings)
        return Stream(self, scorer, settings, limit)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the encoder (ONNX Runtime sessions, TensorRT engines, CUDA memory)."""
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Detector({self.name!r}, {self.backend.name}, {self.image_size} px)"


def _options(
    scoring: SetScoringConfig | None,
    jas_r: float | None,
    top_k: float | None,
    local_path: str | None,
    csa_layers: Sequence[int] | None,
    readout_layers: Sequence[int] | None,
) -> MethodOptions:
    """MethodOptions from the constructors' keyword arguments."""
    return MethodOptions(
        scoring or SetScoringConfig(),
        jas_r,
        top_k,
        local_path,
        None if csa_layers is None else tuple(csa_layers),
        None if readout_layers is None else tuple(readout_layers),
    )


def _served_artifact(backend: Any) -> Any:
    """The calibration a HeadCLIP model on a Triton server carries in its config."""
    if not backend.calibration:
        backend.close()
        raise ZsadError(f"{backend.where}: a headclip model without its calibration")
    return parse_artifact(base64.b64decode(backend.calibration), backend.where)


def _headclip_encoder(
    spec: EncoderSpec, calibration: str | os.PathLike[str] | None, deployment: Deployment
) -> tuple[EncoderBackend, Any]:
    """The HeadCLIP encoder and its artifact: from the bundle, or a model plus an artifact."""
    if spec.deployed:
        if calibration is not None:
            raise ZsadError(
                f"--calibration {calibration}: a headclip bundle carries its own calibration"
            )
        backend = open_encoder(spec, get_method("headclip").outputs, deployment=deployment)
        if spec.triton is not None:
            return backend, _served_artifact(backend)
        bundle = backend.bundle  # type: ignore[attr-defined]
        artifact = load_artifact(bundle.file(bundle.calibration))
        if bundle.local_path != artifact.local_path:
            backend.close()
            raise ZsadError(
                f"--bundle {bundle.root}: the encoder computes local path "
                f"{bundle.local_path.describe()}, its calibration was trained with "
                f"{artifact.local_path.describe()}"
            )
        return backend, artifact
    if calibration is None:
        raise ZsadError(
            "--method headclip: needs --calibration ARTIFACT (from zsad calibrate) or a "
            "headclip --bundle"
        )
    artifact = load_artifact(calibration, backbone=spec.model, image_size=spec.image_size)
    require_torch(f"--model {spec.model}", "; or run a bundle with --bundle")
    # Here, not at the top: a Detector over a bundle or a server runs without torch.
    from zsad.model import load_clip
    from zsad.model.backend import TorchBackend
    from zsad.model.headclip import encoder_from_artifact

    clip = load_clip(spec.model, weights=spec.weights, pretrained=spec.pretrained)
    return TorchBackend(encoder_from_artifact(clip, artifact), device=spec.device), artifact
