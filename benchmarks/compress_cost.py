"""What a conversion costs, stage by stage, per model size: wall time and peak memory of every stage of
`compress`, next to one stock encoder pass over the same calibration clips (the yardstick of issue 14's targets).

    python benchmarks/compress_cost.py --models tiny.en base small large-v3 large-v3-turbo \\
        --tiny-en /work/models/whisper-tiny.en --base /work/models/whisper-base \\
        --calibration ../shared/data/librispeech-train-clean-100-calib [--device cuda]
    python benchmarks/compress_cost.py --quick --tiny-en ... --calibration ...     # a few-minute check of the script

Real models (tiny.en, base) run `compress()` itself, fresh (no stats file), with default options: `--clips`
calibration clips, the preset(s) of `--presets` with their default recovery, the smoke test; the table shows
what `result.stages` recorded. Random-weight shapes (small, large-v3, large-v3-turbo: no real weights here) run
the same stage functions on a model of that shape, on `--measure-clips` real clips, the spectra of
`--spectra-layers` layers and the Fisher estimate on `--measure-clips` probe clips, and scale each to the full
run (clips, layers, probe clips; calibration along the line through its times on half and all of the measured
clips, since part of it is a fixed cost): those figures are marked "extrapolated" (`~` in the table). The greedy
transcription of the probe clips and the smoke test need a tokenizer and are not run for random shapes (their
decoder cost is listed as not measured). Prints a markdown table headed by the machine and load average, and
writes JSON to benchmarks/results/.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# Encoder/decoder shapes of the families without real weights here.
SHAPES = {
    "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, decoder_layers=12,
                  decoder_attention_heads=12, decoder_ffn_dim=3072, num_mel_bins=80, vocab_size=51865),
    "large-v3": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                     decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128,
                     vocab_size=51866),
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                           decoder_layers=4, decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128,
                           vocab_size=51866),
}
PROBE_TOKENS = 48  # transcript tokens per random-shape probe clip (real probe clips average ~37 on LibriSpeech)
STAGE_ORDER = ("load model", "audio decoding", "calibration statistics", "spectra", "sensitivity", "rank choice",
               "decomposition", "recovery", "export", "smoke test")


def stock_encoder_pass(model, feature_extractor, utterances, batch_size: int, device) -> float:
    """Seconds of one stock encoder pass (log-mel features included) over `utterances`."""
    from lite_whisper_convert.calibration import encoder_of

    encoder = encoder_of(model)
    parameter = next(encoder.parameters())
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(utterances), batch_size):
            batch = [utterance.audio for utterance in utterances[start : start + batch_size]]
            features = feature_extractor(batch, sampling_rate=feature_extractor.sampling_rate,
                                         return_tensors="pt").input_features
            encoder(features.to(device=parameter.device, dtype=parameter.dtype))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def real_model_rows(name: str, folder: str, args, device) -> list:
    """compress() itself on a real model, one row per preset, plus the stock encoder pass over the same clips."""
    from lite_whisper_convert.compress import compress, first_clips, load_base

    rows = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="compress-cost-") as scratch:
            out = Path(args.keep) / f"{name}-{preset}" if args.keep else Path(scratch) / "out"
            started = time.perf_counter()
            # With --keep, each preset's own (fresh) stats file is kept too, so other presets can be built from it.
            stats = Path(args.keep) / f"{name}-{preset}.safetensors" if args.keep else None
            result = compress(folder, out, calibration=args.calibration, preset=preset, stats_path=stats,
                              num_samples=args.clips, probe_clips=args.probe_clips, device=str(device),
                              dtype=torch.float16 if device.type == "cuda" else torch.float32, progress=False,
                              sensitivity_method=args.sensitivity, recovery=args.recovery,
                              smoke_test=not args.no_smoke_test)
            total = time.perf_counter() - started
        recovery = next((s["stage"] for s in result.stages if s["stage"] == "recovery"), None)
        rows.append({"model": name, "preset": preset, "recovery": args.recovery if recovery else "none",
                     "stages": result.stages, "total_seconds": total, "extrapolated": False,
                     "clips": args.clips, "probe_clips": args.probe_clips})
    model, feature_extractor = load_base(folder, str(device), torch.float16 if device.type == "cuda" else torch.float32)
    clips = first_clips(args.calibration, args.clips)
    seconds = stock_encoder_pass(model, feature_extractor, clips, 8, device)
    for row in rows:
        row["stock_encoder_pass_seconds"] = seconds
    return rows


def _random_model(shape: dict, device, dtype):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(**shape, max_source_positions=1500, max_target_positions=448)
    return WhisperForConditionalGeneration(config).to(device=device, dtype=dtype).eval()


def random_shape_row(name: str, args, device) -> dict:
    """The stage functions on a random-weight model of this family's shape, measured on a few clips and layers
    and scaled to the full run."""
    from transformers import WhisperFeatureExtractor

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.calibration import collect_stats
    from lite_whisper_convert.compress import default_probe_clips
    from lite_whisper_convert.decomposition import attach_explained_variance, decompose, spectra
    from lite_whisper_convert.fisher import fisher_sensitivity
    from lite_whisper_convert.precision import autocast_dtype_for
    from lite_whisper_convert.ranks import plan_ranks
    from lite_whisper_convert.sensitivity import ProbeSet
    from lite_whisper_convert.stages import StageCosts

    shape = SHAPES[name]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    stages = StageCosts(device)
    scale = {}
    with stages.stage("load model"):
        model = _random_model(shape, device, dtype)
    feature_extractor = WhisperFeatureExtractor(feature_size=shape["num_mel_bins"])
    measured = args.measure_clips
    clips = list(stages.iterate(iter_utterances(args.calibration, limit=measured), "audio decoding"))
    scale["audio decoding"] = args.clips / measured
    # Calibration has a per-clip cost (the encoder pass, the sums) and a fixed one (deriving q/k/v/fc1's output sums
    # from their inputs', hashing the weights): timed on half the clips too, the line through both is extrapolated.
    half = max(1, measured // 2)
    started = time.perf_counter()
    collect_stats(model, feature_extractor, clips[:half], batch_size=min(8, half), frames="real", progress=False)
    half_seconds = time.perf_counter() - started
    with stages.stage("calibration statistics"):
        stats = collect_stats(model, feature_extractor, clips, batch_size=min(8, measured), frames="real",
                              progress=False)
    full_seconds = next(record["seconds"] for record in stages.as_list() if record["stage"] == "calibration statistics")
    per_clip = max(full_seconds - half_seconds, 0.0) / (measured - half) if measured > half else full_seconds / measured
    scale["calibration statistics"] = (full_seconds + per_clip * (args.clips - measured)) / full_seconds
    layers = shape["encoder_layers"]
    kept_layers = min(args.spectra_layers, layers)
    stats.slots = {key: value for key, value in stats.slots.items() if key[0] < kept_layers}
    with stages.stage("spectra"):
        by_slot = spectra(stats, model.config, device=device if device.type == "cuda" else None)
    scale["spectra"] = layers / kept_layers
    # every layer gets the measured layers' spectra (shapes are what the later stages' cost depends on)
    by_slot = {(layer, slot): by_slot[(layer % kept_layers, slot)] for layer in range(layers)
               for slot in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")}
    attach_explained_variance(stats, by_slot)
    features = feature_extractor([clip.audio for clip in clips], sampling_rate=16000, return_tensors="pt").input_features
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50000, (measured, PROBE_TOKENS + 4), generator=generator)
    mask = torch.ones(measured, PROBE_TOKENS + 3, dtype=torch.bool)
    mask[:, :3] = False  # the decoder prompt is forced, not predicted
    probes = ProbeSet(features, ids, mask, None, batch_size=1)
    with stages.stage("sensitivity"):  # in the precision compress chooses on this device
        stats.sensitivity, stats.sensitivity_curves = fisher_sensitivity(
            model, probes, by_slot, autocast_dtype=autocast_dtype_for(device, dtype))
    probe_clips = args.probe_clips or default_probe_clips("fisher", args.clips)  # random shapes: Fisher only
    scale["sensitivity"] = probe_clips / measured
    with stages.stage("rank choice"):
        low_rank_config, _ = plan_ranks(stats, model.config, target_encoder_params=args.target_ratio)
    with stages.stage("decomposition"):
        lite = decompose(model, by_slot, low_rank_config)
    with tempfile.TemporaryDirectory(prefix="compress-cost-") as scratch:
        with stages.stage("export"):
            lite.to("cpu").save_pretrained(Path(scratch) / "out", dtype=torch.float16)
    records = stages.as_list()
    for record in records:
        factor = scale.get(record["stage"], 1.0)
        record["measured_seconds"] = record["seconds"]
        record["seconds"] = record["seconds"] * factor
        record["extrapolated"] = factor != 1.0
    encoder_seconds = stock_encoder_pass(model, feature_extractor, clips, min(8, measured), device)
    return {"model": f"{name} (random weights)", "preset": f"{args.target_ratio} x", "recovery": "none",
            "stages": records, "total_seconds": sum(record["seconds"] for record in records), "extrapolated": True,
            "clips": args.clips, "probe_clips": probe_clips, "measured_clips": measured,
            "spectra_layers": kept_layers, "stock_encoder_pass_seconds": encoder_seconds * args.clips / measured,
            "not_measured": ["greedy transcription of the probe clips", "smoke test"]}


def table(rows: list, header: str) -> str:
    columns = [f"{row['model']} {row['preset']}" + (f" + {row['recovery']}" if row["recovery"] != "none" else "")
               for row in rows]
    lines = [header, "", "| stage | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(rows)]
    stage_names = [name for name in STAGE_ORDER if any(s["stage"] == name for row in rows for s in row["stages"])]

    def cell(record):
        if record is None:
            return "–"
        mark = "~" if record.get("extrapolated") else ""
        memory = f", {record['peak_rss_gb']:.1f} GB" if record.get("peak_rss_gb") is not None else ""
        if record.get("peak_gpu_gb") is not None:
            memory += f", GPU {record['peak_gpu_gb']:.1f} GB"
        return f"{mark}{record['seconds']:.1f} s{memory}"

    for name in stage_names:
        cells = [cell(next((s for s in row["stages"] if s["stage"] == name), None)) for row in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mark = lambda row: "~" if row["extrapolated"] else ""
    lines.append("| **total** | " + " | ".join(f"{mark(row)}{row['total_seconds']:.0f} s" for row in rows) + " |")
    lines.append("| stock encoder pass, same clips | " + " | ".join(
        f"{mark(row)}{row['stock_encoder_pass_seconds']:.1f} s" for row in rows) + " |")
    lines.append("| total ÷ encoder pass | " + " | ".join(
        f"{mark(row)}{row['total_seconds'] / row['stock_encoder_pass_seconds']:.1f}" for row in rows) + " |")
    lines += ["", "`~`: extrapolated from a shorter run (clips, layers, probe clips scaled linearly); memory is each "
              "stage's peak resident set (GPU: peak allocated)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base", "small", "large-v3", "large-v3-turbo"],
                        choices=["tiny.en", "base", *SHAPES])
    parser.add_argument("--tiny-en", help="real tiny.en folder")
    parser.add_argument("--base", help="real base folder")
    parser.add_argument("--calibration", required=True, help="calibration audio folder")
    parser.add_argument("--clips", type=int, default=100, help="calibration clips (compress's default: 100)")
    parser.add_argument("--probe-clips", type=int, default=None, help="default: compress's for the method")
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced"], help="real models: presets to run")
    parser.add_argument("--recovery", default="auto", help="real models: compress's --recovery (default auto)")
    parser.add_argument("--sensitivity", default=None, help="compress's --sensitivity (default: its default; random "
                        "shapes always use fisher)")
    parser.add_argument("--no-smoke-test", action="store_true")
    parser.add_argument("--keep", help="real models: write each preset to KEEP/MODEL-PRESET and its stats file to "
                                       "KEEP/MODEL-PRESET.safetensors (to evaluate it) instead of a temporary folder")
    parser.add_argument("--measure-clips", type=int, default=4, help="random shapes: clips actually run")
    parser.add_argument("--spectra-layers", type=int, default=2, help="random shapes: layers whose spectra are run")
    parser.add_argument("--target-ratio", default="0.7", help="random shapes: encoder size target for rank choice")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="a check of the script: tiny.en fast on 8 clips (4 probe clips, no recovery) and small "
                        "on 1 clip and 1 layer")
    parser.add_argument("--out", help="JSON results file (default: benchmarks/results/compress_cost-<device>-<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = [model for model in args.models if model in ("tiny.en", "small")] or ["small"]
        args.clips, args.probe_clips, args.presets, args.recovery = 8, 4, ["fast"], "none"
        args.measure_clips, args.spectra_layers, args.no_smoke_test = 1, 1, True
    from lite_whisper_convert.evaluation import machine_info

    device = torch.device(args.device)
    machine = machine_info()
    rows = []
    for name in args.models:
        folder = {"tiny.en": args.tiny_en, "base": args.base}.get(name)
        if name in ("tiny.en", "base"):
            if not folder:
                parser.error(f"--models {name} needs --{name.replace('.', '-')} FOLDER (the real weights)")
            rows += real_model_rows(name, folder, args, device)
        else:
            rows.append(random_shape_row(name, args, device))
        print(f"done: {name}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    where = machine["gpu"] or f"{machine['cpu']}, {machine['threads']} torch threads"
    header = (f"compress cost: {where}; torch {machine['torch']}, transformers {machine['transformers']}; "
              f"{machine['date']}; load average at the end {load[0]:.1f}; {args.clips} calibration clips, "
              f"{args.probe_clips or 'default'} probe clips, sensitivity {args.sensitivity or 'default'}" + ("; QUICK CHECK, not a result"
                                                                                  if args.quick else ""))
    print(table(rows, header))
    out = Path(args.out) if args.out else RESULTS / f"compress_cost-{device.type}-{machine['date'][:10]}.json"
    if args.quick and not args.out:
        out = Path(tempfile.gettempdir()) / "compress_cost-quick.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "load_average": load, "args": vars(args), "rows": rows},
                              indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
