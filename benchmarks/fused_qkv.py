"""Does running the q, k and v first factors as one GEMM pay? (decides whether the inference layout fuses them)

q_proj, k_proj and v_proj read the same input, so their first factors can run as one GEMM on the concatenated
weight1 [d, r_q + r_k + r_v] instead of three thin ones. For each Whisper family's width and a sweep of ranks
(each factor at the given fraction of the dense FLOPs, r = ratio * d / 2), this times, on a batch of 30 s
windows (1500 positions), the three separate first-factor GEMMs against one fused GEMM followed by the split,
and prints fused / separate time (< 1: fusing pays). Interleaved repeats, medians.

    python benchmarks/fused_qkv.py [--device cuda --dtype float16] [--batch 1 8] [--repeats 15]
"""

import argparse
import statistics

import torch

from timing import add_timing_arguments, median_times, start_timing, write_results

WIDTHS = {"tiny": 384, "base": 512, "small": 768, "large-v3": 1280}
FLOP_RATIOS = (0.5, 0.6, 0.75)
SLOT_COUNTS = (2, 3)  # q and k factored (the common case in our presets), or all three


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, WIDTHS, WIDTHS, batch=[1, 8], repeats=15)
    args = parser.parse_args(argv)
    device, dtype, machine = start_timing(args)
    columns = [f"{slots} slots at {ratio:.2f}" for slots in SLOT_COUNTS for ratio in FLOP_RATIOS]
    print("| family | batch | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    rows = []
    torch.manual_seed(0)
    with torch.no_grad():
        for batch in args.batch:
            for family in args.families:
                width = WIDTHS[family]
                x = torch.randn(batch, 1500, width, device=device, dtype=dtype)
                cells = {}
                for slots in SLOT_COUNTS:
                    for ratio in FLOP_RATIOS:
                        rank = round(ratio * width / 2 / 16) * 16
                        firsts = [torch.randn(rank, width, device=device, dtype=dtype) for _ in range(slots)]
                        fused = torch.cat(firsts)  # [slots * rank, d]
                        separate_time, fused_time = median_times(
                            [
                                lambda: [torch.nn.functional.linear(x, first) for first in firsts],
                                lambda: torch.nn.functional.linear(x, fused).split(rank, dim=-1),
                            ],
                            args.repeats,
                            device,
                        )
                        cells[f"{slots}x{ratio}"] = fused_time / separate_time
                rows.append({"family": family, "width": width, "batch": batch, "fused_over_separate": cells})
                print(f"| {family} | {batch} | " + " | ".join(f"{value:.2f}" for value in cells.values()) + " |",
                      flush=True)
    medians = {key: statistics.median(row["fused_over_separate"][key] for row in rows) for key in rows[0]["fused_over_separate"]}
    print("| median | | " + " | ".join(f"{value:.2f}" for value in medians.values()) + " |")
    print("\nCells: fused / separate time of the q, k, v first factors (< 1: one fused GEMM is faster).")
    write_results(args.out, "fused_qkv", args, machine, rows=rows, median=medians)


if __name__ == "__main__":
    main()
