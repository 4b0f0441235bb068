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
