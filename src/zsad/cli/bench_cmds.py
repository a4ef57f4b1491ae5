"""`zsad bench`: encoder latency, scoring cost versus N and bank size, end-to-end pipeline, a
sustained station run and `zsad infer` against N; the benchmarks themselves live in zsad.bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.bench.backends import BACKENDS
from zsad.cli.options import (
    BundleOpt,
    DeviceOpt,
    ModelOpt,
    QueueDelayOpt,
    SeedOpt,
    TritonCaOpt,
    TritonTokenFileOpt,
    WeightsOpt,
)
from zsad.errors import ZsadError

# Each command imports its bench inside its function: `zsad --help` and the other commands
# start without the benches (and torch, CuPy or the line clients they may load).

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: each writes OUT/bench.json, OUT/bench.md and PNG plots. Random weights "
    "time like real ones, so no download is needed.",
    no_args_is_help=True,
)

OutOpt = Annotated[
    Path, typer.Option("--out", help="Folder for bench.json, bench.md and the PNG plots.")
]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")]
ItersOpt = Annotated[int, typer.Option("--iters", min=1, help="Timed runs, at least.")]
MinTimeOpt = Annotated[
    float,
    typer.Option("--min-time", min=0.0, help="Keep timing until this many seconds are spent."),
]
BenchImageSizeOpt = Annotated[
    int, typer.Option("--image-size", help="Encoder input size in pixels.")
]
BenchPretrainedOpt = Annotated[
    str,
    typer.Option(
        "--pretrained", help="open_clip tag; 'random' (default) times exactly like real weights."
    ),
]


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ZsadError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise ZsadError(f"{option} {text!r}: expected positive integers")
    return values


def encoder(
    out: OutOpt,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: BenchPretrainedOpt = "random",
    bundle: BundleOpt = None,
    backend: Annotated[
        str, typer.Option("--backend", help=f"Comma-separated: {', '.join(BACKENDS)}.")
    ] = "torch-fp32",
    batch: Annotated[
        str, typer.Option("--batch", help="Comma-separated batch sizes.")
    ] = "1,4,8,16",
    image_size: BenchImageSizeOpt = 518,
    device: DeviceOpt = "auto",
    warmup: WarmupOpt = 3,
    iters: ItersOpt = 20,
    min_time: MinTimeOpt = 2.0,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=1,
            help="Split each row's timed runs into this many rounds, with a matmul peak sample "
            "before each and after the last; the fraction of peak uses the median sample.",
        ),
    ] = 5,
) -> None:
    """Encoder latency percentiles, images/s, peak memory and achieved TFLOP/s per backend/batch;
    each backend in its own process."""
    from zsad.bench.encoder import bench_encoder

    backends = [b.strip() for b in backend.split(",") if b.strip()]
    bench_encoder(
        out,
        backends=backends,
        batches=_ints(batch, "--batch"),
        model=model,
        weights=weights,
        pretrained=pretrained,
        bundle=bundle,
        image_size=image_size,
        device=device,
        warmup=warmup,
        iters=iters,
        min_time=min_time,
        rounds=rounds,
    )


def scoring(
    out: OutOpt,
    n: Annotated[str, typer.Option("--n", help="Comma-separated set sizes N.")] = "50,100,200",
    bank: Annotated[
        str | None,
        typer.Option("--bank", help="Comma-separated bank sizes K (single-image scoring)."),
    ] = None,
    patches: Annotated[
        int, typer.Option("--patches", min=1, help="Patches per image (1369 = ViT-L/14 at 518).")
    ] = 1369,
    channels: Annotated[
        int, typer.Option("--channels", min=1, help="Feature channels (1024 = ViT-L).")
    ] = 1024,
    taps: Annotated[
        int, typer.Option("--taps", min=0, help="Taps for the full score_set timing; 0 skips it.")
    ] = 4,
    memory_mb: Annotated[
        float, typer.Option("--memory-mb", help="MSM tile budget (mutual_scores).")
    ] = 64.0,
    max_baseline_mb: Annotated[
        float,
        typer.Option(
            "--max-baseline-mb", help="Skip the MuSc-style baseline above this matrix size."
        ),
    ] = 2048.0,
    numpy: Annotated[
        bool,
        typer.Option(
            "--numpy/--no-numpy",
            help="Also time the NumPy path and the NumPy baseline. On a GPU machine --no-numpy "
            "saves minutes: one map at N=200 and ViT-L shapes is 76 TFLOP.",
        ),
    ] = True,
    seed: SeedOpt = 0,
    align_window: Annotated[
        str | None,
        typer.Option(
            "--align-window",
            help="Comma-separated windows w: also time aligned MSM (fixtured parts) at each, "
            "against global MSM at the same shape.",
        ),
    ] = None,
) -> None:
    """MSM and full-set scoring time and peak memory versus N and bank size, beside baselines."""
    from zsad.bench.scoring import bench_scoring

    bench_scoring(
        out,
        ns=_ints(n, "--n"),
        banks=_ints(bank, "--bank") if bank else [],
        patches=patches,
        channels=channels,
        taps=taps,
        memory_mb=memory_mb,
        max_baseline_mb=max_baseline_mb,
        numpy=numpy,
        seed=seed,
        windows=_ints(align_window, "--align-window") if align_window else None,
    )


def pipeline(
    out: OutOpt,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: BenchPretrainedOpt = "random",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help=f"Comma-separated, timed one after another: {', '.join(BACKENDS)}. torch-* "
            "build both encoders from --model; the others run --bundle, which serves one method "
            "(the one it was exported for).",
        ),
    ] = "torch-fp32",
    bundle: BundleOpt = None,
    image_size: BenchImageSizeOpt = 518,
    device: DeviceOpt = "auto",
    n: Annotated[int, typer.Option("--n", min=2, help="Images in the MuSc/STAPS set.")] = 200,
    headclip_n: Annotated[
        int, typer.Option("--headclip-n", min=1, help="Images scored one by one with HeadCLIP.")
    ] = 16,
    headclip_batch: Annotated[
        str, typer.Option("--headclip-batch", help="Comma-separated HeadCLIP batch sizes.")
    ] = "1,8",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="MuSc/STAPS encoder batch.")
    ] = 8,
    seed: SeedOpt = 0,
) -> None:
    """End-to-end images/s and per-stage time for staps at N and headclip at each batch size."""
    from zsad.bench.pipeline import bench_pipeline

    bench_pipeline(
        out,
        backend=backend,
        model=model,
        weights=weights,
        pretrained=pretrained,
        bundle=bundle,
        image_size=image_size,
        device=device,
        n=n,
        headclip_n=headclip_n,
        headclip_batches=_ints(headclip_batch, "--headclip-batch"),
        batch_size=batch_size,
        seed=seed,
    )


def station(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json and bench.md.")],
    frames: Annotated[int, typer.Option("--frames", min=10, help="Frames to stream.")] = 3000,
    bank: Annotated[int, typer.Option("--bank", min=2, help="MuSc/STAPS rolling bank size.")] = 32,
    model: ModelOpt = "zsad-tiny",
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Encoder input size (default 224; a bundle's own)."),
    ] = None,
    bundle: BundleOpt = None,
    device: DeviceOpt = "auto",
    defect_every: Annotated[
        int, typer.Option("--defect-every", min=0, help="Plant a defect every N frames.")
    ] = 50,
    overlays: Annotated[
        bool, typer.Option("--overlays/--no-overlays", help="Write overlays as a station does.")
    ] = True,
    seed: SeedOpt = 0,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="A camera URI (genicam://, aravis://, rtsp://): compare a station fed by it "
            "with one fed by a hot folder, overlays on and off (frames/s, trigger-to-record "
            "latency).",
        ),
    ] = None,
    camera_set: Annotated[
        list[str] | None,
        typer.Option("--camera-set", help="NAME=VALUE GenICam feature for --source (repeatable)."),
    ] = None,
    triggers: Annotated[
        int, typer.Option("--triggers", min=5, help="With --source: frames timed one at a time.")
    ] = 50,
) -> None:
    """Stream generated frames through `zsad watch`'s station and record images/s and RSS.

    The frames are written to a hot folder first (not timed), then the station drains it at full
    speed; memory is sampled every 0.5 s. A flat RSS over the second half (MB per 1000 images
    near 0) shows the bank and the writers do not grow with the run length. With --source, the
    same station fed by the camera (software triggers) beside the hot folder instead.
    """
    from zsad.bench.station import bench_station

    if source is not None:
        _bench_source(out, source, camera_set or [], frames, triggers, bank, model, image_size,
                      bundle, device, seed)  # fmt: skip
        return
    bench_station(
        out,
        frames=frames,
        bank=bank,
        model=model,
        image_size=image_size,
        bundle=bundle,
        device=device,
        defect_every=defect_every,
        overlays=overlays,
        seed=seed,
    )


TritonUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--triton",
        help="A running server (grpc://HOST:8001) serving models `zsad triton` wrote from "
        "--bundle; give them with --triton-model.",
    ),
]
TritonModelsOpt = Annotated[
    str | None,
    typer.Option(
        "--triton-model", help="Comma-separated served models, e.g. zsad,zsad_fp16,zsad_trt."
    ),
]
ServerEnvOpt = Annotated[
    Path | None,
    typer.Option(
        "--server-env",
        envvar="ZSAD_TRITON_ENV",
        help="Instead of --triton: start tritonserver from this nvidia-pytriton virtual "
        "environment on 127.0.0.1 (CPU, ONNX Runtime in the Python backend), one model per "
        "--max-batch.",
    ),
]


def triton(
    out: OutOpt,
    bundle: Annotated[
        Path, typer.Option("--bundle", help="The bundle served (and run locally beside it).")
    ],
    triton_url: TritonUrlOpt = None,
    triton_model: TritonModelsOpt = None,
    triton_ca: TritonCaOpt = None,
    triton_token_file: TritonTokenFileOpt = None,
    server_env: ServerEnvOpt = None,
    max_batch: Annotated[
        str,
        typer.Option("--max-batch", help="With --server-env: comma-separated max_batch_size."),
    ] = "1,8",
    queue_delay_us: QueueDelayOpt = 2000,
    clients: Annotated[
        str, typer.Option("--clients", help="Comma-separated numbers of concurrent clients.")
    ] = "1,2,4,8",
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.1, help="Seconds of load per row.")
    ] = 5.0,
) -> None:
    """Images/s and p50/p99 latency through Triton versus concurrent clients and batch settings,
    beside the same encoder run locally (ONNX Runtime in this process), in one run."""
    from zsad.bench.triton import run_bench

    run_bench(
        out,
        bundle=bundle,
        url=triton_url,
        models=[m.strip() for m in (triton_model or "").split(",") if m.strip()],
        server_env=server_env,
        max_batches=_ints(max_batch, "--max-batch"),
        queue_delay_us=queue_delay_us,
        clients=_ints(clients, "--clients"),
        seconds=seconds,
        ca_file=triton_ca,
        token_file=triton_token_file,
    )


def _bench_source(
    out: Path,
    source: str,
    camera_set: list[str],
    frames: int,
    triggers: int,
    bank: int,
    model: str,
    image_size: int | None,
    bundle: Path | None,
    device: str,
    seed: int,
) -> None:
    """`zsad bench station --source`: the camera beside the hot folder."""
    from zsad.bench.station import open_detector
    from zsad.bench.station_source import bench_station_source
    from zsad.data.cameras.uri import check_uri, parse_settings

    check_uri(source)
    settings = parse_settings(camera_set)
    with open_detector(model, image_size, bundle, device) as detector:
        bench_station_source(
            out, detector, source, settings=settings, frames=frames, triggers=triggers,
            bank=bank, seed=seed,
        )  # fmt: skip


def line(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json and bench.md.")],
    frames: Annotated[int, typer.Option("--frames", min=10, help="Frames per run.")] = 200,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Alternating runs with sinks off and on.")
    ] = 3,
    bank: Annotated[int, typer.Option("--bank", min=2, help="MuSc/STAPS rolling bank size.")] = 32,
    model: ModelOpt = "zsad-tiny",
    image_size: Annotated[int, typer.Option("--image-size", help="Encoder input size.")] = 224,
    seed: SeedOpt = 0,
) -> None:
    """Station images/s with the line interfaces off and on, and their delivery latency.

    Runs the same generated frames through a station with no sinks and with MQTT (to a
    mosquitto the bench starts, when one is installed), OPC UA and HTTP on, alternating, each
    with a subscriber; delivery latency is journal time to arrival, p50/p99.
    """
    from zsad.bench.line import bench_line

    bench_line(
        out, frames=frames, repeats=repeats, bank=bank, model=model, image_size=image_size,
        seed=seed,
    )  # fmt: skip


def scale(
    out: OutOpt,
    n: Annotated[
        str, typer.Option("--n", help="Comma-separated numbers of images N.")
    ] = "100,1000,10000",
    subset_size: Annotated[
        int, typer.Option("--subset-size", min=5, help="Subset size K of every run (fixed).")
    ] = 100,
    model: ModelOpt = "zsad-tiny",
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Encoder input size (default: the model's own)."),
    ] = None,
    bundle: BundleOpt = None,
    device: DeviceOpt = "auto",
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help="NAME=ARGS (repeatable): a set of rows run with these extra `zsad infer` "
            "arguments, e.g. 'staps=--method staps'. Default: one set, 'local', with none.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Keep the generated images here and reuse them on the next run (default: a "
            "temporary folder, removed at the end).",
        ),
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Peak RSS and time of `zsad infer` against N at a fixed subset size, each run a process
    of its own on the first N of one pool of generated images (overlays off).

    At a fixed K, peak memory should not depend on N and time should grow linearly in N;
    bench.md ends with the spread (max / min over N) of both.
    """
    from zsad.bench.scale import bench_scale

    encoder = ["--bundle", str(bundle)] if bundle else ["--model", model, "--pretrained", "random"]
    if image_size is not None:
        encoder += ["--image-size", str(image_size)]
    bench_scale(
        out,
        ns=_ints(n, "--n"),
        subset_size=subset_size,
        encoder_args=[*encoder, "--device", device],
        configs=_configs(config or []),
        data=data,
        seed=seed,
    )


def _configs(specs: list[str]) -> dict[str, list[str]] | None:
    """``NAME=ARGS`` options as {name: infer arguments}; None when none is given."""
    import shlex

    configs: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, args = spec.partition("=")
        if not sep or not name.strip() or name.strip() in configs:
            raise ZsadError(f"--config {spec!r}: expected NAME=ARGS with a new NAME")
        configs[name.strip()] = shlex.split(args)
    return configs or None


def register(app: typer.Typer) -> None:
    """Attach the bench sub-commands (station included) to the app."""
    if not bench_app.registered_commands:
        for name, command in (
            ("station", station),
            ("encoder", encoder),
            ("scoring", scoring),
            ("pipeline", pipeline),
            ("triton", triton),
            ("line", line),
            ("scale", scale),
        ):
            bench_app.command(name)(command)
    app.add_typer(bench_app, name="bench")
