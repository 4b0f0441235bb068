"""Which calibration audio keeps which language? Calibration mixes x presets against error rate per language.

Each mix calibrates once (its stats file serves every preset); each preset is built with `compress()` as
`lite-whisper compress` builds it and evaluated with `evaluation.evaluate` (greedy, each set in its own language,
the set's normaliser and metric). A mix whose sources all state their languages (e.g. German clips only) is a
target-language calibration and is scored only on sets in its languages; any other mix on every set. Every
difference to the stock model gets a paired bootstrap over utterances (benchmarks/paired_wer.py), so a few words
are not mistaken for an effect.

    python benchmarks/multilingual_calibration.py --model /work/models/whisper-base --work /work/runs-15 \\
        --mix en=../shared/data/librispeech-train-clean-100-calib \\
        --mix multi=../shared/data/librispeech-train-clean-100-calib,../shared/data/multilingual-calib-77 \\
        --mix de=GERMAN_CLIPS --mix es=SPANISH_CLIPS \\
        --eval ../shared/data/librispeech-test-other-60 ../shared/data/de-thorsten-eval-12 \\
               ../shared/data/es-css10-eval-18 [--num-samples 64 --probe-clips 8 --sensitivity probe]

Everything is cached in --work (stats-MIX.safetensors, base-MIX-PRESET/, eval/NAME--SET.json with the
transcripts), so an interrupted run resumes and `--report-only` rebuilds the table from what is there; scores
are recomputed from the cached transcripts with the current normalisers. Prints a markdown table with the
machine and writes JSON to benchmarks/results/.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_wer import error_counts, paired_bootstrap  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The targets for the multilingual default calibration: largest error-rate increase, in points.
TARGETS = {"acc": {"en": 1.0, "other": 1.0}, "fast": {"en": 1.0, "other": 2.0}}


def parse_mix(text: str) -> tuple:
    name, _, sources = text.partition("=")
    if not name or not sources:
        raise argparse.ArgumentTypeError(f"--mix takes NAME=SOURCE[,SOURCE...], got {text!r}")
    return name, sources.split(",")


def build(args, mix: str, sources: list, preset: str) -> Path:
    from lite_whisper_convert.compress import compress

    folder = Path(args.work) / f"base-{mix}-{preset}"
    if not (folder / "config.json").is_file():
        compress(args.model, folder, sources, preset=preset, num_samples=mix_clips(args, sources),
                 batch_size=args.batch_size,
                 stats_path=Path(args.work) / f"stats-{mix}.safetensors", probe_clips=args.probe_clips,
                 balance=args.balance, smoke_test=False, overwrite=True, progress=False, recovery=args.recovery,
                 sensitivity_method=args.sensitivity)
    return folder


def mix_clips(args, sources: list) -> int:
    """--num-samples, or every clip of a mix of local folders that holds fewer (a target-language set is small)."""
    from lite_whisper_convert.audio import folder_entries

    if all(Path(source).is_dir() for source in sources):
        return min(args.num_samples, sum(len(folder_entries(Path(source))) for source in sources))
    return args.num_samples


def transcripts(args, name: str, folder, data: str) -> dict:
    """The cached evaluation of one model on one set (with transcripts), evaluating it first when absent."""
    from lite_whisper_convert.audio import source_name
    from lite_whisper_convert.evaluation import evaluate, write_results

    path = Path(args.work) / "eval" / f"{name}--{source_name(data)}.json"
    if not path.is_file():
        if args.report_only:
            return {}
        write_results(evaluate(str(folder), [data], batch_size=args.batch_size, progress=False, keep_transcripts=True),
                      path)
    results = json.loads(path.read_text())
    (result,) = results["datasets"].values()
    return {"encoder_params": results["encoder_params"], "transcripts": result["transcripts"]}


def score(cached: dict, data: str) -> dict:
    """Error rate of cached transcripts in the set's language (current normaliser), with per-utterance counts."""
    from lite_whisper_convert.evaluation import dataset_language, metric_for

    language = dataset_language(data) or "en"
    references = [item["reference"] for item in cached["transcripts"]]
    counts = error_counts(references, [item["hypothesis"] for item in cached["transcripts"]], language)
    return {"language": language, "metric": metric_for(language), "counts": counts,
            "error_rate": 100.0 * counts[:, 0].sum() / counts[:, 1].sum(), "units": int(counts[:, 1].sum()),
            "utterances": len(references)}


def mix_languages(args, mix: str) -> set:
    """The languages a mix's calibration clips stated ('unknown' where a source did not say)."""
    from lite_whisper_convert.calibration import load_stats

    path = Path(args.work) / f"stats-{mix}.safetensors"
    languages = set(load_stats(path).mix.get("languages", {})) if path.is_file() else set()
    return languages or {"unknown"}


def mix_sensitivity(args, mix: str) -> str:
    """How the sensitivities in a mix's stats file were measured (probe or fisher)."""
    from lite_whisper_convert.calibration import load_stats
    from lite_whisper_convert.compress import sensitivity_method_of

    path = Path(args.work) / f"stats-{mix}.safetensors"
    return (sensitivity_method_of(load_stats(path)) if path.is_file() else None) or "not measured"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="stock multilingual Whisper folder")
    parser.add_argument("--mix", type=parse_mix, action="append", required=True, metavar="NAME=SRC[,SRC...]",
                        help="a calibration mix: sources as `--calibration` takes them; repeat for each mix")
    parser.add_argument("--eval", nargs="+", required=True, help="evaluation audiofolders (with `language` columns)")
    parser.add_argument("--work", required=True, help="folder for stats files, models and cached transcripts")
    parser.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"])
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--probe-clips", type=int, default=None, help="default: compress's for the method")
    parser.add_argument("--balance", default="language", choices=("language", "source"))
    parser.add_argument("--sensitivity", choices=("fisher", "probe"), default=None,
                        help="compress's --sensitivity (default: its default)")
    parser.add_argument("--recovery", default="auto", choices=("auto", "none", "refit", "distill"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--report-only", action="store_true", help="only tabulate what --work already holds")
    parser.add_argument("--out", default=str(RESULTS / "multilingual_calibration_base.json"))
    args = parser.parse_args(argv)
    from lite_whisper_convert.audio import source_name
    from lite_whisper_convert.evaluation import machine_info

    stock = {data: transcripts(args, "stock", args.model, data) for data in args.eval}
    stock_scores = {data: score(cached, data) for data, cached in stock.items() if cached}
    rows = []
    for mix, sources in args.mix:
        for preset in args.presets:
            folder = Path(args.work) / f"base-{mix}-{preset}"
            if not args.report_only:
                build(args, mix, sources, preset)
            languages = mix_languages(args, mix)
            for data in args.eval:
                reference = stock_scores.get(data)
                if reference is None or ("unknown" not in languages and reference["language"] not in languages):
                    continue  # a target-language mix is scored on its own languages only
                cached = transcripts(args, f"{mix}-{preset}", folder, data)
                if not cached:
                    continue
                mine = score(cached, data)
                comparison = paired_bootstrap(reference["counts"], mine["counts"], args.resamples, seed=0)
                rows.append({"mix": mix, "preset": preset, "set": source_name(data), "language": mine["language"],
                             "metric": mine["metric"], "encoder_params": cached["encoder_params"],
                             "error_rate": mine["error_rate"], "stock": reference["error_rate"], **comparison})
    sets = {source_name(data): {"language": result["language"], "metric": result["metric"], "units": result["units"],
                                "utterances": result["utterances"], "stock": result["error_rate"],
                                "one_unit_points": 100.0 / result["units"]}
            for data, result in stock_scores.items()}
    report = {"machine": machine_info(), "model": args.model, "mixes": dict(args.mix), "presets": args.presets,
              "num_samples": args.num_samples, "probe_clips": args.probe_clips or "default", "balance": args.balance,
              "recovery": args.recovery, "sets": sets, "rows": rows}
    for mix, sources in args.mix:
        report.setdefault("calibration", {})[mix] = sorted(mix_languages(args, mix))
        report.setdefault("calibration_clips", {})[mix] = mix_clips(args, sources)
        report.setdefault("sensitivity", {})[mix] = mix_sensitivity(args, mix)
    print(markdown(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def markdown(report: dict) -> str:
    machine = report["machine"]
    clips = ", ".join(f"{mix} {count}" for mix, count in report.get("calibration_clips", {}).items())
    lines = [f"{report['model']}: calibration mixes x presets, calibration clips: {clips or report['num_samples']}, "
             f"{report['probe_clips']} probe clips, sensitivity: "
             f"{', '.join(f'{mix} {method}' for mix, method in report.get('sensitivity', {}).items())}, "
             f"balance {report['balance']}, recovery {report['recovery']}; "
             f"{machine['cpu']}, torch {machine['torch']}, transformers {machine['transformers']}, {machine['date']}",
             ""]
    for name, info in report["sets"].items():
        unit = "word" if info["metric"] == "wer" else "character"
        lines.append(f"- {name} ({info['language']}, {info['metric'].upper()}): {info['utterances']} utterances, "
                     f"{info['units']} {unit}s, one {unit} = {info['one_unit_points']:.2f} points; "
                     f"stock {info['stock']:.2f} %")
    set_names = list(report["sets"])
    lines += ["", "| mix | preset | encoder params |" + "".join(f" {name} Δ [95 % interval] |" for name in set_names),
              "|---|---|---:|" + "---|" * len(set_names)]
    cells = {}
    for row in report["rows"]:
        cells.setdefault((row["mix"], row["preset"]), {"params": row["encoder_params"]})[row["set"]] = (
            f"{row['error_rate']:.2f} ({row['delta']:+.2f}) [{row['interval'][0]:+.1f}, {row['interval'][1]:+.1f}]")
    for (mix, preset), cell in cells.items():
        lines.append(f"| {mix} | {preset} | {cell['params'] / 1e6:.2f}M |"
                     + "".join(f" {cell.get(name, '–')} |" for name in set_names))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
