"""When does attention in the reduced dimension pay? (sets REDUCED_ATTENTION_BELOW_FLOP_RATIO)

For one encoder self-attention layer of each Whisper family on a 30 s window (1500 positions), times the
per-head form (q/k/v/out_proj as their slots, scores and weighted sum per head, SDPA) against ReducedAttention
(one key and one value of max(r_k, r_v) dimensions shared by all heads; see modeling_lite_whisper.py) for a
sweep of q/k/v ranks, out_proj dense. Prints the attention layer's reduced/per-head FLOP ratio next to the
measured time ratio; interleaved medians.

    python benchmarks/reduced_attention.py [--families tiny base] [--batch 1 8] [--device cuda --dtype float16]

The last rows give, per FLOP-ratio bin, the median time ratio over all cases: the threshold in
modeling_lite_whisper.py is the FLOP ratio up to which reduced attention stays faster (`faster_up_to_flop_ratio`
in the JSON). benchmarks/gpu_check.py runs the same sweep on CUDA.
"""

import argparse
import statistics

import torch
from transformers import WhisperConfig

import modeling_lite_whisper
from modeling_lite_whisper import LiteWhisperAttention, LowRankLinear, attention_macs
from timing import add_timing_arguments, median_times, start_timing, thresholds_overridden, write_results

FAMILIES = {"tiny": (384, 6), "base": (512, 8), "small": (768, 12), "large-v3": (1280, 20)}  # d_model, heads
RANKS = [  # (r_q, r_k, r_v)
    (16, 16, 16), (32, 32, 32), (64, 32, 32), (48, 48, 48), (64, 32, 48), (64, 48, 32), (56, 56, 56),
    (64, 64, 64), (96, 48, 64), (80, 80, 80),
]
POSITIONS = 1500
BINS = ((0.0, 0.6), (0.6, 0.8), (0.8, 0.9), (0.9, 1.0), (1.0, 1.1), (1.1, 10.0))


def attention_layer(d_model, heads, ranks: dict, device, dtype, reduced: bool, positions: int = POSITIONS):
    """One encoder self-attention with the given slots at their ranks, in the per-head or the reduced layout."""
    config = WhisperConfig(d_model=d_model, encoder_attention_heads=heads, max_source_positions=positions)
    config._attn_implementation = "sdpa"
    attention = LiteWhisperAttention(embed_dim=d_model, num_heads=heads, config=config)
    for slot, rank in ranks.items():
        factors = torch.randn(d_model, rank) / d_model**0.5, torch.randn(rank, d_model) / rank**0.5
        setattr(attention, slot, LowRankLinear.from_factors(*factors, torch.randn(d_model)))
    forced = float("inf") if reduced else 0.0  # every layer reduced where it can be, or none
    with thresholds_overridden(modeling_lite_whisper.REDUCED_ATTENTION_BELOW_FLOP_RATIO, forced):
        attention.to(device, dtype).eval()
    assert (attention.reduced_attention is not None) == reduced
    return attention


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, FAMILIES, FAMILIES, batch=[1, 8], repeats=5)
    args = parser.parse_args(argv)
    device, dtype, machine = start_timing(args)
    rows = sweep({family: FAMILIES[family] for family in args.families}, args.batch, args.repeats, device, dtype)
    summary = summarize(rows)
    write_results(args.out, "reduced_attention", args, machine, rows=rows, summary=summary,
                  faster_up_to_flop_ratio=faster_up_to(rows))


def sweep(families: dict, batches, repeats, device, dtype, positions: int = POSITIONS, ranks=RANKS,
          should_stop=lambda: False) -> list:
    """Time per-head against reduced attention for each family {name: (d_model, heads)}, batch and (r_q, r_k, r_v);
    print a markdown row per case and return the rows. Stops early (rows so far) when `should_stop()` says so."""
    print("| family | batch | r_q, r_k, r_v | FLOP ratio | per-head ms | time ratio |\n|---|---|---|---|---|---|")
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for family, (d_model, heads) in families.items():
            for batch in batches:
                x = torch.randn(batch, positions, d_model, device=device, dtype=dtype)
                for rank_q, rank_k, rank_v in ranks:
                    if should_stop():
                        return rows
                    slot_ranks = {"q_proj": rank_q, "k_proj": rank_k, "v_proj": rank_v}
                    per_head, reduced = (attention_layer(d_model, heads, slot_ranks, device, dtype, form, positions)
                                         for form in (False, True))
                    times = median_times([lambda: per_head(hidden_states=x)[0], lambda: reduced(hidden_states=x)[0]],
                                         repeats, device)
                    per_head_macs, reduced_macs = attention_macs(slot_ranks, d_model, heads, positions)
                    row = {"family": family, "batch": batch, "ranks": [rank_q, rank_k, rank_v],
                           "flop_ratio": reduced_macs / per_head_macs, "per_head_seconds": times[0],
                           "time_ratio": times[1] / times[0]}
                    rows.append(row)
                    print(f"| {family} | {batch} | {rank_q}, {rank_k}, {rank_v} | {row['flop_ratio']:.3f} | "
                          f"{1e3 * times[0]:.1f} | {row['time_ratio']:.3f} |", flush=True)
    return rows


def summarize(rows) -> list:
    """Median and worst time ratio per FLOP-ratio bin, printed as a markdown table."""
    print("\n| FLOP ratio | cases | median time ratio | worst time ratio |\n|---|---|---|---|")
    summary = []
    for low, high in BINS:
        ratios = [row["time_ratio"] for row in rows if low <= row["flop_ratio"] < high]
        if ratios:
            summary.append({"flop_ratio_from": low, "flop_ratio_to": high, "cases": len(ratios),
                            "median_time_ratio": statistics.median(ratios), "worst_time_ratio": max(ratios)})
            print(f"| {low:.1f}-{high:.1f} | {len(ratios)} | {statistics.median(ratios):.3f} | {max(ratios):.3f} |")
    return summary


def faster_up_to(rows) -> float:
    """The threshold the cases support: the highest FLOP ratio up to which every case ran faster reduced
    (0.0 where the cheapest case already ran slower)."""
    threshold = 0.0
    for row in sorted(rows, key=lambda row: row["flop_ratio"]):
        if row["time_ratio"] >= 1.0:
            break
        threshold = row["flop_ratio"]
    return threshold


if __name__ == "__main__":
    main()
