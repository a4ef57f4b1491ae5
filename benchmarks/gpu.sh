#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md, one command per step, results under OUT.
#
#   benchmarks/gpu.sh OUT [STEP ...]      e.g. benchmarks/gpu.sh benchmarks/results/h100
#
# STEPs, in order (default all): encoder scoring pipeline station triton tests. Bundles are exported
# once into $WORK (default /tmp/zsad-gpu-bench) and reused, so the steps can run
# separately. ViT-L at 518 px takes ~3 min to export; the rest ~10 min on
# an H100.
#
# Needs a CUDA torch, zsad[export] and CuPy (cupy-cuda12x or -cuda13x). onnxruntime-gpu
# (zsad[gpu]) adds the ONNX Runtime CUDA rows; where it is missing, the pipeline and station
# steps encode with PyTorch instead (FP16 in the pipeline, FP32 in the station; said in the
# log). Full TensorRT, where installed, adds a `trt` row. TensorRT-RTX has no SM90 target, so
# on an H100 the FP16 path measured is ONNX Runtime CUDA. Random weights time like real ones.
#
# The triton step serves the STAPS bundle from NVIDIA's tritonserver container (onnxruntime and
# TensorRT backends; needs docker with the NVIDIA container toolkit and zsad[triton]) on
# 127.0.0.1:8001, runs the GPU-marked Triton tests against it and `zsad bench triton`. TRITON_IMAGE
# picks the image (default nvcr.io/nvidia/tritonserver:25.01-py3); a plan is served only when
# full TensorRT (pip tensorrt) built the engine, and it loads only where that TensorRT version
# equals the container's (see the container's release notes).
#
# MODEL, SIZE, N and FRAMES change the shapes, SCORING adds `zsad bench scoring` options
# (the last value of an option wins) and TORCH_BACKEND replaces torch-fp16 where PyTorch encodes
# in the pipeline step: this smoke-tests the script on a CPU in about two minutes:
#   MODEL=zsad-tiny SIZE=56 N=4 FRAMES=12 TORCH_BACKEND=torch-fp32 \
#     SCORING="--numpy --n 3,4 --bank 2 --patches 16 --channels 8 --taps 1" \
#     benchmarks/gpu.sh /tmp/smoke encoder scoring pipeline station tests
set -euo pipefail

out=${1:?usage: benchmarks/gpu.sh OUT [encoder|scoring|pipeline|station|tests ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(encoder scoring pipeline station triton tests)
model=${MODEL:-ViT-L-14-336}
size=${SIZE:-518}
n=${N:-200}
frames=${FRAMES:-2000}
work=${WORK:-/tmp/zsad-gpu-bench}/$model-$size
clip=(--model "$model" --pretrained random --image-size "$size")
mkdir -p "$out" "$work"

say() { echo "== $(date +%T) $*" >&2; }

# The deployable encoder runs on ONNX Runtime's CUDA provider where onnxruntime-gpu is installed.
ort_cuda=$(python -c "import onnxruntime as o; print(int('CUDAExecutionProvider' in o.get_available_providers()))")
[ "$ort_cuda" = 1 ] || say "no ONNX Runtime CUDA provider: PyTorch encodes in pipeline (FP16) and station (FP32)"

bundles() {
    # A bundle is complete once bundle.json exists: export writes it last.
    if [ ! -f "$work/staps/bundle.json" ]; then
        say "export STAPS bundle ($model, $size px)"
        engine=()
        if python -c "import tensorrt" 2>/dev/null; then engine=(--engine trt); fi
        zsad export "${clip[@]}" --method staps "${engine[@]}" --out "$work/staps"
    fi
    if [ ! -f "$work/headclip/bundle.json" ]; then
        # An untrained artifact (--epochs 0) has the calibrated one's shapes, so the same cost.
        say "export HeadCLIP bundle"
        zsad make-data "$work/aux" --categories grid --size 64
        zsad calibrate "$work/aux" "${clip[@]}" --epochs 0 --no-progress \
            --out "$work/headclip.safetensors"
        zsad export "${clip[@]}" --method headclip \
            --calibration "$work/headclip.safetensors" --out "$work/headclip"
    fi
}

for step in "${steps[@]}"; do
    case $step in
    encoder)
        bundles
        backends=torch-fp32,torch-fp16
        if [ "$ort_cuda" = 1 ]; then backends+=,onnxruntime; fi
        if [ -f "$work/staps/encoder.engine" ]; then backends+=,trt; fi
        say "bench encoder: $backends"
        zsad bench encoder "${clip[@]}" --bundle "$work/staps" --backend "$backends" \
            --batch 1,4,8,16 --out "$out/encoder"
        ;;
    scoring)
        say "bench scoring"
        # shellcheck disable=SC2086 # SCORING is a list of options
        zsad bench scoring --n "50,100,$n" --bank 16,32,64 --no-numpy --align-window 1,2,3,5 \
            ${SCORING:-} --out "$out/scoring"
        ;;
    pipeline)
        if [ "$ort_cuda" = 1 ]; then
            bundles
            say "bench pipeline: STAPS at N=$n, HeadCLIP at batch 1 and 8 (ONNX Runtime)"
            zsad bench pipeline --backend onnxruntime --bundle "$work/staps" --n "$n" \
                --out "$out/pipeline-staps"
            zsad bench pipeline --backend onnxruntime --bundle "$work/headclip" --headclip-n 64 \
                --headclip-batch 1,8 --out "$out/pipeline-headclip"
        else
            torch_backend=${TORCH_BACKEND:-torch-fp16}
            say "bench pipeline: STAPS at N=$n, HeadCLIP at batch 1 and 8 ($torch_backend)"
            zsad bench pipeline --backend "$torch_backend" "${clip[@]}" --n "$n" --headclip-n 64 \
                --headclip-batch 1,8 --out "$out/pipeline-$torch_backend"
        fi
        ;;
    station)
        say "bench station: $frames frames, bank 32"
        if [ "$ort_cuda" = 1 ]; then
            bundles
            encoder=(--bundle "$work/staps")
        else
            encoder=(--model "$model" --image-size "$size")
        fi
        zsad bench station "${encoder[@]}" --frames "$frames" --bank 32 --out "$out/station"
        ;;
    triton)
        bundles
        image=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:25.01-py3}
        repo="$work/triton-repo"
        rm -rf "$repo"
        zsad triton "$work/staps" "$repo" --form onnx,fp16,trt --kind gpu
        say "triton: serving $(ls "$repo" | tr '\n' ' ')from $image"
        # A plan from another TensorRT version fails to load; the ONNX models are served anyway.
        docker run -d --rm --name zsad-triton --gpus all --shm-size 1g \
            -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -v "$repo:/models:ro" "$image" \
            tritonserver --model-repository=/models --exit-on-error=false \
            --strict-readiness=false >/dev/null
        trap 'docker stop zsad-triton >/dev/null 2>&1 || true' EXIT
        for _ in $(seq 300); do
            curl -sf 127.0.0.1:8000/v2/health/ready >/dev/null && break
            sleep 1
        done
        curl -sf 127.0.0.1:8000/v2/health/ready >/dev/null || {
            docker logs zsad-triton 2>&1 | tail -20 >&2
            exit 1
        }
        models=""
        for model in zsad zsad_fp16 zsad_trt; do
            if curl -sf "127.0.0.1:8000/v2/models/$model/ready" >/dev/null; then
                models+=${models:+,}$model
            elif [ -d "$repo/$model" ]; then
                say "triton: $model did not load:"
                docker logs zsad-triton 2>&1 | grep -i "$model" | tail -3 >&2
            fi
        done
        ZSAD_TRITON_URL=grpc://127.0.0.1:8001 ZSAD_TRITON_BUNDLE="$work/staps" \
            python -m pytest -q -m gpu -rs tests/test_triton_server.py 2>&1 |
            tee "$out/triton-tests.txt"
        zsad bench triton --triton grpc://127.0.0.1:8001 --triton-model "$models" \
            --bundle "$work/staps" --clients 1,2,4,8 --out "$out/triton"
        docker stop zsad-triton >/dev/null
        trap - EXIT
        ;;
    tests)
        say "GPU-marked tests"
        python -m pytest -q -m gpu -rs tests 2>&1 | tee "$out/gpu-tests.txt"
        ;;
    *)
        echo "benchmarks/gpu.sh: unknown step '$step' (encoder scoring pipeline station triton tests)" >&2
        exit 2
        ;;
    esac
done
say "done: $out"
