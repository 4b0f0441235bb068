"""Where does a stock Whisper encoder layer spend its time? The floor under LiteWhisper's time ratio.

Low rank shrinks only the six linears of a layer. For one stock encoder layer of each family on a 30 s window
(1500 positions), times the whole layer (eager, SDPA), its six linears alone and its attention core (SDPA over
per-head q, k, v) alone, and prints each part's share of the layer's time beside its share of the FLOPs as
measures.py counts them; "rest" is everything else (layer norms, GELU, residual adds, the head reshapes and
copies, scaling), which the FLOP count leaves out and no rank can shrink. With linears shrunk to a fraction a
of their time, the layer's time ratio is about rest + attention + a · linears: above a FLOP ratio in which the
rest counts for nothing.

    python benchmarks/layer_profile.py [--families tiny base small large-v3] [--batch 1 8]
"""

import argparse

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from timing import add_timing_arguments, median_times, start_timing, write_results

FAMILIES = {"tiny": (384, 6, 1536), "base": (512, 8, 2048), "small": (768, 12, 3072), "large-v3": (1280, 20, 5120)}
POSITIONS = 1500


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, FAMILIES, FAMILIES, batch=[1], repeats=7)
    args = parser.parse_args(argv)
    device, dtype, machine = start_timing(args)
    print("| family | batch | layer ms | linears: time / FLOPs | attention core: time / FLOPs | rest: time |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for family in args.families:
            d_model, heads, ffn = FAMILIES[family]
            config = WhisperConfig(d_model=d_model, encoder_attention_heads=heads, encoder_ffn_dim=ffn)
            config._attn_implementation = "sdpa"
            layer = WhisperEncoderLayer(config).to(device, dtype).eval()
            attention = layer.self_attn
            for batch in args.batch:
                x = torch.randn(batch, POSITIONS, d_model, device=device, dtype=dtype)
                hidden = torch.randn(batch, POSITIONS, ffn, device=device, dtype=dtype)
                q, k, v = (torch.randn(batch, heads, POSITIONS, d_model // heads, device=device, dtype=dtype)
                           for _ in range(3))

                def linears():
                    for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                        projection(x)
                    layer.fc1(x)
                    layer.fc2(hidden)

                times = median_times(
                    [lambda: layer(x, None), linears, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)],
                    args.repeats, device,
                )
                layer_time, linear_time, attention_time = times
                linear_flops = 2 * POSITIONS * (4 * d_model * d_model + 2 * d_model * ffn)
                attention_flops = 2 * 2 * POSITIONS * POSITIONS * d_model
                total_flops = linear_flops + attention_flops
                row = {"family": family, "batch": batch, "layer_seconds": layer_time,
                       "linear_time_share": linear_time / layer_time, "linear_flop_share": linear_flops / total_flops,
                       "attention_time_share": attention_time / layer_time,
                       "attention_flop_share": attention_flops / total_flops,
                       "rest_time_share": 1 - (linear_time + attention_time) / layer_time}
                rows.append(row)
                print(f"| {family} | {batch} | {1e3 * layer_time:.1f} | {row['linear_time_share']:.0%} / "
                      f"{row['linear_flop_share']:.0%} | {row['attention_time_share']:.0%} / "
                      f"{row['attention_flop_share']:.0%} | {row['rest_time_share']:.0%} |", flush=True)
    write_results(args.out, "layer_profile", args, machine, rows=rows)


if __name__ == "__main__":
    main()
