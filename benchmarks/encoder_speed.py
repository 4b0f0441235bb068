"""Does low rank pay off in time? Encoder wall time of LiteWhisper vs stock Whisper beside the FLOP ratio.

For each Whisper family and preset size, one run times, interleaved and side by side on the same input:
  - the stock encoder (dense),
  - the LiteWhisper encoder with every low-rank slot as two thin GEMMs ("factored"; q/k/v first factors fused),
  - the LiteWhisper encoder in its inference layout: slots merged back to dense where that is cheaper ("layout"),
and reports time ratios (lite / stock) next to the FLOP ratio (lite FLOPs / stock FLOPs for a 30 s window).
The goal is time ratio <= 1.05 x FLOP ratio on CPU (<= 1.15 x on GPU).

"reduced-attn layers" counts the layers that run attention in the reduced dimension (ReducedAttention,
LiteASR §3.2: one key and one value of max(r_k, r_v) dimensions shared by all heads) in the inference layout;
with T = 1500 that takes q, k and v low rank and r_k, r_v < head_dim. "layout FLOP ratio" counts those layers
in their reduced form; "FLOP ratio" counts per-head attention everywhere (the checkpoint's own FLOPs).
`--attention-rank R` sets q/k/v to rank R in every layer of the uniform cases (the paper's kernel ran at
R <= 32), so that the reduced form runs everywhere.

Ranks: `--lite DIR` times the ranks of real LiteWhisper folders (e.g. the tiny.en/base presets made by
`lite-whisper compress`); otherwise each family gets uniform ranks (the same fraction of every slot's
break-even rank) that land on the official release's encoder size for each preset. Weights are random:
timing depends on shapes only.

    python benchmarks/encoder_speed.py --families tiny base small --batch 1 8
    python benchmarks/encoder_speed.py --families large-v3 --batch 1 --repeats 3
    python benchmarks/encoder_speed.py --families large-v3 --batch 8 --repeats 2 --no-factored
    python benchmarks/encoder_speed.py --lite runs/lite-tiny.en-fast runs/lite-base-fast
    python benchmarks/encoder_speed.py --families tiny base small --attention-rank 32
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
from modeling_lite_whisper import threshold_for, uses_reduced_attention
from lite_whisper_convert.measures import encoder_flops, encoder_parameters
from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS
from timing import add_timing_arguments, median_times, start_timing, thresholds_overridden, write_results

FAMILIES = {  # d_model, layers, heads, ffn, mel bins
    "tiny": (384, 4, 6, 1536, 80),
    "base": (512, 6, 8, 2048, 80),
    "small": (768, 12, 12, 3072, 80),
    "large-v3": (1280, 32, 20, 5120, 128),
    "large-v3-turbo": (1280, 32, 20, 5120, 128),  # large-v3's encoder; the official turbo presets differ in size
}


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


def reduced_attention_layers(config: dict, low_rank_config: list, threshold: float) -> int:
    """Layers that the inference layout runs as ReducedAttention, given the device's threshold."""
    positions = config.get("max_source_positions", 1500)
    return sum(
        uses_reduced_attention(ranks, config["d_model"], config["encoder_attention_heads"], positions, threshold)
        for ranks in low_rank_config or []
    )


def set_layout(encoder, inference: bool) -> None:
    """The inference layout on (merged where cheaper, reduced attention where cheaper: what loaded models run),
    or off: every slot factored and attention per head (q/k/v first factors still fused)."""
    if inference:
        encoder.eval()
        return
    with thresholds_overridden(modeling_lite_whisper.MERGE_ABOVE_FLOP_RATIO, float("inf")), \
            thresholds_overridden(modeling_lite_whisper.REDUCED_ATTENTION_BELOW_FLOP_RATIO, 0.0):
        encoder.eval()


def cases(args):
    """(label, stock config kwargs, low_rank_config) for every row of the table."""
    for folder in args.lite:
        lite = json.loads((Path(folder) / "config.json").read_text())
        keys = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
        yield Path(folder).name, {key: lite[key] for key in keys}, lite["low_rank_config"]
    for family in args.families:
        config = family_config(family)
        for preset in args.presets:
            ranks = uniform_ranks(config, OFFICIAL_ENCODER_PARAMS[family][preset])
            if args.attention_rank:
                qkv = dict.fromkeys(("q_proj", "k_proj", "v_proj"), args.attention_rank)
                yield f"{family} {preset} (uniform, q/k/v {args.attention_rank})", config, [
                    {**layer, **qkv} for layer in ranks]
            else:
                yield f"{family} {preset} (uniform)", config, ranks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, FAMILIES, ["tiny", "base", "small"], batch=[1, 8], repeats=5)
    parser.add_argument("--presets", nargs="+", default=["acc", "balanced", "fast"])
    parser.add_argument("--lite", nargs="*", default=[], metavar="DIR", help="time these LiteWhisper folders' ranks")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True) forms")
    parser.add_argument("--no-factored", action="store_true",
                        help="time only stock and the inference layout (saves a third of the run on large shapes)")
    parser.add_argument("--attention-rank", type=int, default=None, metavar="R",
                        help="uniform cases: q/k/v at rank R in every layer (reduced attention everywhere)")
    args = parser.parse_args(argv)
    device, dtype, machine = start_timing(args)
    print_header(args.compile)
    rows = []
    torch.manual_seed(0)
    for label, config, low_rank_config in cases(args):
        rows += time_case(label, config, low_rank_config, args.batch, args.repeats, device, dtype,
                          factored=not args.no_factored, compiled=args.compile)
    write_results(args.out, "encoder_speed", args, machine, rows=rows)


def _columns(compiled: bool) -> list:
    columns = ["case", "batch", "encoder params", "reduced-attn layers", "FLOP ratio", "layout FLOP ratio", "stock s",
               "factored ratio", "layout ratio", "layout / layout FLOP ratio"]
    return columns + (["compiled stock s", "compiled layout ratio"] if compiled else [])


def print_header(compiled: bool) -> None:
    """The markdown table head for `time_case` rows."""
    columns = _columns(compiled)
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))


def time_case(label, config: dict, low_rank_config: list, batches, repeats, device, dtype, factored=True,
              compiled=False, compile_backend="inductor", should_stop=lambda: False, stock=None) -> list:
    """Time stock against LiteWhisper encoders of one shape and ranks at each batch size, side by side and
    interleaved on the same input; print a markdown row per batch size and return the rows.

    Forms: "stock" (dense), "layout" (the inference layout a loaded model runs), with `factored` also every slot
    as two GEMMs, with `compiled` also torch.compile(fullgraph=True) of stock and layout (`compile_backend`:
    "inductor" for real timings; "eager" only checks that the graphs capture). Windows are
    2 · config["max_source_positions"] frames (default 1500 positions: 30 s). Stops before a batch size when
    `should_stop()` says so. `stock`: a stock encoder of this shape on `device` in `dtype` to share across cases
    (and with it, its compiled graphs); built here when None.
    """
    frames = 2 * config.get("max_source_positions", 1500)
    reduced_threshold = threshold_for(modeling_lite_whisper.REDUCED_ATTENTION_BELOW_FLOP_RATIO, device.type)
    rows = []
    with torch.no_grad():
        stock_config = WhisperConfig(**config)
        lite_config = LiteWhisperConfig(low_rank_config=low_rank_config, **config)
        with torch.device(device):  # initialised where they run: a large-v3 encoder builds in seconds on a GPU
            stock = stock if stock is not None else WhisperEncoder(stock_config).to(dtype).eval()
            factored_encoder = modeling_lite_whisper.LiteWhisperEncoder(lite_config).to(dtype)
        set_layout(factored_encoder, inference=False)
        layout = copy.deepcopy(factored_encoder)
        set_layout(layout, inference=True)
        if not factored:
            del factored_encoder
        flop_ratio = encoder_flops(lite_config) / encoder_flops(stock_config)
        layout_flop_ratio = encoder_flops(
            lite_config, reduced_attention_threshold=reduced_threshold
        ) / encoder_flops(stock_config)
        if compiled:
            # static shapes: each batch size gets its own graph, as a server with a fixed batch would
            compiled_stock = torch.compile(stock, fullgraph=True, dynamic=False, backend=compile_backend)
            compiled_layout = torch.compile(layout, fullgraph=True, dynamic=False, backend=compile_backend)
        for batch in batches:
            if should_stop():
                break
            x = torch.randn(batch, config["num_mel_bins"], frames, device=device, dtype=dtype)
            forms = {"stock": lambda: stock(x), "layout": lambda: layout(x)}
            if factored:
                forms["factored"] = lambda: factored_encoder(x)
            if compiled:
                forms.update(compiled_stock=lambda: compiled_stock(x), compiled_layout=lambda: compiled_layout(x))
            times = dict(zip(forms, median_times(list(forms.values()), repeats, device)))
            row = {
                "case": label, "batch": batch, "encoder_params": encoder_parameters(lite_config),
                "reduced_attention_layers": reduced_attention_layers(config, low_rank_config, reduced_threshold),
                "flop_ratio": flop_ratio, "layout_flop_ratio": layout_flop_ratio, "stock_seconds": times["stock"],
                "factored_time_ratio": times["factored"] / times["stock"] if "factored" in times else None,
                "layout_time_ratio": times["layout"] / times["stock"],
            }
            if compiled:
                row.update(compiled_stock_seconds=times["compiled_stock"],
                           compiled_layout_time_ratio=times["compiled_layout"] / times["compiled_stock"])
            rows.append(row)
            factored_cell = "–" if row["factored_time_ratio"] is None else f"{row['factored_time_ratio']:.3f}"
            cells = [label, str(batch), f"{row['encoder_params'] / 1e6:.2f}M",
                     f"{row['reduced_attention_layers']}/{config['encoder_layers']}", f"{flop_ratio:.3f}",
                     f"{layout_flop_ratio:.3f}", f"{times['stock']:.3f}", factored_cell,
                     f"{row['layout_time_ratio']:.3f}", f"{row['layout_time_ratio'] / layout_flop_ratio:.3f}"]
            if compiled:
                cells += [f"{times['compiled_stock']:.3f}", f"{row['compiled_layout_time_ratio']:.3f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    return rows


if __name__ == "__main__":
    main()
