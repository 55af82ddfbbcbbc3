#!/usr/bin/env bash
# The `long` ablation preset on a lent GPU machine: a bare image with PyTorch, timm and accelerate but no package
# index. Installs the wheels carried in .whl/ (open_clip_torch, webdataset, braceexpand, omegaconf, antlr4,
# ftfy, wcwidth; see docs/ablation.md) and this package, then runs the command given, by default
# experiments/long_on_gpu.py within BUDGET seconds; its output is kept in $OUT/long_on_gpu.log.
#     OUT=results/ablation BUDGET=520 bash experiments/long_on_gpu.sh
#     OUT=results/ablation bash experiments/long_on_gpu.sh python3 -m experiments.ablation --preset long --device cuda --jobs 4 --out results/ablation
set -uo pipefail
OUT=${OUT:-results/ablation}
BUDGET=${BUDGET:-520}
start=$(date +%s)
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc)"
python3 -c "import torch, timm, open_clip, webdataset, omegaconf, tips, eval, tips_pipelines
print('torch', torch.__version__, 'timm', timm.__version__, 'open_clip', open_clip.__version__)" || exit 1
if [ $# -eq 0 ]; then
  set -- python3 -m experiments.long_on_gpu --budget $((BUDGET - $(date +%s) + start)) --out "$OUT"
fi
"$@" 2>&1 | tee "$OUT/long_on_gpu.log"
