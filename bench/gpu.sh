#!/usr/bin/env bash
# One prepared GPU measurement (bench/gpu.py): install what the device machine lacks, then every section in about
# five minutes; results in results/gpu/gpu.{json,md}, written after each section.
#   bash bench/gpu.sh              # on the GPU machine
#   bash bench/gpu.sh --dry-run    # tiny sizes on CPU (the test suite runs this)
# The device machine has torch and transformers but no network: wheels of anything else it needs go in wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import tips" 2>/dev/null; then
  if [ -d wheels ]; then pip install -q --no-index --find-links wheels --no-deps wheels/*.whl; fi
  pip install -q --no-deps --no-build-isolation -e .
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m bench.gpu "$@"
