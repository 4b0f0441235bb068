"""Peak memory of calibration: it must not grow with the number of clips, and large-v3 must fit in 24 GB.

    python benchmarks/calibration_memory.py --model /tmp/tiny.en \\
        --calibration ../shared/data/librispeech-train-clean-100-calib --clips 50 200 --large-v3-clips 3

Each measurement runs in a fresh process and reports that process's peak RSS (ru_maxrss) after loading the
model and after `collect_stats`:

- the real model (e.g. tiny.en) calibrated on each --clips count: the sums are O(Σ out²) whatever the count,
  so the peaks should match;
- a Whisper with large-v3's encoder (d_model 1280, 32 layers, 20 heads, ffn 5120, 128 mel bins) and random
  weights, calibrated on --large-v3-clips clips. Its decoder has turbo's 4 layers: calibration never runs the
  decoder, so its size only adds a constant (32 layers would add ~1.6 GB of float32 weights).

Prints a markdown table with the machine and writes JSON to benchmarks/results/calibration_memory.json.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LARGE_V3_ENCODER = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=128, max_source_positions=1500)
TURBO_DECODER = dict(decoder_layers=4, decoder_attention_heads=20, decoder_ffn_dim=5120, vocab_size=51866)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def child(args) -> None:
    """One measurement, in this (fresh) process; prints one JSON line."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.calibration import collect_stats
    from lite_whisper_convert.measures import encoder_parameters

    start = time.perf_counter()
    if args.model == "large-v3-random":
        torch.manual_seed(0)
        config = WhisperConfig(**LARGE_V3_ENCODER, **TURBO_DECODER)
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        model = model.to_empty(device="cpu").eval()
        with torch.no_grad():  # small random weights, so activations stay finite through 32 layers
            for name, parameter in model.named_parameters():
                parameter.normal_(0.0, 0.02) if parameter.dim() > 1 else parameter.zero_()
            for layer_norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):
                layer_norm.weight.fill_(1.0)
            model.model.encoder.embed_positions.weight.normal_(0.0, 0.02)
        feature_extractor = WhisperFeatureExtractor(feature_size=128)
    else:
        model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
        feature_extractor = WhisperFeatureExtractor.from_pretrained(args.model)
    loaded = peak_rss_gb()
    stats = collect_stats(model, feature_extractor, iter_utterances(args.calibration, limit=args.clips),
                          batch_size=args.batch_size, progress=False)
    sums_gb = sum(s.total.numel() + s.outer.numel() for s in stats.slots.values()) * 8 / 1e9
    print(json.dumps({
        "model": args.model, "clips": stats.utterances, "frames_seen": stats.frames_seen,
        "batch_size": args.batch_size, "encoder_params": encoder_parameters(model.config),
        "model_params": sum(p.numel() for p in model.parameters()), "stats_sums_gb": sums_gb,
        "peak_rss_after_load_gb": loaded, "peak_rss_gb": peak_rss_gb(), "seconds": time.perf_counter() - start,
    }), flush=True)


def measure(model: str, calibration: str, clips: int, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--child", "--model", model, "--calibration", calibration,
               "--clips", str(clips), "--batch-size", str(batch_size)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="real Whisper folder, or 'large-v3-random' (with --child)")
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--clips", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--large-v3-clips", type=int, default=3, help="0: skip the large-v3 measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "calibration_memory.json"))
    args = parser.parse_args()
    if args.child:
        child(argparse.Namespace(model=args.model, calibration=args.calibration, clips=args.clips[0],
                                 batch_size=args.batch_size))
        return 0

    from lite_whisper_convert.evaluation import machine_info

    report = {"machine": machine_info(), "load_average": f"{os.getloadavg()[0]:.1f}", "runs": []}
    for clips in args.clips:
        report["runs"].append(measure(args.model, args.calibration, clips, args.batch_size))
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.large_v3_clips:
        report["runs"].append(measure("large-v3-random", args.calibration, args.large_v3_clips, 1))
        print(json.dumps(report["runs"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def table(report: dict) -> str:
    machine = report["machine"]
    lines = [f"{machine['cpu']}, {machine['threads']} torch threads, load average {report['load_average']}, "
             f"torch {machine['torch']}", "",
             "| model | clips | encoder positions | batch | float64 sums | peak RSS after load | peak RSS | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        name = Path(run["model"]).name if run["model"] != "large-v3-random" else "large-v3 encoder, random weights"
        lines.append(f"| {name} | {run['clips']} | {run['frames_seen']} | {run['batch_size']} | "
                     f"{run['stats_sums_gb']:.2f} GB | {run['peak_rss_after_load_gb']:.2f} GB | "
                     f"{run['peak_rss_gb']:.2f} GB | {run['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
