"""LiteWhisper: Whisper with low-rank encoder linears (LiteASR, arXiv 2502.20583).

Each configured encoder linear `y = x W^T + b` is replaced by `LowRankLinear`, `y = (x @ weight1) @ weight2 + bias`,
with `weight1` [in, rank] and `weight2` [rank, out]. Everything else is stock transformers Whisper: the model
classes below subclass transformers' Whisper classes, build the stock layout on the meta device (so the dense
encoder projections that get replaced are never allocated), swap the low-rank modules into their slots and
inherit every `forward` and `generate` unchanged. So SDPA/eager attention, fp16/bf16, `generate()` with
language, task and timestamps, the ASR pipeline and `torch.compile` work as they do for Whisper.

For inference (eval mode) the encoder picks a faster layout in memory, without changing the checkpoint:
a slot near break-even is merged back into one dense weight, factored q/k/v slots of one attention layer run
their first factors as one GEMM (`SharedFirstFactor`), and where the q, k and v ranks are all low enough,
self-attention runs in those ranks instead of per head (`ReducedAttention`, LiteASR §3.2; the one forward
of ours, in `LiteWhisperAttention`, which hands every other call to Whisper's).

This file travels verbatim to every Hub repo we publish: it imports torch and transformers only.
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import WhisperForConditionalGeneration, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperAttention, WhisperEncoder, WhisperPreTrainedModel

try:  # transformers >= 5: initialisers that leave tensors loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:
    from torch.nn import init

try:  # loaded from a Hub repo through trust_remote_code
    from .configuration_lite_whisper import ATTENTION_SLOTS, LiteWhisperConfig
except ImportError:  # installed as a top-level module (`pip install lite-whisper`)
    from configuration_lite_whisper import ATTENTION_SLOTS, LiteWhisperConfig


# What a saved LiteWhisper folder needs for the Auto classes and the ASR pipeline to find our code.
AUTO_MAP = {
    "AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
    "AutoModel": "modeling_lite_whisper.LiteWhisperModel",
    "AutoModelForSpeechSeq2Seq": "modeling_lite_whisper.LiteWhisperForConditionalGeneration",
}


# Two thin GEMMs run at lower efficiency than one fat one, so near break-even a factored layer is slower than
# its dense product. For inference, a layer whose factored FLOPs exceed this fraction of the dense FLOPs is
# multiplied back into one dense weight (in memory only). CPU: measured with benchmarks/layout_threshold.py
# (tiny to small shapes, batch 1 and 8, fp32: the median factored/dense time ratio reaches 1 at FLOP ratio
# 0.9). CUDA: an estimate, not yet measured (thin fp16 GEMMs lose more on GPUs; benchmarks/gpu_check.py measures
# it). Other devices use the CPU value.
MERGE_ABOVE_FLOP_RATIO = {"cpu": 0.9, "cuda": 0.6}

# A layer runs attention in the reduced dimension (ReducedAttention) where that needs at most this fraction of the
# per-head form's FLOPs. CPU: measured with benchmarks/reduced_attention.py (tiny to large-v3 shapes, batch 1
# and 8, fp32): every case up to a FLOP ratio of 0.98 ran faster reduced (time ratio at most 0.97), while at 1.19
# it ran 0-10 % slower. CUDA: an estimate, not yet measured (benchmarks/gpu_check.py), kept below the CPU value.
REDUCED_ATTENTION_BELOW_FLOP_RATIO = {"cpu": 1.0, "cuda": 0.9}



def threshold_for(table: dict, device_type: str) -> float:
    """A layout threshold for a device type; devices without a measured value use the CPU one."""
    return table.get(device_type, table["cpu"])


# transformers 4.53 returns (output, weights, cache) from an attention layer; later versions (output, weights).
_ATTENTION_RETURNS_CACHE = tuple(int(part) for part in transformers.__version__.split(".")[:2]) < (4, 54)


class LowRankLinear(nn.Module):
    """A linear layer factored through rank r: y = (x @ weight1) @ weight2 + bias.

    Parameter names and layouts are those of the published LiteWhisper checkpoints: weight1 [in, r],
    weight2 [r, out], bias [out]. The bias is always present (the low-rank fit moves it even for k_proj).

    Inference layout: in eval mode, where one dense GEMM is faster than two thin ones on the module's device
    (see MERGE_ABOVE_FLOP_RATIO), the forward uses `merged_weight`, the product of the factors. It is rebuilt
    on `eval()`, on a change of device or dtype and on `load_state_dict`, dropped on `train()`, never saved
    (the state dict holds only the factors), and never used where gradients flow to the factors. After editing
    the factors in place in eval mode, call `eval()` again, or switch the layout off meanwhile
    (`set_inference_layout`).
    """

    inference_layout_enabled = True  # see set_inference_layout

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.weight1 = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=dtype))
        self.weight2 = nn.Parameter(torch.empty(rank, out_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.register_buffer("merged_weight", None, persistent=False)  # [out, in] in the dense inference layout
        self.shared_first_factor = None  # (SharedFirstFactor, index) while q/k/v run their first factors fused

    @classmethod
    def from_factors(cls, weight1: torch.Tensor, weight2: torch.Tensor, bias: torch.Tensor = None) -> "LowRankLinear":
        """Wrap given factors: weight1 [in, r], weight2 [r, out], bias [out] (zeros when None)."""
        if weight1.dim() != 2 or weight2.dim() != 2 or weight1.shape[1] != weight2.shape[0]:
            raise ValueError(
                f"factors do not chain: weight1 {tuple(weight1.shape)} must be [in, r] and "
                f"weight2 {tuple(weight2.shape)} must be [r, out]"
            )
        if bias is not None and bias.shape != (weight2.shape[1],):
            raise ValueError(f"bias {tuple(bias.shape)} does not match out_features={weight2.shape[1]}")
        in_features, rank = weight1.shape
        layer = cls(in_features, weight2.shape[1], rank, device=weight1.device, dtype=weight1.dtype)
        with torch.no_grad():
            layer.weight1.copy_(weight1)
            layer.weight2.copy_(weight2)
            layer.bias.copy_(bias if bias is not None else torch.zeros_like(layer.bias))
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, basis: torch.Tensor, mean: torch.Tensor = None) -> "LowRankLinear":
        """Project a dense layer's outputs onto an orthonormal basis V [out, r] of its output space.

        y ≈ μ + (x Wᵀ + b − μ) V Vᵀ, i.e. weight1 = Wᵀ V, weight2 = Vᵀ, bias = μ + (b − μ) V Vᵀ, where μ is the
        mean output the basis was centred on (zeros when None). With V the top principal directions of the
        layer's outputs this is the LiteASR decomposition.
        """
        weight = linear.weight.detach()  # [out, in]
        out_features = weight.shape[0]
        if basis.dim() != 2 or basis.shape[0] != out_features:
            raise ValueError(f"basis {tuple(basis.shape)} must be [out_features={out_features}, rank]")
        basis = basis.to(weight.dtype)
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros_like(weight[:, 0])
        mean = mean.to(weight.dtype) if mean is not None else torch.zeros_like(bias)
        weight1 = weight.T @ basis  # [in, r]
        new_bias = mean + ((bias - mean) @ basis) @ basis.T  # [out]
        return cls.from_factors(weight1, basis.T, new_bias)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent nn.Linear weight, [out, in]."""
        return (self.weight1 @ self.weight2).T

    def factored_flop_ratio(self) -> float:
        """FLOPs of the factored form relative to the dense layer: r(in + out) / (in · out)."""
        return self.rank * (self.in_features + self.out_features) / (self.in_features * self.out_features)

    def refresh_inference_layout(self) -> None:
        """Merge the factors for inference where dense is faster on this device; unmerge in training."""
        threshold = threshold_for(MERGE_ABOVE_FLOP_RATIO, self.weight1.device.type)
        self.shared_first_factor = None  # the attention layer regroups its slots after they refreshed
        off = self.training or not self.inference_layout_enabled or self.weight1.is_meta
        if off or self.factored_flop_ratio() <= threshold:
            self.merged_weight = None
        else:
            with torch.no_grad():
                self.merged_weight = self.dense_weight().contiguous()

    def train(self, mode: bool = True):
        super().train(mode)
        self.refresh_inference_layout()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)  # .to(), .half(), .cuda(): the factors changed device or dtype
        self.refresh_inference_layout()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_inference_layout()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inference = not (torch.is_grad_enabled() and self.weight1.requires_grad)
        if self.merged_weight is not None and inference:
            return nn.functional.linear(hidden_states, self.merged_weight, self.bias)
        if self.shared_first_factor is not None and inference:
            group, index = self.shared_first_factor
            low_rank = group.first_factor(hidden_states, index)
        else:
            # [..., in] -> [..., r]; F.linear on the transposed view runs as one GEMM, no copy.
            low_rank = nn.functional.linear(hidden_states, self.weight1.T)
        return nn.functional.linear(low_rank, self.weight2.T, self.bias)  # [..., r] -> [..., out]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class SharedFirstFactor:
    """q_proj, k_proj and v_proj read the same input: run their first factors as one GEMM.

    Inference layout for an encoder self-attention whose q/k/v slots include two or more factored (unmerged)
    `LowRankLinear`s: the first member called computes x @ [weight1_q | weight1_k | weight1_v] once and the
    others take their slice of it, matched by the identity of the input tensor (any other input is computed
    afresh, so a caller that feeds the slots different inputs still gets exact results). The product is held
    only until every member has taken its slice. Not a module and not saved: rebuilt with the layout.
    """

    def __init__(self, members: list):
        self.ranks = [member.rank for member in members]
        with torch.no_grad():
            self.weight = torch.cat([member.weight1.T for member in members]).contiguous()  # [sum r, in]
        self._latest = None  # [input, slices, members still to take theirs]

    def first_factor(self, hidden_states: torch.Tensor, index: int) -> torch.Tensor:
        latest = self._latest  # one read: a concurrent call may replace it, never change it under us
        if latest is None or latest[0] is not hidden_states:
            slices = nn.functional.linear(hidden_states, self.weight).split(self.ranks, dim=-1)  # [..., r_i] each
            latest = self._latest = [hidden_states, slices, len(self.ranks)]
        latest[2] -= 1
        if latest[2] <= 0 and self._latest is latest:
            self._latest = None
        return latest[1][index]


def attention_macs(ranks: dict, d_model: int, num_heads: int, positions: int) -> tuple:
    """Multiply-adds per position of one self-attention layer: (per-head form, reduced form or None).

    `ranks` maps q_proj/k_proj/v_proj/out_proj to a rank (absent or None: dense). Both forms count the four
    projections, the scores and the weighted sum. The reduced form (ReducedAttention) needs q, k and v low rank;
    its scores and weighted sum run in s = max(r_k, r_v) dimensions shared by all heads, instead of head_dim.
    """
    def projection(rank):
        return d_model * d_model if rank is None else 2 * d_model * rank

    rank_q, rank_k, rank_v = (ranks.get(slot) for slot in ("q_proj", "k_proj", "v_proj"))
    per_head = sum(projection(ranks.get(slot)) for slot in ATTENTION_SLOTS) + 2 * positions * d_model
    if rank_q is None or rank_k is None or rank_v is None:
        return per_head, None
    shared = max(rank_k, rank_v)
    reduced = (
        d_model * (rank_q + rank_k + rank_v)  # first factors
        + num_heads * rank_q * shared  # per-head queries in the key's space
        + 2 * positions * num_heads * shared  # scores and weighted sum
        + num_heads * rank_v * d_model  # v's second factor folded through out_proj
    )
    return per_head, reduced


def uses_reduced_attention(ranks: dict, d_model: int, num_heads: int, positions: int, threshold: float) -> bool:
    """Whether the inference layout runs this layer as ReducedAttention: where it needs at most `threshold` of
    the per-head multiply-adds (`attention_macs`). With Whisper's 1500 positions the T² terms dominate, so in
    practice where q, k and v are all low rank and r_k, r_v < head_dim."""
    per_head, reduced = attention_macs(ranks, d_model, num_heads, positions)
    return reduced is not None and reduced <= threshold * per_head


class ReducedAttention:
    """Encoder self-attention computed in the ranks of low-rank q, k and v (LiteASR §3.2), for inference.

    Write q = Pq W2q + bq with Pq = x W1q [T, r_q] (likewise k, v) and head h's column block W2q_h [r_q, head_dim].
    Scores: q_h k_hᵀ = (Pq M_h + c_h) Pkᵀ + a term constant along each row, which softmax removes (k's bias),
        with M_h = W2q_h W2k_hᵀ [r_q, r_k] and c_h = W2k_h bq_h [r_k], both scaled by head_dim^-1/2.
    Values: Σ_h softmax_h (Pv W2v_h + bv_h) Wo_h + bo = Σ_h (softmax_h Pv) N_h + (bv Wo + bo), since softmax rows
        sum to one, with Wo_h the rows of out_proj's [d, d] input-major weight that head h feeds and
        N_h = W2v_h Wo_h [r_v, d].
    So all heads share one key, Pk, and one value, Pv: attention runs as a single head over H·T queries, in
    s = max(r_k, r_v) dimensions instead of head_dim (the narrower of Pk, Pv is zero-padded to s, because fused
    attention kernels need one width for queries, keys and values), and out_proj becomes N [H·r_v, d].
    Not a module and not saved: built from the slots' factors with the inference layout.
    """

    def __init__(self, attention: "LiteWhisperAttention"):
        q_proj, k_proj, v_proj, out_proj = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
        heads, head_dim = attention.num_heads, attention.head_dim
        shared = max(k_proj.rank, v_proj.rank)
        self.widths = [q_proj.rank, shared, shared]
        with torch.no_grad():
            w1k, w1v = (nn.functional.pad(slot.weight1.float(), (0, shared - slot.rank)) for slot in (k_proj, v_proj))
            first_factors = torch.cat([q_proj.weight1.float(), w1k, w1v], dim=1)  # [d, r_q + 2s]
            self.first_factors = first_factors.T.contiguous().to(q_proj.weight1.dtype)

            w2q = q_proj.weight2.float().view(q_proj.rank, heads, head_dim)  # [r_q, H, hd]
            w2k = k_proj.weight2.float().view(k_proj.rank, heads, head_dim)  # [r_k, H, hd]
            folds = torch.einsum("qhd,khd->hkq", w2q, w2k) * attention.scaling  # M_hᵀ: [H, r_k, r_q]
            biases = torch.einsum("khd,hd->hk", w2k, q_proj.bias.float().view(heads, head_dim)) * attention.scaling
            folds = nn.functional.pad(folds, (0, 0, 0, shared - k_proj.rank))  # [H, s, r_q]
            biases = nn.functional.pad(biases, (0, shared - k_proj.rank))  # c_h: [H, s]
            self.query_fold = folds.reshape(heads * shared, q_proj.rank).to(q_proj.weight2.dtype)
            self.query_bias = biases.reshape(-1).to(q_proj.bias.dtype)

            out_weight = _dense_weight(out_proj).float().T  # [d_in, d_out], rows grouped by head
            w2v = v_proj.weight2.float().view(v_proj.rank, heads, head_dim)  # [r_v, H, hd]
            folds = torch.einsum("vhd,hdo->ohv", w2v, out_weight.view(heads, head_dim, -1))  # Nᵀ: [d, H, r_v]
            folds = nn.functional.pad(folds, (0, shared - v_proj.rank))  # [d, H, s]
            self.value_fold = folds.reshape(out_weight.shape[1], heads * shared).to(v_proj.weight2.dtype)
            self.output_bias = (v_proj.bias.float() @ out_weight + out_proj.bias.float()).to(out_proj.bias.dtype)

    def __call__(self, hidden_states: torch.Tensor, num_heads: int) -> torch.Tensor:
        batch, positions, _ = hidden_states.shape
        low_rank_q, key, value = nn.functional.linear(hidden_states, self.first_factors).split(self.widths, dim=-1)
        query = nn.functional.linear(low_rank_q, self.query_fold, self.query_bias)  # [B, T, H·s]
        query = query.view(batch, positions, num_heads, -1).transpose(1, 2)  # [B, H, T, s]
        query = query.reshape(batch, 1, num_heads * positions, -1)  # one head with H·T queries
        output = nn.functional.scaled_dot_product_attention(query, key.unsqueeze(1), value.unsqueeze(1), scale=1.0)
        output = output.view(batch, num_heads, positions, -1).transpose(1, 2).reshape(batch, positions, -1)
        return nn.functional.linear(output, self.value_fold, self.output_bias)  # [B, T, H·s] -> [B, T, d]


def _dense_weight(linear: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an nn.Linear or LowRankLinear."""
    return linear.dense_weight() if isinstance(linear, LowRankLinear) else linear.weight


class LiteWhisperAttention(WhisperAttention):
    """Whisper's encoder self-attention, plus its inference layout when some of q/k/v/out_proj are low rank.

    Parameters, names and the training/saving forward are Whisper's (inherited). In eval mode, `forward` runs a
    `ReducedAttention` where the ranks make it cheaper (`uses_reduced_attention`); otherwise factored q/k/v slots
    run their first factors as one GEMM (`SharedFirstFactor`). Calls that need what the reduced form does not
    handle (attention weights, a mask, a head mask, a cache, cross-attention) take the inherited forward.
    """

    reduced_attention = None  # a ReducedAttention while the inference layout uses one
    inference_layout_enabled = True  # see set_inference_layout

    def forward(self, hidden_states, *args, **kwargs):
        reduced = self.reduced_attention
        # like LowRankLinear: never where gradients should reach the parameters the reduced form was built from
        inference = reduced is not None and not (
            torch.is_grad_enabled() and any(parameter.requires_grad for parameter in self.parameters())
        )
        plain_call = not args and not kwargs.get("output_attentions") and all(
            kwargs.get(name) is None
            for name in ("attention_mask", "key_value_states", "cache", "past_key_value", "past_key_values",
                         "layer_head_mask")
        )
        if not (inference and plain_call):
            return super().forward(hidden_states, *args, **kwargs)
        output = reduced(hidden_states, self.num_heads)
        return (output, None, None) if _ATTENTION_RETURNS_CACHE else (output, None)

    def refresh_inference_layout(self) -> None:
        """Choose reduced attention or first-factor sharing for inference; drop both for training."""
        slots = {name: getattr(self, name) for name in ATTENTION_SLOTS}
        factored = {name: slot for name, slot in slots.items() if isinstance(slot, LowRankLinear)}
        for slot in factored.values():
            slot.shared_first_factor = None
        self.reduced_attention = None
        off = self.training or not self.inference_layout_enabled
        if off or any(slot.weight1.is_meta for slot in factored.values()):
            return
        threshold = threshold_for(REDUCED_ATTENTION_BELOW_FLOP_RATIO, next(self.parameters()).device.type)
        ranks = {name: slot.rank for name, slot in factored.items()}
        positions = self.config.max_source_positions
        if uses_reduced_attention(ranks, self.embed_dim, self.num_heads, positions, threshold):
            self.reduced_attention = ReducedAttention(self)
            return
        members = [slot for name, slot in factored.items() if name != "out_proj" and slot.merged_weight is None]
        if len(members) >= 2 and len({(m.weight1.device, m.weight1.dtype) for m in members}) == 1:
            group = SharedFirstFactor(members)
            for index, member in enumerate(members):
                member.shared_first_factor = (group, index)

    def train(self, mode: bool = True):
        super().train(mode)  # the slots choose merged or factored first
        self.refresh_inference_layout()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.refresh_inference_layout()
        return self


def set_inference_layout(model: nn.Module, enabled: bool) -> None:
    """Switch the inference layout of every LiteWhisper part of `model` off or back on, whatever its mode.

    Off: low-rank slots run as their two factors and attention runs per head, as in training; for code that
    edits the factors in place and runs the model in eval mode meanwhile (e.g. fitting or distilling them),
    which would otherwise run merged weights and folds built from the old factors. On: rebuilt from the
    current factors (in eval mode).
    """
    for module in model.modules():
        if isinstance(module, LowRankLinear):
            module.inference_layout_enabled = enabled
            module.refresh_inference_layout()
    for module in model.modules():  # after the slots: attention layouts depend on which slots merged
        if isinstance(module, LiteWhisperAttention):
            module.inference_layout_enabled = enabled
            module.refresh_inference_layout()


def _build_stock_layout_on_meta(build, config) -> torch.device:
    """Run a stock Whisper constructor on the meta device, where it allocates nothing.

    Returns the device the caller asked for (a `with torch.device(...)` block, or meta inside
    `from_pretrained`), where `_materialize` later gives storage to the modules we keep.
    """
    device = torch.tensor([]).device
    with torch.device("meta"):
        build(config)
    return device


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Give real storage on `device` to every tensor still on the meta device, then initialise the weights."""
    if device.type != "meta":
        for submodule in module.modules():
            own_tensors = list(submodule.parameters(recurse=False)) + list(submodule.buffers(recurse=False))
            if any(tensor.is_meta for tensor in own_tensors):
                submodule.to_empty(device=device, recurse=False)
                submodule._is_hf_initialized = False  # the stock constructor's post_init ran on meta and set it
    module.post_init()


class LiteWhisperLoadError(ValueError):
    """The checkpoint does not match its `low_rank_config` exactly, or holds NaN/inf weights."""


# Checkpoint keys a model may lack without loading anything wrong: the output projection tied to the decoder's
# embedding (the published repos omit it) and the encoder's fixed sinusoidal position table.
_DERIVED_KEYS = ("proj_out.weight", "model.encoder.embed_positions.weight", "encoder.embed_positions.weight")


def check_loaded_weights(model: nn.Module, loading_info: dict, source: str = "the checkpoint") -> None:
    """Raise `LiteWhisperLoadError` unless the weights of `source` fill `model` exactly and are all finite.

    transformers only warns about a missing key (it initialises that tensor at random), an unexpected one (it
    drops it) or, on request, a mis-shaped one; for LiteWhisper each of these means the checkpoint and its
    `low_rank_config` disagree (a slot added, removed or re-ranked), and the model would transcribe garbage.
    """
    def names(key):
        return sorted(entry if isinstance(entry, str) else entry[0] for entry in loading_info.get(key) or ())

    missing = [name for name in names("missing_keys") if name not in _DERIVED_KEYS]
    unexpected, mismatched = names("unexpected_keys"), names("mismatched_keys")
    problems = [f"{label}: {', '.join(found[:4])}" + (f" and {len(found) - 4} more" if len(found) > 4 else "")
                for label, found in (("missing from the weights", missing), ("not expected by the config", unexpected),
                                     ("with a shape other than the config's", mismatched)) if found]
    if problems:
        raise LiteWhisperLoadError(
            f"{source}: the weights do not match config.json's low_rank_config ({'; '.join(problems)}); the folder "
            "was edited or mixed from two models: re-export it, or restore the config.json that came with the weights"
        )
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            raise LiteWhisperLoadError(f"{source}: weight {name} holds NaN or infinite values; the checkpoint is "
                                       "corrupt: re-export or re-download it")


class LiteWhisperPreTrainedModel(WhisperPreTrainedModel):
    config_class = LiteWhisperConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, made strict: see `check_loaded_weights`."""
        wants_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # report a mis-shaped tensor as the others, below, by name
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        check_loaded_weights(model, info, str(pretrained_model_name_or_path))
        return (model, info) if wants_info else model

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LowRankLinear):
            # Scaled so that weight1 @ weight2 has the spread of a dense layer initialised with init_std.
            init.normal_(module.weight1, mean=0.0, std=self.config.init_std)
            init.normal_(module.weight2, mean=0.0, std=module.rank**-0.5)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, dtype: torch.dtype = torch.float16, **kwargs):
        """Save a self-contained Hub repo folder: weights (fp16 by default), config with `auto_map`, code files.

        The config records float32 as the dtype to load in, so stock Whisper user code runs it on CPU unchanged.

        Everything is written to a temporary folder first and moved into `save_directory` only when complete,
        so an interrupted save never leaves a half-written model behind. Files already in `save_directory`
        that the save does not write (processor, tokenizer, README) are kept.
        """
        save_directory = Path(save_directory)
        save_directory.parent.mkdir(parents=True, exist_ok=True)
        self.config.auto_map = dict(AUTO_MAP)
        state_dict = {
            name: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for name, tensor in self.state_dict().items()
        }
        if self.config.tie_word_embeddings:  # proj_out shares the decoder's embedding; the published repos omit it
            state_dict.pop("proj_out.weight", None)
        staging = Path(tempfile.mkdtemp(prefix=f".{save_directory.name}.partial-", dir=save_directory.parent))
        try:
            super().save_pretrained(staging, *args, state_dict=state_dict, **kwargs)
            _record_load_dtype(staging / "config.json")
            for source in _code_files():
                shutil.copyfile(source, staging / source.name)
            apply_umask(staging)
            _move_into_place(staging, save_directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _code_files() -> list:
    """The two files that define LiteWhisper, wherever they were imported from (site-packages or a Hub cache)."""
    config_module = sys.modules[LiteWhisperConfig.__module__]
    return [Path(config_module.__file__), Path(__file__)]


def _record_load_dtype(config_path: Path) -> None:
    """Record float32 as the dtype to load in, whatever the weights were saved in (fp16 by default), as stock
    Whisper repos do: transformers 5 loads in the config's dtype by default, and fp16 fails on CPU with float
    features. Users ask for fp16/bf16 with `dtype=` as for Whisper."""
    config = json.loads(config_path.read_text())
    key = "dtype" if "dtype" in config else "torch_dtype"
    config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def apply_umask(folder: Path) -> None:
    """Give a staging folder and its files the modes the umask allows (mkdtemp and safetensors make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename a complete staging folder to `target`, or move its files into an existing `target` one by one."""
    if not target.exists():
        os.replace(staging, target)
        return
    for source in sorted(staging.iterdir()):
        os.replace(source, target / source.name)


class LiteWhisperEncoder(LiteWhisperPreTrainedModel, WhisperEncoder):
    """Whisper's encoder with `LowRankLinear` in the slots that `config.low_rank_config` names."""

    def __init__(self, config: LiteWhisperConfig):
        device = _build_stock_layout_on_meta(super().__init__, config)
        for layer_index, layer in enumerate(self.layers):
            with torch.device("meta"):  # same constructor call as WhisperEncoderLayer's; never allocated
                layer.self_attn = LiteWhisperAttention(
                    embed_dim=config.d_model, num_heads=config.encoder_attention_heads,
                    dropout=config.attention_dropout, config=config,
                )
            for slot, rank in config.layer_ranks(layer_index).items():
                owner = layer.self_attn if slot in ATTENTION_SLOTS else layer
                dense = getattr(owner, slot)
                setattr(owner, slot, LowRankLinear(dense.in_features, dense.out_features, rank, device="meta"))
        _materialize(self, device)
        self.register_load_state_dict_post_hook(lambda encoder, _: encoder.refresh_inference_layout())

    def refresh_inference_layout(self) -> None:
        """Rebuild every layer's attention layout after the slots chose merged or factored (see LowRankLinear)."""
        for layer in self.layers:
            layer.self_attn.refresh_inference_layout()


class LiteWhisperModel(LiteWhisperPreTrainedModel, WhisperModel):
    """The bare LiteWhisper encoder-decoder (no language-model head), like `WhisperModel`."""

    def __init__(self, config: LiteWhisperConfig):
        device = _build_stock_layout_on_meta(super().__init__, config)
        with torch.device(device):
            self.encoder = LiteWhisperEncoder(config)
        _materialize(self, device)


class LiteWhisperForConditionalGeneration(LiteWhisperPreTrainedModel, WhisperForConditionalGeneration):
    """LiteWhisper with the language-model head, like `WhisperForConditionalGeneration`: use it for ASR."""

    def __init__(self, config: LiteWhisperConfig):
        device = _build_stock_layout_on_meta(super().__init__, config)
        with torch.device(device):
            self.model = LiteWhisperModel(config)
        _materialize(self, device)
