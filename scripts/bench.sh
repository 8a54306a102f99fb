#!/usr/bin/env bash
# Speed benchmark (see experiments/bench_m3gnet.py); run with nothing else busy.
set -euo pipefail
cd "$(dirname "$0")/.."
python experiments/bench_m3gnet.py "$@"
