#!/usr/bin/env bash
# The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -e ".[test]" && python -m pytest "$@"
