"""Where does a factored linear stop being faster than its dense product? (sets MERGE_ABOVE_FLOP_RATIO)

For the encoder linear shapes of each Whisper family and a sweep of ranks, times y = (x·W1)·W2 + b against
y = x·Wᵀ + b on a 30 s window (1500 positions) and prints, per shape, the time ratio next to the FLOP
ratio. The factored form pays while time ratio < 1; the merge threshold in modeling_lite_whisper.py is the
FLOP ratio above which it stops paying. Timings interleave the two forms and take medians.

    python benchmarks/layout_threshold.py [--device cuda --dtype float16] [--batch 1] [--repeats 7]
"""

import argparse
import statistics
import time

import torch

from lite_whisper_convert.evaluation import machine_info

SHAPES = {  # (in, out) of the attention projections and the two MLP layers, per family
    "tiny": [(384, 384), (384, 1536), (1536, 384)],
    "base": [(512, 512), (512, 2048), (2048, 512)],
    "small": [(768, 768), (768, 3072), (3072, 768)],
    "large-v3": [(1280, 1280), (1280, 5120), (5120, 1280)],
}
FLOP_RATIOS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(functions, repeats, device):
    times = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[index].append(time.perf_counter() - start)
    return [statistics.median(series) for series in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--families", nargs="+", default=list(SHAPES))
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    machine = machine_info()
    device_name = machine["gpu"] or f"{machine['cpu']}, {machine['threads']} threads"
    print(f"Machine: {device_name}; torch {machine['torch']}; {machine['date']}; {args.dtype}, batch {args.batch}\n")
    print("| family | in x out | " + " | ".join(f"flops {ratio:.1f}" for ratio in FLOP_RATIOS) + " |")
    print("|---|---|" + "---|" * len(FLOP_RATIOS))
    with torch.no_grad():
        for family in args.families:
            for in_features, out_features in SHAPES[family]:
                x = torch.randn(args.batch, 1500, in_features, device=device, dtype=dtype)
                dense = torch.randn(out_features, in_features, device=device, dtype=dtype)
                bias = torch.randn(out_features, device=device, dtype=dtype)
                cells = []
                for ratio in FLOP_RATIOS:
                    rank = max(16, round(ratio * in_features * out_features / (in_features + out_features) / 16) * 16)
                    weight1 = torch.randn(in_features, rank, device=device, dtype=dtype)
                    weight2 = torch.randn(rank, out_features, device=device, dtype=dtype)
                    dense_time, factored_time = median_times(
                        [
                            lambda: torch.nn.functional.linear(x, dense, bias),
                            lambda: torch.nn.functional.linear(
                                torch.nn.functional.linear(x, weight1.T), weight2.T, bias
                            ),
                        ],
                        args.repeats,
                        device,
                    )
                    cells.append(f"{factored_time / dense_time:.2f}")
                print(f"| {family} | {in_features}x{out_features} | " + " | ".join(cells) + " |")
    print("\nCells: factored time / dense time at the given factored/dense FLOP ratio (< 1: factored is faster).")


if __name__ == "__main__":
    main()
