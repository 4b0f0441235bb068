"""Where does a factored linear stop being faster than its dense product? (sets MERGE_ABOVE_FLOP_RATIO)

For the encoder linear shapes of each Whisper family and a sweep of ranks, times y = (x·W1)·W2 + b against
y = x·Wᵀ + b on a 30 s window (1500 positions) and prints, per shape, the time ratio next to the FLOP
ratio. The factored form pays while time ratio < 1; the merge threshold in modeling_lite_whisper.py is the
FLOP ratio above which it stops paying. Timings interleave the two forms and take medians.

    python benchmarks/layout_threshold.py [--device cuda --dtype float16] [--batch 1 8] [--repeats 7]

The last row gives, per FLOP ratio, the median time ratio over the shapes; the threshold is where it reaches 1
(`break_even_flop_ratio` in the JSON). benchmarks/gpu_check.py runs the same sweep on CUDA.
"""

import argparse
import statistics

import torch

from timing import add_timing_arguments, median_times, start_timing, write_results

SHAPES = {  # (in, out) of the attention projections and the two MLP layers, per family
    "tiny": [(384, 384), (384, 1536), (1536, 384)],
    "base": [(512, 512), (512, 2048), (2048, 512)],
    "small": [(768, 768), (768, 3072), (3072, 768)],
    "large-v3": [(1280, 1280), (1280, 5120), (5120, 1280)],
}
FLOP_RATIOS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, SHAPES, SHAPES, batch=[1], repeats=7)
    args = parser.parse_args(argv)
    device, dtype, machine = start_timing(args)
    shapes = [(family, shape) for family in args.families for shape in SHAPES[family]]
    rows = sweep(shapes, args.batch, args.repeats, device, dtype)
    medians = median_time_ratios(rows)
    print("\nCells: factored time / dense time at the given factored/dense FLOP ratio (< 1: factored is faster).")
    write_results(args.out, "layout_threshold", args, machine, rows=rows, median_time_ratios=medians,
                  break_even_flop_ratio=break_even(medians))


def sweep(shapes, batches, repeats, device, dtype, positions: int = 1500, flop_ratios=FLOP_RATIOS,
          should_stop=lambda: False) -> list:
    """Time every (family, (in, out)) shape at every batch size; print a markdown row per case and return the rows.
    Stops early (returning the rows so far) when `should_stop()` says so."""
    print("| family | in x out | batch | " + " | ".join(f"flops {ratio:.2f}" for ratio in flop_ratios) + " |")
    print("|---|---|---|" + "---|" * len(flop_ratios))
    rows = []
    with torch.no_grad():
        for batch in batches:
            for family, (in_features, out_features) in shapes:
                if should_stop():
                    return rows
                ratios = time_ratios(in_features, out_features, batch, repeats, device, dtype, positions, flop_ratios)
                rows.append({"family": family, "in": in_features, "out": out_features, "batch": batch,
                             "time_ratios": dict(zip(map(str, flop_ratios), ratios))})
                cells = " | ".join(f"{ratio:.2f}" for ratio in ratios)
                print(f"| {family} | {in_features}x{out_features} | {batch} | {cells} |", flush=True)
    return rows


def median_time_ratios(rows) -> dict:
    """Per FLOP ratio of the sweep, the median time ratio over the rows (printed as the table's last row)."""
    if not rows:
        return {}
    flop_ratios = list(rows[0]["time_ratios"])
    medians = {ratio: statistics.median(row["time_ratios"][ratio] for row in rows) for ratio in flop_ratios}
    print("| median | | | " + " | ".join(f"{value:.2f}" for value in medians.values()) + " |")
    return medians


def break_even(medians: dict) -> float:
    """The merge threshold the medians support: the highest FLOP ratio of the sweep up to which the median
    factored/dense time ratio stays below 1 (0.0 where even the lowest ratio is slower factored: always merge)."""
    threshold = 0.0
    for ratio, time_ratio in sorted((float(ratio), value) for ratio, value in medians.items()):
        if time_ratio >= 1.0:
            break
        threshold = ratio
    return threshold


def time_ratios(in_features, out_features, batch, repeats, device, dtype, positions: int = 1500,
                flop_ratios=FLOP_RATIOS) -> list:
    """Factored / dense time of one linear on a batch of windows of `positions` encoder positions (1500: 30 s),
    at each FLOP ratio of the sweep."""
    x = torch.randn(batch, positions, in_features, device=device, dtype=dtype)
    dense = torch.randn(out_features, in_features, device=device, dtype=dtype)
    bias = torch.randn(out_features, device=device, dtype=dtype)
    ratios = []
    for ratio in flop_ratios:
        rank = max(16, round(ratio * in_features * out_features / (in_features + out_features) / 16) * 16)
        weight1 = torch.randn(in_features, rank, device=device, dtype=dtype)
        weight2 = torch.randn(rank, out_features, device=device, dtype=dtype)
        dense_time, factored_time = median_times(
            [
                lambda: torch.nn.functional.linear(x, dense, bias),
                lambda: torch.nn.functional.linear(torch.nn.functional.linear(x, weight1.T), weight2.T, bias),
            ],
            repeats,
            device,
        )
        ratios.append(factored_time / dense_time)
    return ratios


if __name__ == "__main__":
    main()
