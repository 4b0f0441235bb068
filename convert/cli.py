"""The `lite-whisper` command line: argument parsing only; every stage lives in its own module."""

import argparse
import os
import signal
import sys

from .logs import configure as configure_logging

DEBUG_VARIABLE = "LITE_WHISPER_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line like every other error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lite-whisper", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_VARIABLE}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in _COMMANDS:
        register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--verbose", action="store_true",
                               help="also print info messages and the library messages a normal run leaves out")
    return parser


# Each entry adds one subcommand and sets `func` to the function that runs it.
_COMMANDS = []


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="WER, RTFx, encoder size and FLOPs of a Whisper or LiteWhisper model",
        description="Transcribe each data set with greedy decoding and report its corpus error rate in its language "
        "(WER, or CER for languages written without spaces; Whisper's English normaliser for English, its basic "
        "normaliser otherwise), their unweighted mean over sets, RTFx, encoder parameters and GFLOPs.",
    )
    parser.add_argument("model", help="Whisper or LiteWhisper folder or Hub id")
    parser.add_argument(
        "--data", action="append", required=True, metavar="DATA",
        help="audiofolder (audio + metadata.csv with file_name,text), hf://OWNER/NAME[:CONFIG]/SPLIT, or "
        "'open-asr-leaderboard' for the leaderboard's English test sets; repeat for several",
    )
    parser.add_argument("--limit", type=int, help="at most N utterances per data set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language", default=None,
                        help="multilingual models: force this language (en, de, ...) on every set; default: each set's "
                        "own (metadata.csv `language` column, else en); 'detect': the model identifies each "
                        "utterance's language and the results report identification accuracy")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="default: float32 on CPU, float16 on GPU")
    parser.add_argument("--json", metavar="FILE", help="write the results here (the schema cards and benchmarks read)")
    parser.add_argument("--transcripts", action="store_true", help="keep every reference/hypothesis in the JSON")
    parser.add_argument("--fallback", action="store_true",
                        help="also decode with Whisper's temperature fallback (compression-ratio and log-prob checks) "
                        "and report that WER beside the greedy one, under 'fallback' in the JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime_arguments(parser)
    parser.set_defaults(func=_run_eval)


def _add_runtime_arguments(parser) -> None:
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="torch (transformers, default) or onnx: ONNX Runtime over the folder's onnx/ files "
                        "(lite-whisper export-onnx), greedy, up to 30 s per clip")
    parser.add_argument("--onnx-dtype", choices=("fp32", "q8", "fp16"), default="fp32",
                        help="with --runtime onnx: which exported variant to run (default fp32)")


def _load(args, device=None, dtype=None):
    """(model, processor) for the chosen runtime."""
    if args.runtime == "onnx":
        from .onnx_runtime import load_onnx_model

        return load_onnx_model(args.model, dtype=args.onnx_dtype)
    from .evaluation import load_model

    return load_model(args.model, device=device, dtype=dtype)


def _processes(device):
    """This process's place in an `accelerate launch` job (a single process without a launcher)."""
    from .distributed import Processes

    return Processes(cpu=device == "cpu" if device else None)


def _device(requested, processes) -> str:
    """The device for this process: under several processes each takes its own (its GPU, or the CPU)."""
    if processes.count > 1 and requested != "cpu":
        return str(processes.device)
    return requested


def _run_eval(args) -> int:
    import torch

    from .checks import check_count, check_data_source, check_device, check_writable_file
    from .evaluation import evaluate, expand_sources, format_results, write_results

    check_count("--limit", args.limit)
    check_count("--batch-size", args.batch_size)
    check_device(args.device)
    check_writable_file("--json", args.json)
    for source in expand_sources(args.data):
        check_data_source("--data", source)
    with _processes(args.device) as processes:
        model, processor = _load(args, device=_device(args.device, processes),
                                 dtype=getattr(torch, args.dtype) if args.dtype else None)
        settings = dict(limit=args.limit, batch_size=args.batch_size, language=args.language,
                        progress=not args.no_progress, keep_transcripts=args.transcripts, model=model,
                        processor=processor, processes=processes)
        results = evaluate(args.model, args.data, **settings)
        if args.runtime == "onnx":
            results["runtime"] = {"name": "onnxruntime", "onnx_dtype": args.onnx_dtype}
        if args.fallback:  # a decoding safeguard, reported beside greedy and never instead of it
            safeguarded = evaluate(args.model, args.data, fallback=True, **settings)
            results["fallback"] = {key: safeguarded[key] for key in ("mean_wer", "datasets", "decoding")}
        if processes.is_main:
            print(format_results(results))
            if args.json:
                print(f"wrote {write_results(results, args.json)}")
    failed = results.get("failed_datasets") or {}
    if failed:
        raise ValueError(f"{len(failed)} of {len(failed) + len(results['datasets'])} data sets could not be scored: "
                         + "; ".join(f"{name}: {reason}" for name, reason in failed.items()))
    return 0


_COMMANDS.append(_add_eval)


def _add_transcribe(subparsers) -> None:
    parser = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files or folders with a Whisper or LiteWhisper model",
        description="Greedy transcription; audio over 30 s uses Whisper's sequential long-form decoding.",
    )
    parser.add_argument("model", help="Whisper or LiteWhisper folder or Hub id")
    parser.add_argument("audio", nargs="+", help="audio files and/or folders of audio (any sample rate)")
    parser.add_argument("--language", default=None, help="multilingual models: e.g. en, fr (default: detect)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    _add_runtime_arguments(parser)
    parser.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    from pathlib import Path

    from .audio import iter_paths
    from .checks import InputError, check_count, check_device
    from .evaluation import transcribe_batches

    check_count("--batch-size", args.batch_size)
    check_device(args.device)
    absent = [path for path in args.audio if not Path(path).exists()]
    if absent:
        raise InputError(f"no such audio file or folder: {', '.join(absent)}")
    model, processor = _load(args, device=args.device)
    for batch, texts, _ in transcribe_batches(model, processor, iter_paths(args.audio), args.batch_size, args.language):
        for utterance, text in zip(batch, texts):
            print(f"{utterance.name}\t{text}", flush=True)
    return 0


_COMMANDS.append(_add_transcribe)


def _add_export_onnx(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a Whisper or LiteWhisper folder to ONNX for ONNX Runtime and transformers.js",
        description="Write onnx/encoder_model.onnx and onnx/decoder_model_merged.onnx (decoder with and without past "
        "key/values in one graph) plus the chosen variants under transformers.js' suffixes (_quantized for q8, "
        "_fp16), after checking every file against PyTorch on a real speech clip.",
    )
    parser.add_argument("model", metavar="MODEL", help="local Whisper or LiteWhisper folder")
    parser.add_argument("--out", metavar="DIR", help="repo folder to write onnx/ into (default: MODEL itself); "
                        "MODEL's files (weights, config, tokenizer, processor) are copied there too")
    parser.add_argument("--dtype", nargs="+", choices=("fp32", "q8", "fp16"), default=["fp32", "q8", "fp16"],
                        help="variants to write (transformers.js dtype names; fp32 is always written)")
    parser.add_argument("--check-audio", metavar="FILE",
                        help="speech clip for the numerical check against PyTorch (default: a LibriSpeech clip in "
                        "../shared/data when present)")
    parser.set_defaults(func=_run_export_onnx)


def _run_export_onnx(args) -> int:
    from .onnx_export import export_onnx

    report = export_onnx(args.model, out_dir=args.out, dtypes=args.dtype, check_audio=args.check_audio)
    for name, size in report.files.items():
        print(f"  {name}  ({size / 1e6:.1f} MB)")
    print(f"wrote {report.folder}")
    return 0


_COMMANDS.append(_add_export_onnx)


def _add_card(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="render a LiteWhisper folder's model card (README.md) and Pareto plot from eval results",
        description="Render DIR/README.md from model_cards/template.md: Hub metadata with a model-index of WER per "
        "data set, a usage snippet, the recipe, a table against the stock model and DIR/pareto.png (WER vs encoder "
        "size for the stock model and every preset in the results).",
    )
    parser.add_argument("model_dir", metavar="DIR", help="LiteWhisper repo folder")
    parser.add_argument("--results", nargs="+", required=True, metavar="FILE",
                        help="`lite-whisper eval --json` files and/or benchmark reports covering this model, the "
                        "stock model and any other presets")
    parser.add_argument("--base-model", help="the stock model's Hub id, e.g. openai/whisper-tiny.en "
                        "(default: from the folder's recipe)")
    parser.add_argument("--repo-id", help="Hub id for the usage snippet (default: ORG/<folder name>)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--datasets", nargs="+", metavar="HUB_ID", help="calibration data sets for the metadata")
    parser.add_argument("--recipe", metavar="FILE", help="JSON describing how the model was made (default: "
                        "compression_recipe.json in DIR, written by export)")
    parser.add_argument("--template", help="card template (default: model_cards/template.md)")
    parser.add_argument("--frontier", nargs="+", default=(), metavar="FILE",
                        help="benchmarks/compress_presets.py reports: add their WER-vs-size curves (recipe only, "
                        "recovered) to the Pareto plot")
    parser.set_defaults(func=_run_card)


def _run_card(args) -> int:
    import json
    from pathlib import Path

    from .cards import render_card

    recipe = json.loads(Path(args.recipe).read_text(encoding="utf-8")) if args.recipe else None
    render_card(args.model_dir, args.results, base_model=args.base_model, repo_id=args.repo_id, license=args.license,
                datasets=args.datasets, recipe=recipe, template=args.template, frontier=args.frontier)
    print(f"wrote {Path(args.model_dir) / 'README.md'} and {Path(args.model_dir) / 'pareto.png'}")
    return 0


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="validate a LiteWhisper folder and upload it to the Hugging Face Hub in one commit",
        description="Check the folder is complete (card, code, config, weights, processor, generation config) and "
        "loads with trust_remote_code in a fresh process, then create_repo + upload_folder.",
    )
    parser.add_argument("model_dir", metavar="DIR", help="LiteWhisper repo folder")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created when absent)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and list every file that would be uploaded; no network, no token")
    parser.add_argument("--include-unusual-files", action="store_true",
                        help="upload calibration stats files and files that look like credentials too (refused otherwise)")
    parser.set_defaults(func=_run_push)


def _run_push(args) -> int:
    from .hub import push_folder

    push_folder(args.model_dir, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
                commit_message=args.message, include_unusual_files=args.include_unusual_files)
    return 0


_COMMANDS += [_add_card, _add_push]


def _add_import_ct2(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-ct2",
        help="import a faster-whisper (CTranslate2) Whisper model as a transformers Whisper folder",
        description="Read model.bin (or model.bin.part1, part2, ... joined in order) with its config.json and "
        "vocabulary, and write config, generation config, safetensors weights, tokenizer and feature extractor.",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder holding model.bin or its parts, or an installed package that ships one")
    parser.add_argument("--out", required=True, help="output folder (written beside it, then renamed into place)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="weight dtype to save (default: float16, as CTranslate2 ships them)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=_run_import_ct2)


def _run_import_ct2(args) -> int:
    from .checks import check_output_folder
    from .ct2_import import import_ct2

    check_output_folder(args.out, args.overwrite, {f"SOURCE": source for source in args.sources})
    print(f"wrote {import_ct2(args.sources, args.out, dtype=args.dtype, overwrite=args.overwrite)}")
    return 0


_COMMANDS.append(_add_import_ct2)


def _add_compress(subparsers) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="compress a stock Whisper into a LiteWhisper repo (calibrate, choose ranks, decompose, export)",
        description="Run calibration audio through the stock model, take PCA of each encoder linear's outputs, "
        "factor the linears into low rank and write a complete LiteWhisper repo, smoke-tested in a fresh process. "
        "Give exactly one of --preset, --attention-threshold/--mlp-threshold or --target-encoder-params.",
    )
    parser.add_argument("model", metavar="MODEL", help="stock Whisper: Hub id or local folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (written beside it, then renamed)")
    parser.add_argument("--preset", choices=("acc", "balanced", "fast"),
                        help="the family's preset: the official LiteWhisper encoder size (see ranks.PRESETS)")
    parser.add_argument("--attention-threshold", type=float, metavar="T",
                        help="threshold policy: explained variance to keep in q/k/v/out_proj (with --mlp-threshold)")
    parser.add_argument("--mlp-threshold", type=float, metavar="T", help="threshold policy: the same for fc1/fc2")
    parser.add_argument("--target-encoder-params", metavar="N",
                        help="land on this encoder size: a count (6480000, 6.48M) or a ratio of the stock encoder (0.85)")
    parser.add_argument("--policy", choices=("sensitivity", "threshold"), default="sensitivity",
                        help="how a preset or size target is spent: 'sensitivity' (default) allocates ranks by "
                        "measured decoder sensitivity, 'threshold' is the original LiteASR explained-variance rule")
    parser.add_argument("--calibration", metavar="DATA", action="append", default=None,
                        help="audio folder (any sample rate; metadata.csv optional, with a `language` column for "
                        "multilingual audio) or hf://OWNER/NAME[:CONFIG]/SPLIT; repeat to mix several sources (see "
                        "--calibration-balance). Default: LibriSpeech (hf://openslr/librispeech_asr:clean/train.100) for "
                        "English-only models; for multilingual ones LibriSpeech plus Multilingual LibriSpeech in 7 languages")
    parser.add_argument("--calibration-balance", choices=("language", "source"), default="language",
                        help="how clips of several sources or languages are interleaved: 'language' (default) gives "
                        "each language an equal share (a source without a language column counts as one language), "
                        "'source' each source")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="calibration clips (default 100, or those of an existing --stats file); a local folder "
                        "with fewer clips is refused")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stats", metavar="FILE",
                        help="calibration statistics file: reused when it exists (if it matches --calibration, "
                        "--num-samples and --frames where given), written after calibrating otherwise")
    parser.add_argument("--reuse-stats", action="store_true",
                        help="reuse an existing --stats file even where --calibration/--num-samples/--frames disagree")
    parser.add_argument("--frames", choices=("real", "all"),
                        help="encoder positions to calibrate on: only those covering real audio, or all 1500 of "
                        "the padded 30 s window (default: real for the sensitivity policy, all for the threshold "
                        "policy, which measured best for each)")
    parser.add_argument("--probe-clips", type=int, default=None,
                        help="calibration clips whose transcripts measure the sensitivities (sensitivity policy; "
                        "default: the first 64 for fisher, or all when fewer; 32 for probe)")
    parser.add_argument("--sensitivity", choices=("fisher", "probe"), default=None,
                        help="sensitivity policy: how each linear's cost per rank is measured: 'fisher' (one forward "
                        "and backward pass of the probe clips for all linears) or 'probe' (one pass per linear; "
                        "default: fisher for multilingual models and presets that distil, probe for the other English-only ones)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="calibration compute dtype (default float32 on CPU, float16 on GPU); saved weights are fp16")
    parser.add_argument("--recovery", choices=("auto", "none", "refit", "distill"), default="auto",
                        help="label-free recovery towards the stock encoder after the decomposition: 'none' is the "
                        "paper's recipe, 'refit' a closed-form least-squares refit of each factored linear, 'distill' "
                        "the refit plus distillation steps; 'auto' (default): what measured best for the model family and "
                        "preset (recovery.PRESET_RECOVERY; e.g. distill for tiny balanced, none for acc)")
    parser.add_argument("--recover-steps", type=int, default=None, metavar="N",
                        help="distillation steps after the refit (0: no recovery at all, the paper's recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-smoke-test", action="store_true", help="skip reloading the repo in a fresh process")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_compress)


def _run_compress(args) -> int:
    import torch

    from .checks import check_device
    from .compress import DTYPES, compress
    from .ranks import RankPolicyError, Thresholds
    from .stages import format_stage_table

    if (args.attention_threshold is None) != (args.mlp_threshold is None):
        raise RankPolicyError("give both --attention-threshold and --mlp-threshold")
    thresholds = Thresholds(args.attention_threshold, args.mlp_threshold) if args.attention_threshold is not None else None
    check_device(args.device)
    if args.no_progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars too
    with _processes(args.device) as processes:
        device = _device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), processes)
        dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if device == "cpu" else torch.float16)
        result = compress(
            args.model, args.out, calibration=args.calibration, balance=args.calibration_balance, preset=args.preset,
            thresholds=thresholds, target_encoder_params=args.target_encoder_params, policy=args.policy,
            num_samples=args.num_samples, batch_size=args.batch_size, stats_path=args.stats, frames=args.frames,
            device=device, dtype=dtype, seed=args.seed, probe_clips=args.probe_clips,
            smoke_test=not args.no_smoke_test, overwrite=args.overwrite, progress=not args.no_progress,
            recovery=args.recovery, recover_steps=args.recover_steps, processes=processes,
            reuse_stats=args.reuse_stats, sensitivity_method=args.sensitivity,
        )
    if not processes.is_main:
        return 0
    source = f"reused from {args.stats}" if result.stats_reused else "calibrated"
    print(f"calibration: {result.calibration_clips} clips, {result.calibration_seconds:.1f} s of audio ({source})")
    print(f"encoder parameters: {result.stock_encoder_params / 1e6:.2f}M -> {result.encoder_params / 1e6:.2f}M "
          f"({result.rank_policy['policy']} policy)")
    if result.smoke is not None:
        which = "held-out clips" if result.smoke.held_out else "calibration clips (the source has no held-out clip)"
        print(f"smoke test on {which} {result.smoke.clip}:\n  stock: {result.smoke.stock_text}\n"
              f"  lite:  {result.smoke.lite_text}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {result.out_dir}")
    print("stage costs (also in compression_recipe.json):\n" + format_stage_table(result.stages))
    return 0


_COMMANDS.append(_add_compress)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and context manager cleans up (staging folders, temp
    files, the smoke test's child process)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def is_named(error: BaseException) -> bool:
    """Whether `error` is one we raise on purpose (bad input, a failed stage), as opposed to a bug."""
    return isinstance(error, (ValueError, OSError)) or type(error).__module__.startswith("lite_whisper_convert")


def one_line(error: BaseException) -> str:
    """An error as one line: its message's first line (type-prefixed when it is not one of ours)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if is_named(error) else f"{type(error).__name__}: {text}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt as interrupt:
        # Cleanup already ran on the way here; nothing partial is left behind.
        print(f"lite-whisper {args.command}: {'terminated' if isinstance(interrupt, Terminated) else 'interrupted'}; "
              "no output was written", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    except Exception as error:
        # Our stages raise named errors for bad input, and a data-parallel job raises RankFailedError on every
        # process naming the failed ranks: one line each. Anything else is a bug: one line too, with the way to
        # see the traceback.
        if debug:
            raise
        hint = "" if is_named(error) else f" (run with --debug or {DEBUG_VARIABLE}=1 for the traceback)"
        print(f"lite-whisper {args.command}: error: {one_line(error)}{hint}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
