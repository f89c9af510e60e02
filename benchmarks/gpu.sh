#!/usr/bin/env bash
# The GPU benchmarks in one call, on a machine with torch, transformers, timm, peft and accelerate but no network
# (the lent GPU machine): installs the wheels in .whl/ (diffusers, open_clip_torch and what they need that the
# machine lacks; `make gpu-wheels` downloads them beforehand, on a machine with network) and this project, without
# the network and without touching the machine's own packages, then runs benchmarks/gpu.py: all within 8 minutes.
#
#   benchmarks/gpu.sh [OUT]            figures in OUT (default: $OUT, else benchmarks/.work/gpu)
#   benchmarks/gpu.sh --dry-run [OUT]  the same steps on the tiny models, on the CPU
#
# gpu.py writes OUT/gpu.json and OUT/gpu.md (with the card's name) after every measurement, so that what was
# measured survives the time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=()
if [[ "${1:-}" == "--dry-run" ]]; then
    dry=(--dry-run)
    shift
fi
out="${1:-${OUT:-benchmarks/.work/gpu}}"
python="${PYTHON:-python3}"
site="${GPU_SITE:-/tmp/diffcoremix-site}"   # where the wheels and the project are installed
wheel_dir="${GPU_WHEELS:-.whl}"

shopt -s nullglob
wheels=("$wheel_dir"/*.whl)
if ((${#wheels[@]})); then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
elif [[ ${#dry[@]} -eq 0 ]]; then
    echo "gpu.sh: no wheels in $wheel_dir/ (run \`make gpu-wheels\` on a machine with network first)" >&2
fi
# The project from a copy of this checkout (pip builds in the source tree: the checkout gets no build/ or egg-info);
# src/ after the site folder stands in where no build backend is at hand.
source_copy="$(mktemp -d)"
trap 'rm -rf "$source_copy"' EXIT
cp -r pyproject.toml README.md src "$source_copy"/
if ! "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target "$site" \
    "$source_copy" >/dev/null 2>&1; then
    echo "gpu.sh: could not install the project without network; running it from src/" >&2
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1  # every model is built in-process: nothing may wait on a hub that cannot be reached
"$python" -c 'import diffusers, open_clip, diffcoremix; print("diffcoremix from", diffcoremix.__file__)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout --signal=INT --kill-after=15 440 "$python" benchmarks/gpu.py "${dry[@]}" --out "$out"
