"""Decomposition: principal directions of each linear's outputs, and the low-rank layers built from them.

For one linear y = x Wᵀ + b with calibration sums (count n, Σy, Σyyᵀ):

    μ = Σy / n                                  mean output [out]
    C = Σyyᵀ / n − μ μᵀ                         centred covariance [out, out]
    C = V diag(λ) Vᵀ, λ descending              eigendecomposition (float64)
    explained_variance[k − 1] = Σ_{i<k} λ_i / Σ λ_i

and, for rank k with V_k the top-k eigenvectors [out, k]:

    weight1 = Wᵀ V_k [in, k],  weight2 = V_kᵀ [k, out],  bias = μ + (b − μ) V_k V_kᵀ   (b = 0 for k_proj)

i.e. y ≈ μ + (y − μ) V_k V_kᵀ: the output is projected onto its top principal subspace around its mean
(`LowRankLinear.from_linear`). This is the rank-k map with the least mean squared output error on the
calibration data. At full rank V is orthonormal and the layer is reproduced exactly.

`decompose` turns a stock Whisper plus a `low_rank_config` into a LiteWhisper in memory. It is the hand-off
point of the pipeline: a recovery step (fine-tuning the factors) takes this model and gives one back to
`export`.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from configuration_lite_whisper import ATTENTION_SLOTS, LiteWhisperConfig, slot_shape
from modeling_lite_whisper import LiteWhisperForConditionalGeneration, LowRankLinear

from .calibration import CalibrationError, SlotKey, SlotStats, Stats, encoder_of, encoder_linear

# Keys of a WhisperConfig dict that describe a saved artefact rather than the model, and must not be copied.
_CONFIG_KEYS_NOT_COPIED = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


@dataclass
class Spectrum:
    """Principal directions of one linear's outputs."""

    mean: torch.Tensor  # [out] float64
    eigenvalues: torch.Tensor  # [out] float64, descending, clamped at 0
    eigenvectors: torch.Tensor  # [out, out] float64, column j is the j-th principal direction

    @property
    def explained_variance(self) -> torch.Tensor:
        """[out]: entry k-1 is the fraction of the output variance kept by the top-k directions."""
        total = self.eigenvalues.sum()
        if total <= 0:  # a constant output: any rank keeps all of its (zero) variance
            return torch.ones_like(self.eigenvalues)
        return (torch.cumsum(self.eigenvalues, dim=0) / total).clamp(max=1.0)

    def basis(self, rank: int) -> torch.Tensor:
        """The top-`rank` principal directions V_k, [out, rank]."""
        return self.eigenvectors[:, :rank]


def useful_rank_limit(in_features: int, out_features: int) -> int:
    """The largest rank whose factors are smaller than the dense weight: k·(in + out) < in·out."""
    return min((in_features * out_features - 1) // (in_features + out_features), min(in_features, out_features) - 1)


def spectrum(sums: SlotStats, keep: Optional[int] = None, device=None) -> Spectrum:
    """Mean, eigenvalues and eigenvectors of the centred covariance of one slot's outputs.

    `keep`: how many leading eigenvectors to keep (default all; every eigenvalue is always kept for the
    explained-variance curve). `device`: where to run the eigendecomposition (e.g. "cuda"; default CPU).
    """
    if sums.count < 2:
        raise CalibrationError(f"a covariance needs at least 2 output rows, got {sums.count}")
    mean = sums.total / sums.count  # [out]
    covariance = sums.outer.to(device) / sums.count - torch.outer(mean, mean).to(device)  # [out, out]
    covariance = (covariance + covariance.T) / 2
    if not torch.isfinite(covariance).all():
        raise CalibrationError("the calibration sums are not finite")
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    del covariance
    eigenvalues = eigenvalues.flip(0).clamp(min=0.0).cpu()
    eigenvectors = eigenvectors.flip(1)[:, :keep].cpu()
    # A fixed sign per direction (its largest entry positive) so the factors do not depend on the LAPACK build.
    largest = eigenvectors.abs().argmax(dim=0)  # [keep]
    signs = torch.sign(eigenvectors[largest, torch.arange(eigenvectors.shape[1])])
    signs[signs == 0] = 1.0
    return Spectrum(mean=mean, eigenvalues=eigenvalues, eigenvectors=(eigenvectors * signs).contiguous())


def spectra(stats: Stats, config=None, device=None, progress: bool = False) -> Dict[SlotKey, Spectrum]:
    """`spectrum` of every slot in `stats`, in the order of `stats.slots`.

    With the model's `config`, each keeps only the eigenvectors up to `useful_rank_limit` (no rank beyond it is
    ever chosen): for large-v3 that is 2.4 GB of float64 instead of 8.8 GB.
    """
    from tqdm.auto import tqdm

    result = {}
    for key, sums in tqdm(stats.slots.items(), desc="eigendecomposition", unit="linear", disable=not progress):
        keep = useful_rank_limit(*slot_shape(config, key[1])) if config is not None else None
        result[key] = spectrum(sums, keep=keep, device=device)
    return result


def attach_explained_variance(stats: Stats, spectra_by_slot: Dict[SlotKey, Spectrum]) -> Stats:
    """Record each slot's explained-variance curve in `stats` (they are saved with it)."""
    stats.explained_variance = {key: value.explained_variance for key, value in spectra_by_slot.items()}
    return stats


def low_rank_linear(linear: torch.nn.Linear, spectrum_: Spectrum, rank: int, dtype: Optional[torch.dtype] = None) -> LowRankLinear:
    """The LiteASR factors of one dense layer at `rank`, computed in float64 and cast to `dtype`
    (default: the layer's dtype)."""
    out_features = linear.out_features
    if not 0 < rank <= spectrum_.eigenvectors.shape[1]:
        raise ValueError(f"rank {rank} is outside 1..{spectrum_.eigenvectors.shape[1]} (the directions kept)")
    exact = torch.nn.Linear(linear.in_features, out_features, bias=linear.bias is not None, dtype=torch.float64)
    with torch.no_grad():
        exact.weight.copy_(linear.weight)
        if linear.bias is not None:
            exact.bias.copy_(linear.bias)
    factors = LowRankLinear.from_linear(exact, spectrum_.basis(rank), spectrum_.mean)
    return factors.to(device=linear.weight.device, dtype=dtype or linear.weight.dtype)


def lite_config(base_config, low_rank_config: List[dict]) -> LiteWhisperConfig:
    """A LiteWhisperConfig: every field of the base WhisperConfig plus the ranks."""
    fields = {key: value for key, value in base_config.to_dict().items() if key not in _CONFIG_KEYS_NOT_COPIED}
    config = LiteWhisperConfig(low_rank_config=low_rank_config, **fields)
    config.architectures = ["LiteWhisperForConditionalGeneration"]
    return config


def decompose(
    model, spectra_by_slot: Dict[SlotKey, Spectrum], low_rank_config: List[dict], progress: bool = False
) -> LiteWhisperForConditionalGeneration:
    """A LiteWhisper built from a stock Whisper `model`: its slots named in `low_rank_config` factored with
    `spectra_by_slot`, every other tensor shared with `model` (not copied; do not modify `model` afterwards)."""
    from tqdm.auto import tqdm

    config = lite_config(model.config, low_rank_config)
    encoder = encoder_of(model)
    state = dict(model.state_dict())
    replaced = [(layer_index, slot, rank) for layer_index, ranks in enumerate(low_rank_config) for slot, rank in ranks.items()]
    for layer_index, slot, rank in tqdm(replaced, desc="decomposition", unit="linear", disable=not progress):
        if (layer_index, slot) not in spectra_by_slot:
            raise CalibrationError(f"no statistics for encoder layer {layer_index} {slot}")
        factors = low_rank_linear(encoder_linear(encoder, layer_index, slot), spectra_by_slot[(layer_index, slot)], rank)
        prefix = f"model.encoder.layers.{layer_index}." + ("self_attn." if slot in ATTENTION_SLOTS else "")
        state.pop(prefix + slot + ".weight")
        state.pop(prefix + slot + ".bias", None)
        for name, tensor in factors.state_dict().items():
            state[prefix + slot + "." + name] = tensor
    with torch.device("meta"):
        lite = LiteWhisperForConditionalGeneration(config)
    if config.tie_word_embeddings:  # proj_out shares the decoder's embedding: tied again below
        state.pop("proj_out.weight", None)
    result = lite.load_state_dict(state, strict=False, assign=True)
    missing = set(result.missing_keys) - ({"proj_out.weight"} if config.tie_word_embeddings else set())
    if missing or result.unexpected_keys:
        raise RuntimeError(f"decompose: missing {sorted(missing)[:5]}, unexpected {result.unexpected_keys[:5]}")
    if config.tie_word_embeddings:
        lite.tie_weights()
    left_on_meta = [name for name, tensor in list(lite.named_parameters()) + list(lite.named_buffers()) if tensor.is_meta]
    if left_on_meta:
        raise RuntimeError(f"decompose left tensors without storage: {left_on_meta[:5]}")
    lite.generation_config = model.generation_config
    return lite.eval()
