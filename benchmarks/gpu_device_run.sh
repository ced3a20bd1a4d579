#!/usr/bin/env bash
# The GPU checks of benchmarks/gpu_overlap.py on a bare CUDA machine (the `device` tool's): the wheels that
# machine lacks travel in .whl/ (transformers 5.24, tokenizers, grpcio, protobuf, xgrammar and its needs), the
# tiny model in .cache/tiny-model-seed0; everything lands in $OUT (log.txt, results.json, traces). Arguments go
# to `measure` (e.g. --cuda-graphs, --batch-sizes 32 1 64, --new-tokens 512).
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
{
  date -u
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
  python3 -c "import sys,torch,transformers,grpc,google.protobuf as p; print(sys.version.split()[0], torch.__version__, \
transformers.__version__, grpc.__version__, p.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/log.txt"
for graphs in "" --cuda-graphs; do
  timeout "${SMOKE_TIMEOUT:-150}" python3 -m benchmarks.gpu_overlap smoke .cache/tiny-model-seed0 $graphs 2>&1 \
    | tee -a "$OUT/log.txt"
  echo "smoke $graphs exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
done
timeout "${MEASURE_TIMEOUT:-300}" python3 -m benchmarks.gpu_overlap measure --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
echo "measure exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
