#!/usr/bin/env bash
# The accelerator table (experiments/bench_gpu.py), in under 8 minutes: every embedded model's energy +
# forces + stress per call from 64 to 10,648 atoms, the jax engine's MD atom-steps/s with 1-64 replicas,
# an 8-member ensemble vmapped vs one member after another, one training step; device and versions.
# Prints the markdown table and writes it with the JSON to $OUT/gpu_bench.{md,json} (else out/).
#
# On the lent GPU machine (Python 3.12 image with JAX + CUDA, flax, optax, but no jraph, e3nn-jax, ase
# or vesin), with the device tool:
#   1. here, once:  bash scripts/fetch_gpu_wheels.sh      (fills wheels/, ~3.5 MB, ignored by git)
#   2. run:         command "bash scripts/gpu_bench.sh", carry ["wheels"], timeout_s 600
#                   (the table is in output_tail; gpu_bench.md and gpu_bench.json come back from $OUT)
# Where those packages are missing, this installs the carried wheels into a temporary folder (no network,
# no dependencies: the image has them) and runs this checkout's jaxmat from PYTHONPATH (pip install -e .
# would need the network for its build requirements).
# On the CPU: bash scripts/gpu_bench.sh --smoke (tiny sizes; tests/test_gpu_bench.py runs it).
# Other arguments go to experiments/bench_gpu.py: --budget-s S, --dtype float64, --models A,B,
# --sections models,md,ensemble,train, --json PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
        jraph e3nn_jax ase vesin; then
    if ! ls wheels/*.whl >/dev/null 2>&1; then
        echo "gpu_bench: jraph, e3nn-jax, ase or vesin is missing and wheels/ is empty: run" \
             "scripts/fetch_gpu_wheels.sh where pip reaches PyPI and carry wheels/" >&2
        exit 2
    fi
    SITE=${TMPDIR:-/tmp}/jaxmat-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" experiments/bench_gpu.py "$@"
