"""The GPU session, prepared in advance: everything LiteWhisper needs measured on one CUDA GPU, in about 8 minutes.

GPU time is rare and short, so this one script does all of it in one run and writes one JSON file:

1. equivalence: fp16 and bf16 logits of a LiteWhisper (turbo shapes, random weights) against its dense twin
   (the same model with every low-rank slot multiplied out into a dense Whisper): LiteWhisper's error against the
   fp32 reference must stay within `EQUIVALENCE_FACTOR` x the dense twin's own rounding error. Once at the
   turbo balanced preset's ranks, once with q/k/v at rank 32 (attention in the reduced dimension everywhere).
2. thresholds: the sweeps of layout_threshold.py (factored vs dense linear: MERGE_ABOVE_FLOP_RATIO) and
   reduced_attention.py (reduced vs per-head attention: REDUCED_ATTENTION_BELOW_FLOP_RATIO) on the GPU, fp16,
   batch 1/8/32, and the "cuda" values they support beside the estimates now in modeling_lite_whisper.py.
3. encoders: stock against every preset-sized large-v3 and turbo encoder (uniform ranks at the official
   sizes, `ranks.PRESETS`; random weights: time depends on shapes only), fp16, SDPA, batch 1/8/32, eager, with
   the issue's targets (time ratio <= 1.15 x FLOP ratio at batch 8 and 32; never slower than stock).
4. generate: `generate` end to end for turbo shapes, stock against each preset, a fixed number of decoded tokens.
5. compiled encoders: section 3 again with torch.compile(fullgraph=True), at batch 8 unless `--compile-batches`
   (last, and one batch size: every encoder and batch size is a compile of its own, the slow part of the run).

Each section is guarded (a failure is recorded and the next section runs) and the JSON is rewritten after
every section, so a run cut short keeps what it measured. `--budget` (seconds) bounds the whole run: once it
is spent, what is left is recorded as skipped. Markdown tables print as results arrive.

    python benchmarks/gpu_check.py                       # on a CUDA GPU: JSON in benchmarks/results/
    python benchmarks/gpu_check.py --smoke --out x.json  # anywhere, in seconds: tiny shapes, checks the script

`--smoke` runs every section on tiny shapes on the CPU (or `--device`), with torch.compile's "eager" backend
(graph capture only), so that tests/test_gpu_check.py keeps the script from rotting; its timings mean nothing.
Exit status 1 when a section failed or an equivalence check missed its bound.
"""

import argparse
import copy
import json
import re
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import modeling_lite_whisper
from configuration_lite_whisper import LiteWhisperConfig
from modeling_lite_whisper import (
    MERGE_ABOVE_FLOP_RATIO,
    REDUCED_ATTENTION_BELOW_FLOP_RATIO,
    LiteWhisperAttention,
    LiteWhisperForConditionalGeneration,
    LowRankLinear,
    threshold_for,
)
from lite_whisper_convert.evaluation import machine_info
from lite_whisper_convert.measures import encoder_parameters
from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS, PRESET_NAMES, PRESETS

import encoder_speed
import layout_threshold
import reduced_attention
from timing import RESULTS, median_times

# fp16/bf16 LiteWhisper logits may be at most this many times further from the fp32 reference than the dense
# twin's logits in the same dtype: "within the dtype's rounding", with room for a different order of operations.
EQUIVALENCE_FACTOR = 2.0
# The targets for the encoders on a GPU (fp16): time ratio within this factor of the FLOP ratio at batch
# sizes from TARGET_MIN_BATCH, and never slower than stock.
TIME_OVER_FLOP_TARGET = 1.15
TARGET_MIN_BATCH = 8
FAMILIES = ("large-v3", "large-v3-turbo")  # the GPU users' models; turbo is large-v3's encoder, 4 decoder layers


def _turbo(**decoder) -> dict:
    d_model, layers, heads, ffn, mels = encoder_speed.FAMILIES["large-v3-turbo"]
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=ffn,
                num_mel_bins=mels, max_source_positions=1500, **decoder)


@dataclass
class Plan:
    """Shapes and sizes of one run: the real GPU run, or the smoke run that checks the script in seconds."""

    model: dict  # WhisperConfig kwargs of the full model (equivalence, generate): turbo
    encoders: dict  # family -> WhisperConfig kwargs of its encoder
    preset_params: dict  # family -> preset -> encoder parameters
    linear_shapes: list  # (family, (in, out)) for the merge-threshold sweep
    attention_families: dict  # family -> (d_model, heads) for the reduced-attention sweep
    attention_ranks: list  # (r_q, r_k, r_v) of that sweep
    positions: int  # encoder positions per window (1500: 30 s)
    presets: tuple = PRESET_NAMES
    attention_rank: int = 32  # q/k/v rank of the equivalence case that runs reduced attention in every layer
    batches: list = field(default_factory=lambda: [1, 8, 32])
    repeats: int = 5
    threshold_repeats: int = 10
    compile_batches: list = field(default_factory=lambda: [8])  # each batch size is a compile per encoder
    generate_tokens: int = 64
    generate_batches: list = field(default_factory=lambda: [1, 8, 32])
    compile_backend: str = "inductor"
    dtype: str = "float16"


def full_plan() -> Plan:
    return Plan(
        model=_turbo(decoder_layers=4, decoder_attention_heads=20, decoder_ffn_dim=5120, vocab_size=51866,
                     max_target_positions=448),
        encoders={family: _turbo() for family in FAMILIES},
        preset_params={family: {preset: PRESETS[family][preset].encoder_params for preset in PRESET_NAMES}
                       for family in FAMILIES},
        linear_shapes=[(family, shape) for family, shapes in layout_threshold.SHAPES.items() for shape in shapes],
        attention_families=dict(reduced_attention.FAMILIES),
        attention_ranks=list(reduced_attention.RANKS),
        positions=1500,
    )


def smoke_plan() -> Plan:
    """Tiny shapes with the real presets' size ratios, so every code path runs in seconds on a CPU."""
    encoder = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256, num_mel_bins=16,
                   max_source_positions=30)
    stock_params = encoder_parameters(WhisperConfig(**encoder))
    return Plan(
        model=dict(encoder, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=256, vocab_size=100,
                   max_target_positions=40, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
                   begin_suppress_tokens=None),
        encoders={family: dict(encoder) for family in FAMILIES},
        preset_params={family: {preset: stock_params * PRESETS[family][preset].encoder_params
                                / OFFICIAL_ENCODER_PARAMS[family]["stock"] for preset in PRESET_NAMES}
                       for family in FAMILIES},
        linear_shapes=[("smoke", (64, 64)), ("smoke", (64, 256))],
        attention_families={"smoke": (64, 4)},
        attention_ranks=[(8, 8, 8), (16, 16, 16)],
        positions=30,
        presets=("balanced",),
        attention_rank=8,
        batches=[1, 2],
        repeats=1,
        threshold_repeats=1,
        compile_batches=[2],
        generate_tokens=4,
        generate_batches=[2],
        compile_backend="eager",
        dtype="float32",
    )


class Budget:
    """Wall-clock budget of the whole run; sections and their loops ask `spent()` before each piece of work."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def spent(self) -> bool:
        return self.elapsed() >= self.seconds


# ---------------------------------------------------------------------------------------------------------------
# Models


def preset_ranks(plan: Plan, family: str, preset: str) -> list:
    """Uniform ranks landing on the preset's encoder size (as encoder_speed.py builds them)."""
    return encoder_speed.uniform_ranks(plan.encoders[family], plan.preset_params[family][preset])


def lite_model(plan: Plan, low_rank_config: list, device) -> LiteWhisperForConditionalGeneration:
    with torch.device(device):
        return LiteWhisperForConditionalGeneration(LiteWhisperConfig(low_rank_config=low_rank_config, **plan.model)).eval()


def dense_twin(lite, plan: Plan, device) -> WhisperForConditionalGeneration:
    """The stock Whisper that computes what `lite` computes: each low-rank slot multiplied out into its dense
    weight. Whisper's k_proj has no bias, so `lite`'s k_proj biases are zeroed first (softmax ignores them anyway)."""
    state = lite.state_dict()
    for name, module in lite.named_modules():
        if isinstance(module, LowRankLinear):
            if name.endswith("k_proj"):
                with torch.no_grad():
                    module.bias.zero_()
                state.pop(f"{name}.bias")
            state.pop(f"{name}.weight1")
            state.pop(f"{name}.weight2")
            state[f"{name}.weight"] = module.dense_weight().detach()
    with torch.device(device):
        dense = WhisperForConditionalGeneration(WhisperConfig(**plan.model)).eval()
    dense.load_state_dict(state, strict=True)
    lite.eval()  # k_proj biases changed: rebuild the inference layout from them
    return dense


def layout_counts(model) -> dict:
    """How the inference layout runs the encoder: merged slots, factored slots, reduced-attention layers."""
    slots = [module for module in model.modules() if isinstance(module, LowRankLinear)]
    attention = [module for module in model.modules() if isinstance(module, LiteWhisperAttention)]
    return {"merged_slots": sum(slot.merged_weight is not None for slot in slots),
            "factored_slots": sum(slot.merged_weight is None for slot in slots),
            "reduced_attention_layers": sum(layer.reduced_attention is not None for layer in attention)}


# ---------------------------------------------------------------------------------------------------------------
# Sections


def check_equivalence(plan: Plan, device, budget: Budget) -> dict:
    """fp16 and bf16 LiteWhisper logits against the dense twin's, both measured from the fp32 reference."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # an exact fp32 reference
    try:
        torch.manual_seed(0)
        balanced = preset_ranks(plan, "large-v3-turbo", "balanced")
        qkv = dict.fromkeys(("q_proj", "k_proj", "v_proj"), plan.attention_rank)
        cases = {"turbo balanced (uniform)": balanced,
                 f"turbo balanced, q/k/v rank {plan.attention_rank}": [{**layer, **qkv} for layer in balanced]}
        generator = torch.Generator().manual_seed(1)
        features = torch.randn(2, plan.model["num_mel_bins"], 2 * plan.positions, generator=generator).to(device)
        tokens = torch.randint(0, plan.model["vocab_size"], (2, 8), generator=generator).to(device)

        def logits(model, dtype):
            with torch.no_grad():
                return model(input_features=features.to(dtype), decoder_input_ids=tokens).logits.float()

        print("| case | dtype | layout | dense twin error | LiteWhisper error | ratio | top-1 agreement | pass |\n"
              "|---|---|---|---:|---:|---:|---:|---|")
        rows = []
        for label, low_rank_config in cases.items():
            if budget.spent():
                break
            lite = lite_model(plan, low_rank_config, device)
            dense = dense_twin(lite, plan, device)
            reference = logits(dense, torch.float32)
            scale = reference.abs().max().item()
            lite_fp32_error = (logits(lite, torch.float32) - reference).abs().max().item() / scale
            for dtype in (torch.float16, torch.bfloat16):
                dense_half, lite_half = copy.deepcopy(dense).to(dtype), copy.deepcopy(lite).to(dtype)
                dense_logits, lite_logits = logits(dense_half, dtype), logits(lite_half, dtype)
                dense_error = (dense_logits - reference).abs().max().item() / scale
                lite_error = (lite_logits - reference).abs().max().item() / scale
                ratio = lite_error / max(dense_error, 1e-12)
                row = {"case": label, "dtype": str(dtype).removeprefix("torch."), **layout_counts(lite_half),
                       "lite_fp32_error": lite_fp32_error, "dense_error": dense_error, "lite_error": lite_error,
                       "error_ratio": ratio,
                       "top1_agreement": (lite_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item(),
                       "finite": bool(torch.isfinite(lite_logits).all())}
                row["passed"] = row["finite"] and ratio <= EQUIVALENCE_FACTOR and lite_fp32_error < 1e-3
                rows.append(row)
                layout = (f"{row['merged_slots']} merged, {row['factored_slots']} factored, "
                          f"{row['reduced_attention_layers']} reduced-attn")
                print(f"| {label} | {row['dtype']} | {layout} | {dense_error:.2e} | {lite_error:.2e} | {ratio:.2f} | "
                      f"{row['top1_agreement']:.3f} | {'yes' if row['passed'] else 'NO'} |", flush=True)
                del dense_half, lite_half
            del lite, dense
        print(f"\nErrors: max |logits - fp32 dense logits| / max |fp32 logits|. Pass: LiteWhisper's error at most "
              f"{EQUIVALENCE_FACTOR} x the dense twin's in the same dtype (and fp32 LiteWhisper within 1e-3).")
        return {"rows": rows, "equivalence_factor": EQUIVALENCE_FACTOR,
                "passed": bool(rows) and all(row["passed"] for row in rows)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def measure_thresholds(plan: Plan, device, budget: Budget) -> dict:
    """The merge and reduced-attention sweeps on this device; the thresholds they support."""
    dtype = getattr(torch, plan.dtype)
    print("Factored / dense linear (MERGE_ABOVE_FLOP_RATIO):\n")
    linear_rows = layout_threshold.sweep(plan.linear_shapes, plan.batches, plan.threshold_repeats, device, dtype,
                                         plan.positions, should_stop=budget.spent)
    medians = layout_threshold.median_time_ratios(linear_rows)
    print("\nReduced / per-head attention (REDUCED_ATTENTION_BELOW_FLOP_RATIO):\n")
    attention_rows = reduced_attention.sweep(plan.attention_families, plan.batches, plan.threshold_repeats, device,
                                             dtype, plan.positions, plan.attention_ranks, should_stop=budget.spent)
    summary = reduced_attention.summarize(attention_rows)
    device_type = torch.device(device).type
    families = dict.fromkeys(row["family"] for row in linear_rows + attention_rows)
    by_family = {family: {
        "merge": layout_threshold.break_even(
            {ratio: statistics.median(row["time_ratios"][ratio] for row in rows) for ratio in rows[0]["time_ratios"]})
        if (rows := [row for row in linear_rows if row["family"] == family]) else None,
        "reduced_attention": reduced_attention.faster_up_to([row for row in attention_rows if row["family"] == family]),
    } for family in families}
    result = {
        "by_family": by_family,
        "merge": {"rows": linear_rows, "median_time_ratios": medians,
                  "measured": layout_threshold.break_even(medians) if medians else None,
                  "current": threshold_for(MERGE_ABOVE_FLOP_RATIO, device_type)},
        "reduced_attention": {"rows": attention_rows, "summary": summary,
                              "measured": reduced_attention.faster_up_to(attention_rows) if attention_rows else None,
                              "current": threshold_for(REDUCED_ATTENTION_BELOW_FLOP_RATIO, device_type)},
    }
    print(f"\n| threshold ({device_type}) | in modeling_lite_whisper.py | measured here |\n|---|---:|---:|")
    for name, table in (("MERGE_ABOVE_FLOP_RATIO", "merge"), ("REDUCED_ATTENTION_BELOW_FLOP_RATIO", "reduced_attention")):
        measured = result[table]["measured"]
        print(f"| {name} | {result[table]['current']} | {'–' if measured is None else f'{measured:.2f}'} |")
    print("\n| family | merge above | reduced attention below |\n|---|---:|---:|")
    for family, values in by_family.items():
        print(f"| {family} | " + " | ".join("–" if value is None else f"{value:.2f}" for value in values.values()) + " |")
    return result


def time_encoders(plan: Plan, device, budget: Budget, compiled: bool) -> dict:
    """Stock against each preset-sized encoder of FAMILIES, side by side (encoder_speed.time_case)."""
    dtype = getattr(torch, plan.dtype)
    torch.manual_seed(0)
    if compiled:  # every encoder and batch size is a graph of the one inherited forward: let them all be kept
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 1024)
    batches = plan.compile_batches if compiled else plan.batches
    stocks = {}  # one stock encoder per shape, shared by its presets (and so compiled once)
    encoder_speed.print_header(compiled)
    rows = []
    for family in FAMILIES:
        config = plan.encoders[family]
        key = json.dumps(config, sort_keys=True)
        if key not in stocks:
            with torch.device(device):
                stocks[key] = WhisperEncoder(WhisperConfig(**config)).to(dtype).eval()
        for preset in plan.presets:
            if budget.spent():
                return {"rows": rows, "complete": False, **encoder_targets(rows, compiled)}
            rows += encoder_speed.time_case(
                f"{family} {preset} (uniform)", config, preset_ranks(plan, family, preset), batches, plan.repeats,
                torch.device(device), dtype, factored=False, compiled=compiled, compile_backend=plan.compile_backend,
                should_stop=budget.spent, stock=stocks[key])
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"rows": rows, "complete": True, **encoder_targets(rows, compiled)}


def encoder_targets(rows: list, compiled: bool) -> dict:
    """The issue's targets per row: time ratio <= TIME_OVER_FLOP_TARGET x FLOP ratio (batch >= TARGET_MIN_BATCH),
    and no slower than stock (every batch size)."""
    key = "compiled_layout_time_ratio" if compiled else "layout_time_ratio"
    print(f"\n| case | batch | time ratio | ÷ FLOP ratio | within {TIME_OVER_FLOP_TARGET} x (batch >= "
          f"{TARGET_MIN_BATCH}) | faster than stock |\n|---|---|---:|---:|---|---|")
    misses = []
    for row in rows:
        over = row[key] / row["flop_ratio"]
        within = over <= TIME_OVER_FLOP_TARGET if row["batch"] >= TARGET_MIN_BATCH else None
        faster = row[key] < 1.0
        if within is False or not faster:
            misses.append(f"{row['case']} b={row['batch']}")
        print(f"| {row['case']} | {row['batch']} | {row[key]:.3f} | {over:.3f} | "
              f"{'–' if within is None else ('yes' if within else 'NO')} | {'yes' if faster else 'NO'} |")
    return {"targets_missed": misses}


def time_generate(plan: Plan, device, budget: Budget) -> dict:
    """`generate` end to end (features in, a fixed number of tokens out) for stock and each turbo preset."""
    dtype = getattr(torch, plan.dtype)
    torch.manual_seed(0)
    models = {"stock": None, **{preset: preset_ranks(plan, "large-v3-turbo", preset) for preset in plan.presets}}
    built = {}
    for name, low_rank_config in models.items():
        if low_rank_config is None:
            with torch.device(device):
                model = WhisperForConditionalGeneration(WhisperConfig(**plan.model)).eval()
        else:
            model = lite_model(plan, low_rank_config, device)
        model.generation_config.forced_decoder_ids = None  # random weights: no language or task prompt
        built[name] = model.to(dtype)
    # The decoder prompt is the start token alone, so exactly generate_tokens new tokens whatever the random
    # weights predict: eos is held back until the minimum length, which is also the maximum.
    length = 1 + plan.generate_tokens
    kwargs = dict(min_length=length, max_length=length, do_sample=False, num_beams=1)
    print(f"| batch | tokens | " + " | ".join(f"{name} s" for name in built) + " | "
          + " | ".join(f"{name} / stock" for name in plan.presets) + " |\n|---|---|"
          + "---:|" * (len(built) + len(plan.presets)))
    rows = []
    with torch.no_grad():
        for batch in plan.generate_batches:
            if budget.spent():
                break
            features = torch.randn(batch, plan.model["num_mel_bins"], 2 * plan.positions, device=device, dtype=dtype)
            lengths = {name: model.generate(features, **kwargs).shape[-1] for name, model in built.items()}
            if len(set(lengths.values())) != 1:
                raise RuntimeError(f"models decoded different lengths: {lengths}")
            seconds = median_times([lambda model=model: model.generate(features, **kwargs) for model in built.values()],
                                   plan.repeats, device)
            times = dict(zip(built, seconds))
            row = {"batch": batch, "new_tokens": plan.generate_tokens, "output_length": lengths["stock"],
                   "seconds": times, "time_ratios": {name: times[name] / times["stock"] for name in plan.presets}}
            rows.append(row)
            print(f"| {batch} | {plan.generate_tokens} | " + " | ".join(f"{value:.3f}" for value in times.values())
                  + " | " + " | ".join(f"{row['time_ratios'][name]:.3f}" for name in plan.presets) + " |", flush=True)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# Run


def adopt_measured_thresholds(section: dict, device_type: str) -> None:
    """Run the later sections with the thresholds just measured (in this process only): those are the values
    that go into modeling_lite_whisper.py after the run, so theirs are the timings to report."""
    for table, key in ((MERGE_ABOVE_FLOP_RATIO, "merge"), (REDUCED_ATTENTION_BELOW_FLOP_RATIO, "reduced_attention")):
        if section[key]["measured"] is not None:
            table[device_type] = section[key]["measured"]
    print(f"\nThe sections below use the measured thresholds (--keep-thresholds: the file's).")


def default_out(machine: dict) -> Path:
    """benchmarks/results/gpu_check-<gpu name or cpu>-<date>.json"""
    name = re.sub(r"[^a-z0-9]+", "-", (machine["gpu"] or "cpu").lower()).strip("-")
    return RESULTS / f"gpu_check-{name}-{machine['date'][:10]}.json"


def write_json(path: Path, report: dict) -> None:
    """Rewrite the report in place (through a temporary file, so a kill mid-write never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds, on the CPU unless --device")
    parser.add_argument("--out", type=Path, help="JSON report (default: benchmarks/results/gpu_check-<gpu>-<date>.json)")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the whole run; what is left when they are spent is recorded as skipped")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--compile-batches", type=int, nargs="+", metavar="B",
                        help="batch sizes of the compiled_encoders section (default: 8; 2 with --smoke)")
    parser.add_argument("--keep-thresholds", action="store_true",
                        help="time the encoders and generate with the thresholds in modeling_lite_whisper.py rather "
                        "than the ones the thresholds section just measured")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    plan = smoke_plan() if args.smoke else full_plan()
    plan.compile_batches = args.compile_batches or plan.compile_batches
    machine = machine_info()
    out = args.out or default_out(machine)
    budget = Budget(args.budget)
    report = {"machine": machine, "device": str(device), "mode": "smoke" if args.smoke else "full",
              "budget_seconds": args.budget, "plan": asdict(plan), "sections": {}}
    where = machine["gpu"] if device.type == "cuda" else f"{machine['cpu']}, {machine['threads']} threads"
    print(f"Machine: {where}; torch {machine['torch']}, transformers {machine['transformers']}; {machine['date']}; "
          f"{'smoke run (timings meaningless)' if args.smoke else plan.dtype}\n")
    failed = False
    for name in args.sections:
        section = {"status": "skipped: time budget spent"}
        if not budget.spent():
            print(f"\n## {name}\n", flush=True)
            start = time.monotonic()
            try:
                section = {"status": "ok", **SECTIONS[name](plan, device, budget)}
            except Exception as error:  # recorded, and the next section still runs
                traceback.print_exc()
                section = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                           "traceback": traceback.format_exc()[-4000:]}
                failed = True
            section["seconds"] = time.monotonic() - start
            if device.type == "cuda":
                section["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.empty_cache()
        if section.get("passed") is False:
            failed = True
        if name == "thresholds" and section["status"] == "ok" and not args.keep_thresholds:
            adopt_measured_thresholds(section, device.type)
        report["thresholds_used"] = {"MERGE_ABOVE_FLOP_RATIO": threshold_for(MERGE_ABOVE_FLOP_RATIO, device.type),
                                     "REDUCED_ATTENTION_BELOW_FLOP_RATIO": threshold_for(
                                         REDUCED_ATTENTION_BELOW_FLOP_RATIO, device.type)}
        report["sections"][name] = section
        report["elapsed_seconds"] = budget.elapsed()
        write_json(out, report)
    print("\n## summary\n\n| section | status | seconds |\n|---|---|---:|")
    for name, section in report["sections"].items():
        status = section["status"] + ("" if section.get("passed", True) else ", check missed")
        print(f"| {name} | {status} | {section.get('seconds', 0):.1f} |")
    print(f"\nwrote {out}")
    return 1 if failed else 0


SECTIONS = {
    "equivalence": check_equivalence,
    "thresholds": measure_thresholds,
    "encoders": lambda plan, device, budget: time_encoders(plan, device, budget, compiled=False),
    "generate": time_generate,
    "compiled_encoders": lambda plan, device, budget: time_encoders(plan, device, budget, compiled=True),
}


if __name__ == "__main__":
    sys.exit(main())
