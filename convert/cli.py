"""The `lite-whisper` command line: argument parsing only; every stage lives in its own module."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lite-whisper", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in _COMMANDS:
        register(subparsers)
    return parser


# Each entry adds one subcommand and sets `func` to the function that runs it.
_COMMANDS = []


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="WER, RTFx, encoder size and FLOPs of a Whisper or LiteWhisper model",
        description="Transcribe each data set with greedy decoding and report corpus WER (percent, after Whisper's "
        "English normaliser on both sides), its unweighted mean over sets, RTFx, encoder parameters and GFLOPs.",
    )
    parser.add_argument("model", help="Whisper or LiteWhisper folder or Hub id")
    parser.add_argument(
        "--data", action="append", required=True, metavar="DATA",
        help="audiofolder (audio + metadata.csv with file_name,text), hf://OWNER/NAME[:CONFIG]/SPLIT, or "
        "'open-asr-leaderboard' for the leaderboard's English test sets; repeat for several",
    )
    parser.add_argument("--limit", type=int, help="at most N utterances per data set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language", default="en", help="for multilingual models (ignored by .en models)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="default: float32 on CPU, float16 on GPU")
    parser.add_argument("--json", metavar="FILE", help="write the results here (the schema cards and benchmarks read)")
    parser.add_argument("--transcripts", action="store_true", help="keep every reference/hypothesis in the JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    import torch

    from .evaluation import evaluate, format_results, write_results

    results = evaluate(
        args.model, args.data, limit=args.limit, batch_size=args.batch_size, language=args.language,
        device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None,
        progress=not args.no_progress, keep_transcripts=args.transcripts,
    )
    print(format_results(results))
    if args.json:
        print(f"wrote {write_results(results, args.json)}")
    return 0


_COMMANDS.append(_add_eval)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        # Our stages raise named errors (subclasses of these) for bad input: show them without a traceback.
        print(f"lite-whisper {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
