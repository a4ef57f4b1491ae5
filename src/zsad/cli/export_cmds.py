"""`zsad export`: write a deployment bundle (ONNX FP32 + FP16, optional TensorRT engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.api.encoders import model_image_size, require_torch
from zsad.cli.options import QueueDelayOpt, encoder_options, int_tuple, local_path_options
from zsad.formats.methods import DEFAULT_METHOD, METHODS

# The commands import what they run inside their functions (export needs torch): `zsad --help`
# starts without any of it.

ComputeCapabilityOpt = Annotated[
    str | None,
    typer.Option(
        "--compute-capability",
        help="TensorRT-RTX targets, e.g. 7.5,8.6,8.9 (7.5 = Turing, RTX 20xx, only when "
        "listed). Default: 8.0, 8.6, 8.9, 12.0, 12.1.",
    ),
]
MaxBatchOpt = Annotated[
    int, typer.Option("--max-batch", min=1, help="Largest batch the engine accepts.")
]


TritonRepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--triton",
        help="Also write a Triton model repository here from the new bundle, with the "
        "defaults of `zsad triton` (run that for other forms and batching).",
    ),
]
NameOpt = Annotated[
    str, typer.Option("--name", help="Model name; other forms get _fp16, _trt, _python, _openvino.")
]
FormOpt = Annotated[
    str,
    typer.Option(
        "--form",
        help="Comma-separated: onnx (FP32, onnxruntime_onnx), fp16 (FP16 ONNX), trt "
        "(tensorrt_plan, when the bundle has a full TensorRT engine), python (ONNX Runtime "
        "inside the Python backend, for servers without the onnxruntime backend), openvino "
        "(the FP32 ONNX file on Triton's OpenVINO backend, CPU).",
    ),
]
PreferredOpt = Annotated[
    str, typer.Option("--preferred-batch", help="Dynamic batching: preferred batch sizes.")
]
InstancesOpt = Annotated[
    int, typer.Option("--instances", min=1, help="Model instances (instance_group count).")
]
KindOpt = Annotated[
    Literal["gpu", "cpu"],
    typer.Option("--kind", help="Instance kind of the ONNX and Python models (plans: GPU)."),
]
EnsembleOpt = Annotated[
    bool,
    typer.Option(
        "--ensemble",
        help="HeadCLIP bundles: also serve the whole method (NAME_headclip: preprocessed pixels "
        "in, score and map out) with a Python-backend scorer; the server's Python needs zsad.",
    ),
]


ExportMethodOpt = Annotated[
    Literal[tuple(METHODS)],
    typer.Option(
        "--method",
        help="musc or staps: a staps bundle, outputs cls + taps, that serves both training-free "
        "methods; headclip: cls + local with the artifact's head weights baked in (needs "
        "--calibration).",
    ),
]
CalibrationFileOpt = Annotated[
    Path | None,
    typer.Option("--calibration", help="HeadCLIP artifact (.safetensors from zsad calibrate)."),
]
EngineKindOpt = Annotated[
    Literal["none", "rtx", "trt"],
    typer.Option(
        "--engine",
        help="Also build an engine: none; rtx (TensorRT-RTX, builds without a GPU, for RTX "
        "20xx-50xx); trt (full TensorRT, builds on the target GPU: Jetson, datacenter).",
    ),
]


@local_path_options()
@encoder_options(only=("model", "weights", "pretrained", "image_size"))
def export(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (created if needed).")],
    method: ExportMethodOpt = DEFAULT_METHOD,
    calibration: CalibrationFileOpt = None,
    engine: EngineKindOpt = "none",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
    triton_repo: TritonRepoOpt = None,
    *,
    encoder: Any,
    local_path: dict[str, Any],
) -> None:
    """Export the image encoder to ONNX (FP32 and FP16) and optionally a TensorRT engine.

    The bundle folder gets encoder.onnx, encoder.fp16.onnx, encoder.engine (with --engine),
    calibration.safetensors (headclip) and bundle.json. Export checks itself (ONNX checker,
    ONNX Runtime vs PyTorch, FP16 vs FP32) and fails instead of writing a bad bundle.
    A headclip encoder computes the local path its calibration was trained with.
    Run it with `zsad infer --bundle OUT` (ONNX Runtime) or
    `zsad infer --engine OUT/encoder.engine` (TensorRT).
    """
    require_torch("zsad export")
    from zsad.export.engine import parse_compute_capabilities
    from zsad.export.pipeline import export_model

    export_model(
        out,
        model=encoder.model,
        weights=encoder.weights,
        pretrained=encoder.pretrained,
        method=method,
        image_size=model_image_size(encoder.model, encoder.image_size),
        calibration=calibration,
        engine=engine,
        compute_capabilities=parse_compute_capabilities(compute_capability),
        max_batch=max_batch,
        local_path=local_path,
    )
    typer.echo(f"exported {encoder.model} ({method}) -> {out}")
    if triton_repo is not None:
        from zsad.export.triton_repo import write_repository

        models = write_repository(out, triton_repo)
        typer.echo(f"triton models {', '.join(models)} -> {triton_repo}")


def build_engine(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by zsad export.")],
    engine: Annotated[
        Literal["rtx", "trt"],
        typer.Option(
            "--engine",
            help="rtx (TensorRT-RTX) or trt (full TensorRT).",
        ),
    ] = "rtx",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
) -> None:
    """Build (or rebuild) BUNDLE/encoder.engine from the bundle's FP16 ONNX; no torch needed.

    Use it on the target machine: full TensorRT (Jetson, datacenter GPUs) builds for the GPU it
    runs on, so export on a workstation, copy the bundle, then build the engine there.
    """
    from zsad.export.engine import add_engine, parse_compute_capabilities

    targets = parse_compute_capabilities(compute_capability)
    add_engine(bundle, flavour=engine, compute_capabilities=targets, max_batch=max_batch)
    typer.echo(f"engine -> {bundle / 'encoder.engine'}")


def triton(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by zsad export.")],
    repo: Annotated[Path, typer.Argument(help="Triton model repository folder (created).")],
    name: NameOpt = "zsad",
    form: FormOpt = "onnx,fp16,trt",
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="max_batch_size of every model.")
    ] = 16,
    preferred_batch: PreferredOpt = "4,8",
    queue_delay_us: QueueDelayOpt = 2000,
    instances: InstancesOpt = 1,
    kind: KindOpt = "gpu",
    ensemble: EnsembleOpt = False,
) -> None:
    """Write a Triton Inference Server model repository from a bundle; no torch needed.

    Each model's config.pbtxt carries bundle.json (image size, normalisation, method, hashes;
    HeadCLIP's calibration too), which `zsad infer --triton URL --triton-model NAME` checks on
    connect. Serve it with tritonserver --model-repository REPO (see docs/triton.md).
    """
    from zsad.export.triton_repo import RepositoryOptions, write_repository

    options = RepositoryOptions(
        name=name,
        forms=tuple(f.strip() for f in form.split(",") if f.strip()),
        max_batch=max_batch,
        preferred_batch=int_tuple("--preferred-batch", preferred_batch),
        queue_delay_us=queue_delay_us,
        instances=instances,
        kind=kind,
        ensemble=ensemble,
    )
    models = write_repository(bundle, repo, options)
    typer.echo(f"triton models {', '.join(models)} -> {repo}")


def triton_serve(
    repo: Annotated[Path, typer.Argument(help="Model repository written by zsad triton.")],
    cpu: Annotated[
        bool,
        typer.Option(
            "--cpu", help="Hide this machine's GPUs from the server (write REPO with --kind cpu)."
        ),
    ] = False,
    grpc_port: Annotated[
        int, typer.Option("--grpc-port", min=1, max=65535, help="The gRPC endpoint's port.")
    ] = 8001,
    http_port: Annotated[
        int, typer.Option("--http-port", min=1, max=65535, help="The HTTP endpoint's port.")
    ] = 8000,
    address: Annotated[
        str,
        typer.Option(
            "--address",
            help="Where the server listens; anything other than 127.0.0.1 opens its endpoints, "
            "model control included, to whoever reaches the ports.",
        ),
    ] = "127.0.0.1",
    server_env: Annotated[
        Path,
        typer.Option(
            "--server-env",
            envvar="ZSAD_TRITON_ENV",
            help="The nvidia-pytriton virtual environment holding tritonserver.",
        ),
    ] = Path(".venv-triton"),
) -> None:
    """Serve a model repository from a local tritonserver (nvidia-pytriton's, CPU, Python
    backend: write REPO with --form python), in the foreground until Ctrl-C (see docs/triton.md).
    """
    from zsad.bench.triton_server import serve

    code = serve(
        repo, server_env, address=address, http_port=http_port, grpc_port=grpc_port, cpu=cpu
    )
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("export")(export)
    app.command("build-engine")(build_engine)
    app.command("triton")(triton)
    app.command("triton-serve")(triton_serve)
