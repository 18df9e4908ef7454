#!/usr/bin/env bash
# The GPU side-by-side in one command, for a lent GPU machine whose time is counted:
#   bash benchmarks/gpu.sh OFFICIAL_CHECKOUT OUT_DIR [DEADLINE_S]
# Installs the wheels under .whl/ if there are any (packages the machine lacks, e.g.
# ml-collections), prints the versions, compiles the official CUDA ops (both at once), then runs
# compare.py's gpu preset (the issue's targets first) within DEADLINE_S seconds (default 480) and
# leaves results.json, table.md and batch_sweep.png in OUT_DIR, written after every case.
set -uo pipefail
official=${1:?checkout of nv-tlabs/semanticGAN_code}
out=${2:?output folder}
deadline=${3:-480}
cd "$(dirname "$0")/.."
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
start=$SECONDS
nvidia-smi -L
python3 -c "import jax, numpy, torch; print('jax', jax.__version__, jax.devices(), '| numpy', numpy.__version__, '| torch', torch.__version__, torch.version.cuda)"
python3 benchmarks/official_code.py --build-cuda-ops "$official" 2>&1 | tail -40
python3 benchmarks/compare.py --official "$official" --preset gpu --device cuda --repeats 3 \
  --deadline $((deadline - (SECONDS - start))) --out "$out"
