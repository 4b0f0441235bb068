"""Does low rank pay off in time? Encoder wall time of LiteWhisper vs stock Whisper beside the FLOP ratio.

For each Whisper family and preset size, one run times, interleaved and side by side on the same input:
  - the stock encoder (dense),
  - the LiteWhisper encoder with every low-rank slot as two thin GEMMs ("factored"; q/k/v first factors fused),
  - the LiteWhisper encoder in its inference layout: slots merged back to dense where that is cheaper ("layout"),
and reports time ratios (lite / stock) next to the FLOP ratio (lite FLOPs / stock FLOPs for a 30 s window).
The goal is time ratio <= 1.05 x FLOP ratio on CPU (<= 1.15 x on GPU).

"reduced-attn layers" counts the layers where attention in the reduced dimension (LiteASR §3.2: scores from the
rank-r q/k projections, values through v's rank) would need fewer FLOPs than per-head attention: with T = 1500
the T² terms dominate, so that needs min(r_q, r_k) < head_dim or r_v < head_dim.

Ranks: `--lite DIR` times the ranks of real LiteWhisper folders (e.g. the tiny.en/base presets made by
`lite-whisper compress`); otherwise each family gets uniform ranks (the same fraction of every slot's
break-even rank) that land on the official release's encoder size for each preset. Weights are random:
timing depends on shapes only.

    python benchmarks/encoder_speed.py --families tiny base small --batch 1 8
    python benchmarks/encoder_speed.py --families large-v3 --batch 1 --repeats 3
    python benchmarks/encoder_speed.py --lite runs/lite-tiny.en-fast runs/lite-base-fast
    python benchmarks/encoder_speed.py --device cuda --dtype float16 --batch 1 16 --compile
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import modeling_lite_whisper
from configuration_lite_whisper import LOW_RANK_SLOTS, LiteWhisperConfig, slot_shape
from lite_whisper_convert.evaluation import machine_info
from lite_whisper_convert.measures import encoder_flops, encoder_parameters
from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS
from timing import median_times

FAMILIES = {  # d_model, layers, heads, ffn, mel bins
    "tiny": (384, 4, 6, 1536, 80),
    "base": (512, 6, 8, 2048, 80),
    "small": (768, 12, 12, 3072, 80),
    "large-v3": (1280, 32, 20, 5120, 128),
}
RESULTS = Path(__file__).resolve().parent / "results"


def family_config(family: str) -> dict:
    d_model, layers, heads, ffn, mels = FAMILIES[family]
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=ffn,
                num_mel_bins=mels)


def uniform_ranks(config: dict, target_params: float) -> list:
    """The same fraction of each slot's break-even rank in every layer, bisected to land under the target."""

    def ranks_at(fraction):
        table = {}
        for slot in LOW_RANK_SLOTS:
            in_features, out_features = slot_shape(WhisperConfig(**config), slot)
            rank = int(fraction * in_features * out_features / (in_features + out_features)) // 16 * 16
            if rank >= 16:
                table[slot] = rank
        return [dict(table) for _ in range(config["encoder_layers"])]

    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        size = encoder_parameters(LiteWhisperConfig(low_rank_config=ranks_at(middle), **config))
        low, high = (middle, high) if size <= target_params else (low, middle)
    return ranks_at(low)


def reduced_attention_layers(config: dict, low_rank_config: list) -> int:
    """Layers where reduced-dimension attention would cut the T² work (see the module docstring)."""
    head_dim = config["d_model"] // config["encoder_attention_heads"]
    count = 0
    for ranks in low_rank_config or []:
        scores = "q_proj" in ranks and "k_proj" in ranks and min(ranks["q_proj"], ranks["k_proj"]) < head_dim
        values = "v_proj" in ranks and ranks["v_proj"] < head_dim
        count += bool(scores or values)
    return count


def set_layout(encoder, merged: bool) -> None:
    """Inference layout on (merge where cheaper, as loaded models do) or off (every slot factored)."""
    thresholds = dict(modeling_lite_whisper.MERGE_ABOVE_FLOP_RATIO)
    if not merged:
        modeling_lite_whisper.MERGE_ABOVE_FLOP_RATIO.update({key: float("inf") for key in thresholds})
    try:
        encoder.eval()
    finally:
        modeling_lite_whisper.MERGE_ABOVE_FLOP_RATIO.update(thresholds)


def cases(args):
    """(label, stock config kwargs, low_rank_config) for every row of the table."""
    for folder in args.lite:
        lite = json.loads((Path(folder) / "config.json").read_text())
        keys = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
        yield Path(folder).name, {key: lite[key] for key in keys}, lite["low_rank_config"]
    for family in args.families:
        config = family_config(family)
        for preset in args.presets:
            target = OFFICIAL_ENCODER_PARAMS[family][preset]
            yield f"{family} {preset} (uniform)", config, uniform_ranks(config, target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=["tiny", "base", "small"], choices=list(FAMILIES))
    parser.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"])
    parser.add_argument("--lite", nargs="*", default=[], metavar="DIR", help="time these LiteWhisper folders' ranks")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True) forms")
    parser.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    machine = machine_info()
    where = machine["gpu"] or f"{machine['cpu']}, {machine['threads']} threads"
    print(f"Machine: {where}; torch {machine['torch']}, transformers {machine['transformers']}; {machine['date']}")
    print(f"{args.dtype}, 30 s windows, median of {args.repeats} interleaved repeats\n")
    columns = ["case", "batch", "encoder params", "reduced-attn layers", "FLOP ratio", "stock s", "factored ratio",
               "layout ratio", "layout / FLOP ratio"] + (["compiled stock s", "compiled layout ratio"] if args.compile else [])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    rows = []
    torch.manual_seed(0)
    with torch.no_grad():
        for label, config, low_rank_config in cases(args):
            stock_config = WhisperConfig(**config)
            lite_config = LiteWhisperConfig(low_rank_config=low_rank_config, **config)
            stock = WhisperEncoder(stock_config).to(device, dtype).eval()
            factored = modeling_lite_whisper.LiteWhisperEncoder(lite_config).to(device, dtype)
            set_layout(factored, merged=False)
            layout = copy.deepcopy(factored)
            set_layout(layout, merged=True)
            flop_ratio = encoder_flops(lite_config) / encoder_flops(stock_config)
            for batch in args.batch:
                x = torch.randn(batch, config["num_mel_bins"], 3000, device=device, dtype=dtype)
                functions = [lambda: stock(x), lambda: factored(x), lambda: layout(x)]
                if args.compile:
                    compiled_stock = torch.compile(stock, fullgraph=True)
                    compiled_layout = torch.compile(layout, fullgraph=True)
                    functions += [lambda: compiled_stock(x), lambda: compiled_layout(x)]
                times = median_times(functions, args.repeats, device)
                row = {
                    "case": label, "batch": batch, "encoder_params": encoder_parameters(lite_config),
                    "reduced_attention_layers": reduced_attention_layers(config, low_rank_config),
                    "flop_ratio": flop_ratio, "stock_seconds": times[0],
                    "factored_time_ratio": times[1] / times[0], "layout_time_ratio": times[2] / times[0],
                }
                if args.compile:
                    row.update(compiled_stock_seconds=times[3], compiled_layout_time_ratio=times[4] / times[3])
                rows.append(row)
                cells = [label, str(batch), f"{row['encoder_params'] / 1e6:.2f}M",
                         f"{row['reduced_attention_layers']}/{config['encoder_layers']}", f"{flop_ratio:.3f}",
                         f"{times[0]:.3f}", f"{row['factored_time_ratio']:.3f}", f"{row['layout_time_ratio']:.3f}",
                         f"{row['layout_time_ratio'] / flop_ratio:.3f}"]
                if args.compile:
                    cells += [f"{times[3]:.3f}", f"{row['compiled_layout_time_ratio']:.3f}"]
                print("| " + " | ".join(cells) + " |", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"encoder_speed-{args.device}-{machine['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "dtype": args.dtype, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
