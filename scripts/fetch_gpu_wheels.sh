#!/usr/bin/env bash
# Fill wheels/ with the packages jaxmat needs that the lent GPU machine's image lacks: jraph, e3nn-jax,
# ase and vesin (about 3.5 MB), for scripts/gpu_bench.sh. Run it here, where pip reaches PyPI; wheels/
# is ignored by git (never commit it) and travels to the GPU machine as a carried path.
#
# The image (Python 3.12, JAX + CUDA, flax, optax, chex, orbax) already holds every dependency of these
# four: numpy, scipy, matplotlib and typing-extensions (ase), sympy and attrs (e3nn-jax), and jax,
# msgpack and tqdm for jaxmat itself, so the wheels are downloaded without their dependencies.
# Versions: those installed here (what the test suite runs with), else the pins below.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SPECS=()
for pin in jraph==0.0.6.dev0 e3nn-jax==0.21.0 ase==3.29.0 vesin==0.6.2; do
    name=${pin%%==*}
    here=$("$PY" -c "from importlib.metadata import version; print(version('$name'))" 2>/dev/null || true)
    SPECS+=("$name==${here:-${pin#*==}}")
done
rm -rf wheels
mkdir -p wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d wheels "${SPECS[@]}"
ls -1 wheels
du -sh wheels
