#!/usr/bin/env bash
# Install jaxmat with test extras (add "convert" for the matgl converter, which needs torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -e ".[test${JAXMAT_EXTRAS:+,$JAXMAT_EXTRAS}]"
