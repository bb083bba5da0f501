#!/usr/bin/env bash
# The GPU campaign in one command (benchmarks/gpu_campaign.py says what it does):
#   bash benchmarks/gpu_campaign.sh --out "$OUT" --data .device/data --wheels .device/wheels
#   bash benchmarks/gpu_campaign.sh --out /tmp/rehearsal --rehearse       # the CPU rehearsal
# Runs from any checkout location; python3 is the one that has torch (on the GPU machine too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-python3}" "$here/gpu_campaign.py" "$@"
