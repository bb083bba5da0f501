#!/usr/bin/env bash
# What one GPU-machine call carries, besides the checkout (64 MiB in all): .device/ with
#   wheels/          the packages the GPU machine lacks (made by the project's shared device-wheels.sh)
#   data/corpus/     one part of the Wikipedia corpus (JSONL .xz)
#   data/tokenizer/gpt2/   GPT-2 BPE files
# then prints the sizes and the exact command and carry list for the device tool.
# Usage: bash benchmarks/pack_device.sh SHARED_DATA_DIR DEVICE_WHEELS_SCRIPT [CORPUS_PART]
#   e.g. bash benchmarks/pack_device.sh ~/periln-data ~/bin/device-wheels.sh
set -euo pipefail
data="${1:?give the folder with corpus/ and tokenizer/gpt2/}"
wheels_script="${2:?give the device-wheels script}"
part="${3:-0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out=.device
rm -rf "$out" && mkdir -p "$out/data/corpus" "$out/data/tokenizer"
corpus=$(ls "$data"/corpus/*.jsonl.xz | sed -n "$((part + 1))p")
[ -n "$corpus" ] || { echo "pack_device: no corpus part $part in $data/corpus" >&2; exit 2; }
cp "$corpus" "$out/data/corpus/"
cp -r "$data/tokenizer/gpt2" "$out/data/tokenizer/gpt2"
# the campaign needs no lm-eval scores and logs to a local sqlite store: mlflow-skinny suffices
OUT_DIR="$out/wheels" bash "$wheels_script" lm-eval mlflow-skinny sqlalchemy alembic optuna submitit datasets
checkout=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb "$out" | cut -f1)
total=$((checkout + carried))
printf 'checkout %.1f MiB + %s %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$checkout/1048576" | bc -l)" "$out" "$(echo "$carried/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
[ "$total" -le $((64 * 1048576)) ] || { echo "pack_device: over 64 MiB: use a smaller corpus part" >&2; exit 1; }
echo 'device run:  command = bash benchmarks/gpu_campaign.sh --out "$OUT" --data .device/data --wheels .device/wheels'
echo '             carry   = [".device"]    timeout_s = 600'
