"""Recovery frontier: greedy WER of recipe-only and recovered LiteWhisper at several encoder sizes.

For one imported stock Whisper folder and its calibration statistics, at each target encoder size: ranks from
one explained-variance threshold (shared by all slots) bisected to the largest size under the target, the
LiteASR decomposition (recipe only), then `recovery.recover` on the same calibration clips; greedy WER of
both on the evaluation set, plus optional fallback-decoding WER (reported separately). Each configuration
runs in this process; times and peak RSS are recorded per stage.

    python benchmarks/recovery_frontier.py --model /tmp/whisper-tiny.en --stats stats.safetensors \\
        --calibration ../shared/data/librispeech-train-clean-100-calib --clips 200 \\
        --eval ../shared/data/librispeech-test-other-60 --sizes 7.00e6 6.48e6 0.7 0.6 --steps 200 \\
        --out benchmarks/results/recovery_frontier_tiny.en.json

A size below 1.0 is a fraction of the stock encoder's parameters.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ranks_for_target(curves, config, target: float, iterations: int = 30):
    """The largest (thresholds, low_rank_config) whose encoder is at most `target` parameters."""
    from lite_whisper_convert.measures import encoder_parameters
    from lite_whisper_convert.ranks import Thresholds, ranks_for_thresholds

    from configuration_lite_whisper import LiteWhisperConfig

    def size(threshold):
        ranks = ranks_for_thresholds(curves, config, Thresholds(threshold, threshold))
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")}
        return encoder_parameters(LiteWhisperConfig(low_rank_config=ranks, **fields)), ranks

    low, high = 1e-4, 1.0
    best = None
    for _ in range(iterations):
        middle = (low + high) / 2
        params, ranks = size(middle)
        if params <= target:
            best, low = (middle, ranks, params), middle
        else:
            high = middle
    if best is None:
        raise SystemExit(f"no threshold reaches {target:.0f} parameters")
    return best


def report(paths, plot_path=None) -> str:
    """A markdown table (and optionally a Pareto plot) from results files written by this script."""
    lines = ["| model | encoder params | ×stock | stock WER | recipe-only WER (Δ) | recovered WER (Δ) | "
             "held-out error recipe → recovered | recovery s | peak RSS MB |", "|---" * 9 + "|"]
    figures = []
    for path in paths:
        results = json.loads(Path(path).read_text())
        stock_wer = results.get("stock_wer")
        name = Path(results["model"]).name
        rows = sorted(results["rows"], key=lambda row: -row["encoder_params"])
        for row in rows:
            def cell(key):
                value = row.get(key)
                if value is None:
                    return "—"
                return f"{value:.2f} ({value - stock_wer:+.2f})" if stock_wer is not None else f"{value:.2f}"
            report_ = row.get("report", {})
            lines.append(
                f"| {name} | {row['encoder_params'] / 1e6:.2f}M | {row['ratio']:.2f} | "
                f"{stock_wer if stock_wer is None else f'{stock_wer:.2f}'} | {cell('recipe_wer')} | "
                f"{cell('recovered_wer')} | {report_.get('holdout_error_before', float('nan')):.4f} → "
                f"{report_.get('holdout_error_after', float('nan')):.4f} | {row.get('recover_seconds', 0):.0f} | "
                f"{row.get('peak_rss_mb', 0):.0f} |"
            )
        figures.append((name, results, rows))
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(figures), figsize=(5.5 * len(figures), 4), squeeze=False)
        for axis, (name, results, rows) in zip(axes[0], figures):
            if results.get("stock_wer") is not None:
                axis.scatter([results["stock_encoder_params"] / 1e6], [results["stock_wer"]], marker="*", s=120,
                             color="black", label="stock", zorder=3)
            for key, label, style in (("recipe_wer", "LiteASR recipe only", "o--"),
                                      ("recovered_wer", "recovered (refit)", "s-")):
                points = [(row["encoder_params"] / 1e6, row[key]) for row in rows if row.get(key) is not None]
                if points:
                    axis.plot(*zip(*points), style, label=label)
            axis.set_title(f"{name}: greedy WER, {Path(results['eval']).name}")
            axis.set_xlabel("encoder parameters (M)")
            axis.set_ylabel("WER (%)")
            axis.grid(alpha=0.3)
            axis.legend()
        figure.tight_layout()
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot_path, dpi=120)
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["report"]:  # recovery_frontier.py report RESULTS.json... [--plot PNG]
        arguments = sys.argv[2:]
        plot = arguments[arguments.index("--plot") + 1] if "--plot" in arguments else None
        paths = [a for i, a in enumerate(arguments) if a != "--plot" and (i == 0 or arguments[i - 1] != "--plot")]
        print(report(paths, plot))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--clips", type=int, default=200, help="calibration clips recovery uses (holdout included)")
    parser.add_argument("--eval", required=True)
    parser.add_argument("--sizes", nargs="+", type=float, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--refit", choices=("yes", "no"), default="yes")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--holdout", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--layer-loss-weight", type=float, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--skip-recipe", action="store_true", help="do not evaluate the recipe-only model")
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--fallback", action="store_true", help="also report WER with temperature fallback")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.calibration import load_stats, model_identity
    from lite_whisper_convert.decomposition import attach_explained_variance, decompose, spectra
    from lite_whisper_convert.evaluation import evaluate
    from lite_whisper_convert.measures import encoder_parameters
    from lite_whisper_convert.recovery import RecoverySettings, recover

    torch.manual_seed(0)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {"rows": []}
    stock = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(args.model)
    extractor = WhisperFeatureExtractor.from_pretrained(args.model)
    stock_params = encoder_parameters(stock.config)

    def wer_of(model, fallback=False):
        kwargs = {"fallback": True} if fallback else {}
        started = time.perf_counter()
        result = evaluate(args.model, [args.eval], limit=args.eval_limit, model=model, processor=processor,
                          progress=False, **kwargs)
        return result["mean_wer"], time.perf_counter() - started

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")

    results.update({"model": args.model, "stock_encoder_params": stock_params, "calibration": args.calibration,
                    "clips": args.clips, "eval": args.eval, "torch_threads": torch.get_num_threads()})
    if not args.skip_stock:
        wer, seconds = wer_of(stock)
        results["stock_wer"] = wer
        print(f"stock: {stock_params / 1e6:.2f}M WER {wer:.2f} ({seconds:.0f} s)", flush=True)
        if args.fallback:
            results["stock_wer_fallback"] = wer_of(stock, True)[0]
        save()

    started = time.perf_counter()
    stats = load_stats(args.stats, model_identity(stock))
    found = spectra(stats)
    attach_explained_variance(stats, found)
    spectra_seconds = time.perf_counter() - started
    utterances = list(iter_utterances(args.calibration, limit=args.clips))
    settings = RecoverySettings(steps=args.steps, refit=args.refit == "yes")
    for name, value in (("learning_rate", args.lr), ("holdout", args.holdout), ("batch_size", args.batch_size),
                        ("layer_loss_weight", args.layer_loss_weight)):
        if value is not None:
            setattr(settings, name, value)

    for size in args.sizes:
        target = size * stock_params if size <= 1.0 else size
        threshold, ranks, params = ranks_for_target(stats.explained_variance, stock.config, target)
        row = {"target": target, "encoder_params": params, "ratio": params / stock_params, "threshold": threshold,
               "low_rank_config": ranks, "settings": settings.as_dict()}
        started = time.perf_counter()
        lite = decompose(stock, found, ranks)
        row["decompose_seconds"] = time.perf_counter() - started + spectra_seconds
        if not args.skip_recipe:
            row["recipe_wer"], _ = wer_of(lite)
            if args.fallback:
                row["recipe_wer_fallback"], _ = wer_of(lite, True)
            print(f"{params / 1e6:.2f}M recipe WER {row['recipe_wer']:.2f}", flush=True)
        started = time.perf_counter()
        recovery = recover(lite, stock, extractor, utterances, settings, progress=False)
        row["recover_seconds"] = time.perf_counter() - started
        row["report"] = {key: value for key, value in recovery.as_dict().items() if key != "settings"}
        row["recovered_wer"], _ = wer_of(lite)
        if args.fallback:
            row["recovered_wer_fallback"], _ = wer_of(lite, True)
        row["peak_rss_mb"] = peak_rss_mb()
        print(f"{params / 1e6:.2f}M recovered WER {row['recovered_wer']:.2f} held-out error "
              f"{recovery.holdout_error_before:.4f} -> refit {recovery.holdout_error_after_refit} -> "
              f"{recovery.holdout_error_after:.4f} (best step {recovery.best_step}, {row['recover_seconds']:.0f} s)",
              flush=True)
        results["rows"].append(row)
        save()
        del lite
    return 0


if __name__ == "__main__":
    sys.exit(main())
