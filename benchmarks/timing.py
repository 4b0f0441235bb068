"""Side-by-side timing shared by the benchmark scripts: interleaved repeats, medians, CUDA-synchronised, and the
results file each timing script writes."""

import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from lite_whisper_convert.evaluation import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def median_times(functions, repeats: int, device: torch.device) -> list:
    """Median wall time of each function over `repeats` interleaved rounds, after one warm-up call each.

    Interleaving (f1, f2, ..., f1, f2, ...) exposes every function to the same background load, so their
    ratios stay fair on a noisy machine; the warm-up absorbs allocation and compilation.
    """

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = [[] for _ in functions]
    for function in functions:
        function()
    for _ in range(repeats):
        for index, function in enumerate(functions):
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(series) for series in times]


def write_results(out, name: str, args, machine: dict, **results) -> Path:
    """Write a timing run as JSON (machine, dtype, repeats, then `results`) to `out`, or by default to
    benchmarks/results/<name>-<device>-<date>.json; print and return where."""
    out = Path(out) if out else RESULTS / f"{name}-{args.device}-{machine['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "dtype": args.dtype, "repeats": args.repeats, **results}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out


def add_timing_arguments(parser, families, default_families, batch, repeats) -> None:
    """The options every timing script takes: --families, --batch, --repeats, --device, --dtype, --out."""
    parser.add_argument("--families", nargs="*", default=list(default_families), choices=list(families))
    parser.add_argument("--batch", type=int, nargs="+", default=list(batch))
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/...)")


def start_timing(args) -> tuple:
    """(device, dtype, machine info) for a parsed timing run, after printing which machine it runs on."""
    machine = machine_info()
    where = machine["gpu"] or f"{machine['cpu']}, {machine['threads']} threads"
    print(f"Machine: {where}; torch {machine['torch']}, transformers {machine['transformers']}; {machine['date']}; "
          f"{args.dtype}, median of {args.repeats} interleaved repeats\n")
    return torch.device(args.device), getattr(torch, args.dtype), machine


@contextmanager
def thresholds_overridden(table: dict, value: float):
    """Set every device's entry of a layout threshold table (e.g. MERGE_ABOVE_FLOP_RATIO) to `value` for the
    duration, so that eval() builds a chosen layout; the table is restored afterwards."""
    saved = dict(table)
    table.update(dict.fromkeys(table, value))
    try:
        yield
    finally:
        table.update(saved)
