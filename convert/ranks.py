"""Rank policy: how many principal directions each encoder linear keeps.

Two policies, both choosing ranks in steps of RANK_MULTIPLE and keeping a linear dense (absent from
`low_rank_config`) where the factors would not be smaller than the dense weight, k·(in + out) ≥ in·out:

- "threshold" (the LiteASR recipe): for a threshold t, the smallest rank whose explained variance reaches t;
  dense where t is not reached below full rank. `Thresholds` holds one t for the attention slots and one for
  the MLP slots; `thresholds_for_budget` finds, by bisection, the single t that lands on an encoder size.
- "sensitivity" (default): spend an encoder-size budget where it costs least. The cost of rank k in slot s is
  modelled as sensitivity[s] · (1 − explained_variance_s(k)) (sensitivity.py or fisher.py; `ranks_for_budget`
  can also take per-rank cost curves, which `plan_ranks` does not use: see there), and
  `ranks_for_budget` minimises the summed cost under the budget (Lagrangian relaxation, bisection on the
  price of a parameter, then a greedy top-up of the leftover budget).

`PRESETS` (data) gives each family's `acc`, `balanced` and `fast` presets: the encoder size of the official
LiteWhisper release for the sensitivity policy, and thresholds for the threshold policy. `PRESET_NOTES` says
how each family's entries were set, and which are unverified.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from configuration_lite_whisper import ATTENTION_SLOTS, LOW_RANK_SLOTS, slot_shape

from .measures import encoder_parameters, slot_parameters

RANK_MULTIPLE = 16  # ranks are multiples of 16: tensor-core and SIMD friendly, as in the official release
PRESET_NAMES = ("acc", "balanced", "fast")


class RankPolicyError(ValueError):
    """A threshold, preset, family or size target cannot be used."""


@dataclass(frozen=True)
class Thresholds:
    """Explained-variance thresholds in (0, 1]: one for q/k/v/out_proj, one for fc1/fc2."""

    attention: float
    mlp: float

    def __post_init__(self):
        for name in ("attention", "mlp"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise RankPolicyError(f"{name} threshold must be in (0, 1], got {value!r}")

    def for_slot(self, slot: str) -> float:
        return self.attention if slot in ATTENTION_SLOTS else self.mlp

    def as_dict(self) -> dict:
        return {"attention": self.attention, "mlp": self.mlp}


# Official LiteWhisper encoder sizes (parameters, sinusoidal position table excluded), the ceiling each of our
# presets must stay under. Turbo shares large-v3's encoder; medium has no official release.
OFFICIAL_ENCODER_PARAMS = {
    "tiny": {"stock": 7.63e6, "acc": 7.41e6, "balanced": 7.00e6, "fast": 6.48e6},
    "base": {"stock": 19.82e6, "acc": 18.64e6, "balanced": 17.44e6, "fast": 16.07e6},
    "small": {"stock": 87.0e6, "acc": 77.0e6, "balanced": 70.2e6, "fast": 63.1e6},
    "large-v3": {"stock": 635e6, "acc": 429e6, "balanced": 377e6, "fast": 308e6},
    "large-v3-turbo": {"stock": 635e6, "acc": 421e6, "balanced": 374e6, "fast": 313e6},
}

@dataclass(frozen=True)
class Preset:
    """One preset: the encoder size the sensitivity policy fills, and the threshold policy's thresholds."""

    encoder_params: float
    thresholds: Thresholds


# Medium has no official release: its sizes take the mean of small's and large-v3's ratios to the stock encoder
# (acc 0.78, balanced 0.70, fast 0.605 of 305.7M).
_MEDIUM_PARAMS = {"acc": 238.4e6, "balanced": 214.0e6, "fast": 184.9e6}


def _presets(sizes: dict, thresholds: dict) -> Dict[str, Preset]:
    return {name: Preset(sizes[name], Thresholds(*thresholds[name])) for name in PRESET_NAMES}


# family -> preset -> Preset: the data behind --preset. encoder_params is what the default (sensitivity) policy
# fills; thresholds are the LiteASR threshold policy's. See PRESET_NOTES and benchmarks/compress_presets.py.
_BASE_THRESHOLDS = {"acc": (0.9992, 0.9992), "balanced": (0.9972, 0.9972), "fast": (0.9944, 0.9944)}
PRESETS: Dict[str, Dict[str, Preset]] = {
    "tiny": _presets(OFFICIAL_ENCODER_PARAMS["tiny"],
                     {"acc": (0.9994, 0.9994), "balanced": (0.9978, 0.9978), "fast": (0.9951, 0.9951)}),
    "base": _presets(OFFICIAL_ENCODER_PARAMS["base"], _BASE_THRESHOLDS),
    "small": _presets(OFFICIAL_ENCODER_PARAMS["small"], _BASE_THRESHOLDS),
    "medium": _presets(_MEDIUM_PARAMS, _BASE_THRESHOLDS),
    "large-v3": _presets(OFFICIAL_ENCODER_PARAMS["large-v3"], _BASE_THRESHOLDS),
    "large-v3-turbo": _presets(OFFICIAL_ENCODER_PARAMS["large-v3-turbo"], _BASE_THRESHOLDS),
}

_MEASURED = (
    "Sizes are the official LiteWhisper encoder sizes; the default sensitivity policy fills them exactly (to within "
    "one rank step). Thresholds are the largest (to 4 decimals) whose ranks fit those sizes on real {model} "
    "calibrated on 100 clips of librispeech-train-clean-100-calib over all 1500 frames (the threshold policy's "
    "default frames). WER of both policies on librispeech-test-other-60: "
    "benchmarks/results/compress_presets_{model}.json."
)
_UNVERIFIED = (
    "UNVERIFIED: no real {family} weights were available. Sizes: {sizes}. Thresholds are base's, untested here: "
    "on a real model they will not land exactly on the sizes (use --target-encoder-params with --policy threshold "
    "for that). The default sensitivity policy always lands on the size; its WER is unmeasured for this family."
)
PRESET_NOTES: Dict[str, str] = {
    "tiny": _MEASURED.format(model="tiny.en"),
    "base": _MEASURED.format(model="base"),
    "small": _UNVERIFIED.format(family="small", sizes="the official release's"),
    "medium": _UNVERIFIED.format(family="medium", sizes="no official release; the mean of small's and large-v3's "
                                 "ratios to the stock encoder"),
    "large-v3": _UNVERIFIED.format(family="large-v3", sizes="the official release's"),
    "large-v3-turbo": _UNVERIFIED.format(family="large-v3-turbo", sizes="the official release's"),
}


# ------------------------------------------------------------------------------------------------ families


# (d_model, encoder_layers) of each Whisper encoder; ".en" models share their family's encoder.
_FAMILY_SHAPES = {
    (384, 4): "tiny",
    (512, 6): "base",
    (768, 12): "small",
    (1024, 24): "medium",
    (1280, 32): "large-v3",
}


def model_family(config) -> str:
    """'tiny', 'base', 'small', 'medium', 'large-v3' or 'large-v3-turbo', from a WhisperConfig's shapes.

    Large models with 80 mel bins (large, large-v2) use large-v3's presets; turbo is large-v3's encoder with a
    4-layer decoder.
    """
    family = _FAMILY_SHAPES.get((config.d_model, config.encoder_layers))
    if family is None:
        raise RankPolicyError(
            f"no presets for a Whisper encoder with d_model={config.d_model} and {config.encoder_layers} layers; "
            "give thresholds or a size target instead of a preset"
        )
    if family == "large-v3" and config.decoder_layers == 4:
        return "large-v3-turbo"
    return family


def preset_for(config, preset: str) -> Preset:
    """A named preset for this model's family."""
    if preset not in PRESET_NAMES:
        raise RankPolicyError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    family = model_family(config)
    if family not in PRESETS:
        raise RankPolicyError(f"no presets for Whisper {family}; give thresholds or a size target")
    return PRESETS[family][preset]


# ------------------------------------------------------------------------------------------------ the policy


def saves_parameters(rank: int, in_features: int, out_features: int) -> bool:
    """Whether factors of this rank are smaller than the dense weight: k·(in + out) < in·out."""
    return rank * (in_features + out_features) < in_features * out_features


def choose_rank(curve: torch.Tensor, threshold: float, in_features: int, out_features: int,
                multiple: int = RANK_MULTIPLE) -> Optional[int]:
    """The smallest multiple of `multiple` whose explained variance reaches `threshold`, or None (stay dense)
    when no such rank is below full rank and saves parameters. `curve[k-1]` is the variance kept at rank k."""
    full = min(in_features, out_features)
    for rank in range(multiple, full, multiple):
        if not saves_parameters(rank, in_features, out_features):
            return None
        if float(curve[rank - 1]) >= threshold:
            return rank
    return None


def ranks_for_thresholds(curves: Dict[Tuple[int, str], torch.Tensor], config, thresholds: Thresholds) -> List[dict]:
    """`low_rank_config` (one {slot: rank} dict per encoder layer) for these thresholds."""
    low_rank_config = [{} for _ in range(config.encoder_layers)]
    for (layer_index, slot), curve in curves.items():
        in_features, out_features = slot_shape(config, slot)
        rank = choose_rank(curve, thresholds.for_slot(slot), in_features, out_features)
        if rank is not None:
            low_rank_config[layer_index][slot] = rank
    return low_rank_config


def _with_ranks(config, low_rank_config: List[dict]):
    """A stand-in config for `encoder_parameters`: the base shapes with these ranks."""
    from types import SimpleNamespace

    return SimpleNamespace(**{key: getattr(config, key) for key in ("d_model", "encoder_layers", "encoder_ffn_dim",
                                                                      "num_mel_bins")}, low_rank_config=low_rank_config)


def parameters_with_ranks(config, low_rank_config: List[dict]) -> int:
    """Encoder parameters of `config`'s model with these ranks (no position table)."""
    return encoder_parameters(_with_ranks(config, low_rank_config))


def thresholds_for_budget(curves: Dict[Tuple[int, str], torch.Tensor], config, encoder_params: float,
                          steps: int = 50) -> Thresholds:
    """The largest single threshold (attention = MLP) whose ranks fit in `encoder_params`, by bisection.

    Encoder size never decreases as the threshold rises (ranks grow, then the layer turns dense where that is
    no larger), so bisection finds the boundary.
    """
    def size(threshold: float) -> int:
        return parameters_with_ranks(config, ranks_for_thresholds(curves, config, Thresholds(threshold, threshold)))

    low, high = 0.0, 1.0
    if size(1e-9) > encoder_params:
        raise RankPolicyError(
            f"no threshold fits {encoder_params / 1e6:.3f}M encoder parameters: the smallest reachable with the "
            f"threshold policy is {size(1e-9) / 1e6:.3f}M"
        )
    if size(high) <= encoder_params:
        return Thresholds(high, high)
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if size(middle) <= encoder_params else (low, middle)
    low = max(low, 1e-9)
    return Thresholds(low, low)


# ------------------------------------------------------------------------------------------ sensitivity policy


@dataclass(frozen=True)
class _Option:
    parameters: int
    cost: float
    rank: Optional[int]  # None: dense


def slot_options(curve: torch.Tensor, sensitivity: float, config, slot: str,
                 cost_curve: Optional[torch.Tensor] = None) -> List[_Option]:
    """Every choice for one slot, smallest first: each multiple of 16 that saves parameters, then dense.

    A rank's cost is `cost_curve[rank - 1]` when given (the Fisher estimate), else sensitivity × the variance
    it discards (`curve`: explained variance)."""
    in_features, out_features = slot_shape(config, slot)
    options = []
    for rank in range(RANK_MULTIPLE, min(in_features, out_features), RANK_MULTIPLE):
        if not saves_parameters(rank, in_features, out_features):
            break
        if cost_curve is not None:
            cost = max(0.0, float(cost_curve[rank - 1]))
        else:
            cost = sensitivity * max(0.0, 1.0 - float(curve[rank - 1]))
        options.append(_Option(slot_parameters(config, slot, rank), cost, rank))
    options.append(_Option(slot_parameters(config, slot, None), 0.0, None))
    return options


def ranks_for_budget(curves: Dict[Tuple[int, str], torch.Tensor], sensitivity: Dict[Tuple[int, str], float],
                     config, encoder_params: float, steps: int = 100,
                     cost_curves: Optional[Dict[Tuple[int, str], torch.Tensor]] = None) -> List[dict]:
    """`low_rank_config` with the least modelled cost whose encoder fits in `encoder_params`.

    Each slot's cost at rank k is `cost_curves[slot][k - 1]` where given, else sensitivity · (1 − explained
    variance at k); dense costs 0. For a price p per
    parameter every slot independently picks the option minimising cost + p · parameters; bisection on p finds
    the cheapest price that fits, and the leftover budget then buys the upgrades with the best cost saved per
    parameter, one step at a time.
    """
    missing = [key for key in curves if key not in sensitivity]
    if missing:
        raise RankPolicyError(
            f"no sensitivity for {len(missing)} slot(s), e.g. layer {missing[0][0]} {missing[0][1]}: the statistics "
            "were saved without sensitivities; recompute them or use the threshold policy"
        )
    cost_curves = cost_curves or {}
    options = {key: slot_options(curve, sensitivity[key], config, key[1], cost_curves.get(key))
               for key, curve in curves.items()}
    fixed = parameters_with_ranks(config, []) - sum(choices[-1].parameters for choices in options.values())

    def pick(price: float) -> Dict[Tuple[int, str], int]:  # slot -> index into its options
        return {key: min(range(len(choices)), key=lambda i: choices[i].cost + price * choices[i].parameters)
                for key, choices in options.items()}

    def size(choice) -> int:
        return fixed + sum(options[key][index].parameters for key, index in choice.items())

    smallest = {key: 0 for key in options}
    if size(smallest) > encoder_params:
        raise RankPolicyError(
            f"{encoder_params / 1e6:.3f}M encoder parameters is below the smallest reachable size, "
            f"{size(smallest) / 1e6:.3f}M (every linear at rank {RANK_MULTIPLE})"
        )
    low, high = 0.0, 1.0
    while size(pick(high)) > encoder_params:
        high *= 2
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if size(pick(middle)) > encoder_params else (low, middle)
    choice = pick(high)
    _top_up(choice, options, encoder_params - size(choice))
    low_rank_config = [{} for _ in range(config.encoder_layers)]
    for (layer_index, slot), index in sorted(choice.items(), key=lambda item: (item[0][0], LOW_RANK_SLOTS.index(item[0][1]))):
        rank = options[(layer_index, slot)][index].rank
        if rank is not None:
            low_rank_config[layer_index][slot] = rank
    return low_rank_config


def _top_up(choice: dict, options: dict, leftover: int) -> None:
    """Spend `leftover` parameters on one-step upgrades, best cost saved per parameter first (in place)."""
    while True:
        best, best_gain = None, 0.0
        for key, index in choice.items():
            if index + 1 < len(options[key]):
                current, upgrade = options[key][index], options[key][index + 1]
                extra = upgrade.parameters - current.parameters
                gain = (current.cost - upgrade.cost) / extra
                if extra <= leftover and gain > best_gain:
                    best, best_gain = key, gain
        if best is None:
            return
        leftover -= options[best][choice[best] + 1].parameters - options[best][choice[best]].parameters
        choice[best] += 1


# ------------------------------------------------------------------------------------------ resolving a request

POLICIES = ("sensitivity", "threshold")
DEFAULT_POLICY = "sensitivity"


def parse_size(text, config) -> int:
    """An encoder-size target: a ratio of the stock encoder (0 < x ≤ 1, e.g. 0.85) or a parameter count
    (6480000, 6.48e6, 6.48M)."""
    value_text = str(text).strip()
    scale = 1e6 if value_text[-1:] in "mM" else 1.0
    try:
        value = float(value_text.rstrip("mM")) * scale
    except ValueError:
        raise RankPolicyError(f"size target {text!r}: give a ratio like 0.85 or a count like 6.48M") from None
    stock = parameters_with_ranks(config, [])
    if 0 < value <= 1 and scale == 1.0:
        return int(value * stock)
    if value <= 1 or value > stock:
        raise RankPolicyError(f"size target {text!r}: must be a ratio in (0, 1] or a count up to {stock}")
    return int(value)


def check_request(config, preset: Optional[str] = None, thresholds: Optional[Thresholds] = None,
                  target_encoder_params=None, policy: str = DEFAULT_POLICY) -> None:
    """Raise RankPolicyError for a request `plan_ranks` cannot serve; cheap, so run it before calibrating."""
    given = [name for name, value in (("preset", preset), ("thresholds", thresholds),
                                      ("target_encoder_params", target_encoder_params)) if value is not None]
    if len(given) != 1:
        raise RankPolicyError(f"give exactly one of a preset, thresholds or a size target (got {given or 'none'})")
    if policy not in POLICIES:
        raise RankPolicyError(f"unknown rank policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if preset is not None:
        preset_for(config, preset)
    if target_encoder_params is not None:
        parse_size(target_encoder_params, config)


def plan_ranks(stats, config, preset: Optional[str] = None, thresholds: Optional[Thresholds] = None,
               target_encoder_params=None, policy: str = DEFAULT_POLICY) -> Tuple[List[dict], dict]:
    """(low_rank_config, description) for exactly one of: a preset, thresholds, or a size target.

    `stats` must hold explained-variance curves (and sensitivities for the sensitivity policy). The description
    records the request and what it resolved to, for the README and compression_recipe.json.
    """
    check_request(config, preset, thresholds, target_encoder_params, policy)
    curves = stats.explained_variance
    if not curves:
        raise RankPolicyError("the statistics hold no explained-variance curves (run decomposition.spectra first)")
    description = {}
    if thresholds is not None:
        policy, description["thresholds"] = "threshold", thresholds.as_dict()
    elif preset is not None:
        chosen = preset_for(config, preset)
        description.update(preset=preset, family=model_family(config))
        if policy == "threshold":
            thresholds = chosen.thresholds
            description["thresholds"] = thresholds.as_dict()
        else:
            target_encoder_params = int(chosen.encoder_params)
    else:
        target_encoder_params = parse_size(target_encoder_params, config)
        if policy == "threshold":
            thresholds = thresholds_for_budget(curves, config, target_encoder_params)
            description["thresholds"] = thresholds.as_dict()
    description["policy"] = policy
    if target_encoder_params is not None:
        description["target_encoder_params"] = int(target_encoder_params)
    if policy == "threshold":
        low_rank_config = ranks_for_thresholds(curves, config, thresholds)
    else:
        # The scalar model (sensitivity x discarded variance) for every method: spending the budget on the Fisher
        # estimate's per-rank curves (cost_curves) sent tiny.en fast into repetition loops (60.8 % WER vs
        # 15.2 %), its scalar gave 15.6 % (benchmarks/results/fisher_vs_probe_tiny.en.json).
        low_rank_config = ranks_for_budget(curves, stats.sensitivity, config, target_encoder_params)
        description["sensitivity_probe"] = dict(stats.sensitivity_probe)
    description["encoder_params"] = parameters_with_ranks(config, low_rank_config)
    return low_rank_config, description
