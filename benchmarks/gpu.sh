#!/usr/bin/env bash
# The GPU measurements of the performance issue, sized for one device call each (no install step:
# the device image's python3 has torch, numpy, scipy, safetensors, yaml, tqdm; nothing here needs
# SimpleITK). Run from the repository root:
#
#   bash benchmarks/gpu.sh speed    # inference: 5 models x reference/fast x fp32/bf16
#   bash benchmarks/gpu.sh compiled # the same, fast bf16 with torch.compile (CUDA graphs) only
#   bash benchmarks/gpu.sh train    # training step: official recipe vs ours, batches 2/6/12
#
# Results go to $OUT (the device tool's folder) when set, else benchmarks/results/; copy
# the JSON files into benchmarks/results/ and summarise them in the README.
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$DEST/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$DEST/gpu.txt"
case "${1:-speed}" in
  speed)
    timeout 540 "$PY" benchmarks/speed.py --device cuda --repeats 5 --click-repeats 50 --timeout 240 \
      --out "$DEST/speed_cuda.json" 2>&1 | tee "$DEST/speed_cuda.log" ;;
  compiled)
    # batch 1 only (the latency targets): every new batch size would compile the encoder again
    timeout 540 "$PY" benchmarks/speed.py --device cuda --configs compiled:bf16 --batches 1 --repeats 5 \
      --click-repeats 50 --timeout 150 --out "$DEST/speed_cuda_compiled.json" 2>&1 | tee "$DEST/speed_cuda_compiled.log" ;;
  train)
    timeout 540 "$PY" benchmarks/train_speed.py --device cuda --timeout 240 2>&1 | tee "$DEST/train_speed_cuda.log"
    cp benchmarks/results/train_speed_cuda.json "$DEST/" 2>/dev/null ;;
  *) echo "usage: bash benchmarks/gpu.sh speed|compiled|train" >&2; exit 2 ;;
esac
