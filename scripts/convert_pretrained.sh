#!/usr/bin/env bash
# Re-create the shipped bundle from matgl's files in ../shared (needs torch: pip install torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
jaxmat convert ../shared/pretrained/matgl/M3GNet-MP-2021.2.8-PES jaxmat/pretrained/M3GNet-MP-2021.2.8-PES
