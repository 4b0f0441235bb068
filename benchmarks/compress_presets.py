"""Compress a real Whisper with every preset and compare greedy WER against the stock model and the official
LiteWhisper release.

    python benchmarks/compress_presets.py --model /tmp/tiny.en --family tiny \\
        --calibration ../shared/data/librispeech-train-clean-100-calib --num-samples 100 \\
        --eval ../shared/data/librispeech-test-other-60 --work /tmp/compress-bench [--ablation fast]

For each preset, `compress()` builds the repo exactly as `lite-whisper compress` does (default sensitivity
policy, real frames, export with the fresh-process smoke test), then `evaluation.evaluate` scores the saved
folder. One calibration run serves every preset (the stats file in --work). `--ablation PRESET...` also
scores, at those presets' sizes, the threshold policy (LiteASR's rule) and both policies on statistics over all
1500 frames. Prints a markdown table with the machine, and writes JSON to benchmarks/results/.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

# Official LiteWhisper WER increase over the stock model (points), the bar each preset must clear.
OFFICIAL_WER_DELTA = {
    "tiny": {"acc": 0.96, "balanced": 1.94, "fast": 5.08},
    "base": {"acc": 1.40, "balanced": 2.04, "fast": 5.38},
}
RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def looping(transcripts) -> int:
    """Hypotheses more than twice as long as their reference (+5 words): repetition loops."""
    return sum(len(t["hypothesis"].split()) > 2 * len(t["reference"].split()) + 5 for t in transcripts)


def score(folder, eval_set: str, batch_size: int) -> dict:
    from lite_whisper_convert.evaluation import evaluate

    results = evaluate(str(folder), [eval_set], batch_size=batch_size, progress=False, keep_transcripts=True)
    (result,) = results["datasets"].values()
    return {"wer": result["wer"], "loops": looping(result["transcripts"]), "encoder_params": results["encoder_params"],
            "encoder_gflops": results["encoder_gflops"], "rtfx": result["rtfx"], "machine": results["machine"]}


def build(args, name: str, stats_path: Path, frames: str, smoke: bool, **request) -> dict:
    from lite_whisper_convert.compress import compress

    start = time.perf_counter()
    result = compress(args.model, Path(args.work) / name, calibration=args.calibration, num_samples=args.num_samples,
                      batch_size=args.batch_size, stats_path=stats_path, frames=frames, smoke_test=smoke,
                      overwrite=True, progress=False, recovery=args.recovery, **request,
                      **({"sensitivity_method": args.sensitivity} if args.sensitivity else {}))
    record = {"name": name, "frames": frames, "rank_policy": result.rank_policy,
              "low_rank_config": result.low_rank_config, "build_seconds": time.perf_counter() - start}
    if result.smoke is not None:
        record["smoke"] = {"clip": result.smoke.clip, "stock": result.smoke.stock_text, "lite": result.smoke.lite_text}
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stock Whisper folder (e.g. from lite-whisper import-ct2)")
    parser.add_argument("--family", required=True, choices=sorted(OFFICIAL_WER_DELTA))
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval", required=True, help="evaluation audiofolder with references")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--work", required=True, help="scratch folder for stats files and repos")
    parser.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"])
    parser.add_argument("--targets", nargs="*", default=[], metavar="SIZE",
                        help="also build at these encoder sizes (ratios of the stock encoder, e.g. 0.7 0.6, or counts)")
    parser.add_argument("--ablation", nargs="*", default=[], metavar="PRESET",
                        help="also score the threshold policy and all-frames statistics at these presets' sizes")
    parser.add_argument("--recovery", default="none", choices=("none", "auto", "refit", "distill"),
                        help="recovery after decomposition (default none: the decomposition alone; auto: the "
                        "preset defaults of `lite-whisper compress`)")
    parser.add_argument("--sensitivity", choices=("fisher", "probe"),
                        help="how the sensitivity policy measures each linear (default: compress's default)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/compress_presets_<model>[_<recovery>].json)")
    parser.add_argument("--resume", action="store_true", help="keep the stock score and runs already in --out")
    args = parser.parse_args()

    from lite_whisper_convert.evaluation import machine_info
    from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS

    Path(args.work).mkdir(parents=True, exist_ok=True)
    model_name = Path(args.model).name
    suffix = "" if args.recovery == "none" else f"_{args.recovery}"
    out = Path(args.out) if args.out else RESULTS / f"compress_presets_{model_name}{suffix}.json"
    report = {"model": model_name, "family": args.family, "calibration": Path(args.calibration).name,
              "num_samples": args.num_samples, "eval": Path(args.eval).name, "recovery": args.recovery,
              "sensitivity": args.sensitivity or "default",
              "machine": machine_info(), "runs": []}
    report["load_average"] = f"{os.getloadavg()[0]:.1f}"  # shared machine: other jobs slow the timings
    if args.resume and out.exists():
        report = json.loads(out.read_text())

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    stock = report.get("stock") or score(args.model, args.eval, args.eval_batch_size)
    report["stock"] = stock
    save()
    print(f"stock: WER {stock['wer']:.2f}", flush=True)
    runs = [(preset, "sensitivity", "real") for preset in args.presets]
    runs += [(f"{target}x", "sensitivity", "real") for target in args.targets]
    for preset in args.ablation:
        runs += [(preset, "threshold", "real"), (preset, "sensitivity", "all"), (preset, "threshold", "all")]
    for preset, policy, frames in runs:
        method = f"-{args.sensitivity}" if args.sensitivity else ""
        stats_path = Path(args.work) / f"{model_name}-{frames}-{args.num_samples}{method}.stats"
        name = f"{model_name}-{preset}" + ("" if (policy, frames) == ("sensitivity", "real") else f"-{policy}-{frames}")
        if any(run["name"] == name for run in report["runs"]):
            continue
        # Every run lands on the official size of its preset: the sensitivity policy fills it, the threshold
        # policy bisects one threshold to it (on real-frame statistics that is the preset's thresholds).
        if preset.endswith("x"):  # a size target, not a preset
            request = {"target_encoder_params": preset[:-1]}
        elif policy == "sensitivity":
            request = {"preset": preset}
        else:
            request = {"target_encoder_params": str(OFFICIAL_ENCODER_PARAMS[args.family][preset])}
        folder = name if args.recovery == "none" else f"{name}-{args.recovery}"
        record = build(args, folder, stats_path, frames, smoke=(policy, frames) == ("sensitivity", "real"),
                       policy=policy, **request)
        record["name"] = name
        record.update(preset=preset, policy=policy, **score(Path(args.work) / folder, args.eval, args.eval_batch_size))
        record["delta"] = record["wer"] - stock["wer"]
        record["official_delta"] = OFFICIAL_WER_DELTA[args.family].get(preset)
        recipe = json.loads((Path(args.work) / folder / "compression_recipe.json").read_text())
        record["recovery_report"] = recipe.get("extra", {}).get("recovery")
        record["peak_rss_gb"] = peak_rss_gb()
        report["runs"].append(record)
        save()
        print(f"{name}: {record['encoder_params'] / 1e6:.2f}M WER {record['wer']:.2f} ({record['delta']:+.2f}) "
              f"loops {record['loops']}", flush=True)
    print(table(report))
    print(f"wrote {out}")
    return 0


def table(report: dict) -> str:
    """Markdown table of a report written by this script."""
    from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS

    machine = report["machine"]
    official = OFFICIAL_ENCODER_PARAMS[report["family"]]
    lines = [
        f"{report['model']}: calibrated on {report['num_samples']} clips of {report['calibration']}, recovery "
        f"{report.get('recovery', 'none')}, greedy WER on "
        f"{report['eval']}; {machine.get('cpu', '')} ({machine.get('threads', '?')} torch threads, load average "
        f"{report.get('load_average', '?')}), "
        f"torch {machine.get('torch', '')}, transformers {machine.get('transformers', '')}",
        "",
        "| preset | policy | frames | encoder params | official params | WER stock | WER compressed | Δ | official Δ | loops |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| stock | — | — | {report['stock']['encoder_params'] / 1e6:.2f}M | {official['stock'] / 1e6:.2f}M | "
        f"{report['stock']['wer']:.2f} | — | — | — | {report['stock']['loops']} |",
    ]
    for run in report["runs"]:
        official_size = f"{official[run['preset']] / 1e6:.2f}M" if run["preset"] in official else "—"
        official_delta = f"+{run['official_delta']:.2f}" if run.get("official_delta") is not None else "—"
        lines.append(
            f"| {run['preset']} | {run['policy']} | {run['frames']} | {run['encoder_params'] / 1e6:.2f}M | "
            f"{official_size} | {report['stock']['wer']:.2f} | {run['wer']:.2f} | "
            f"{run['delta']:+.2f} | {official_delta} | {run['loops']} |"
        )
    return "\n".join(lines)


def frontier_plot(paths, out: Path) -> Path:
    """WER vs encoder parameters of one model's reports (recipe only and recovered), with the stock model and
    the official LiteWhisper sizes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lite_whisper_convert.cards import frontier_series, wer_axis_for_loops
    from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS

    report = json.loads(Path(paths[0]).read_text())
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for size in (size for preset, size in OFFICIAL_ENCODER_PARAMS[report["family"]].items() if preset != "stock"):
        axes.axvline(size / 1e6, color="0.85", linewidth=1, zorder=0)
    axes.scatter([report["stock"]["encoder_params"] / 1e6], [report["stock"]["wer"]], marker="*", s=180,
                 color="black", zorder=3, label=f"{report['model']} (stock)")
    series = frontier_series(paths)
    for (label, points), style in zip(series.items(), ("o-", "s-", "^-")):
        axes.plot([params / 1e6 for params, _ in points], [wer for _, wer in points], style, markersize=5,
                  label=label, zorder=2)
    axes.set_xlabel("encoder parameters (millions); grey lines: official acc / balanced / fast sizes")
    log = wer_axis_for_loops(axes, series, report["stock"]["wer"])
    axes.set_ylabel(f"greedy WER (%{', log scale' if log else ''}), {report['eval']}")
    axes.set_title(f"{report['model']}: WER vs encoder size, {report['num_samples']} calibration clips", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--table":  # re-print the table of saved reports
        for path in sys.argv[2:]:
            print(table(json.loads(Path(path).read_text())) + "\n")
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--plot":  # --plot OUT.png REPORT [REPORT...]: one model's curves
        print(f"wrote {frontier_plot(sys.argv[3:], Path(sys.argv[2]))}")
        sys.exit(0)
    sys.exit(main())
