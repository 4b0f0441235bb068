"""Fisher sensitivity: every encoder linear's cost curve over ranks from one forward and one backward pass.

The probe in `sensitivity.py` factors one linear at a time and runs the whole model again: one pass of the probe
clips per linear (36 for base, 192 for large-v3). This module estimates the same quantity, the mean KL(stock ‖ M)
per transcript token that cutting slot s to rank r causes, from a single pass, to second order.

Slot s has outputs Y [positions, d] on a probe clip, calibration mean μ and principal directions V (columns by
descending eigenvalue, `decomposition.Spectrum`). Factoring it at rank r changes its output by

    δ_r = −(Y − μ) V_{>r} V_{>r}ᵀ                          (decomposition: ŷ = μ + (y − μ) V_r V_rᵀ)

at every position the decoder reads, padding included (the calibration `frames` setting only chooses which rows
fitted μ and V). Let z_t be the decoder's logits at transcript position t (teacher-forced on the stock model's
greedy transcript, as the probe does) and p_t = softmax(z_t). To second order

    KL_t(stock ‖ M) ≈ ½ Δz_tᵀ F_t Δz_t,   F_t = diag(p_t) − p_t p_tᵀ,   Δz_t = J_t δ_r

(the Fisher of a softmax in logit space; J_t is the Jacobian of z_t with respect to Y). Draw u_t ~ N(0, F_t)
independently per position (u_t = √p_t ⊙ ε − p_t (√p_t · ε), ε ~ N(0, I)) and backpropagate the scalar
Σ_t ⟨u_t, z_t⟩ once: the gradient at slot s is G = Σ_t J_tᵀ u_t, and since the u_t are independent with mean 0,

    E[⟨G, δ_r⟩²] = Σ_t Δz_tᵀ F_t Δz_t = 2 Σ_t KL_t.

One backward gives ⟨G, δ_r⟩ for every rank at once: with A = G V and B = (Y − μ) V [positions, k],
c_j = Σ_positions A_j B_j and ⟨G, δ_r⟩ = −(⟨G, Y − μ⟩ − Σ_{j≤r} c_j). So

    est_KL_s(r) = ½ · Σ_clips mean_samples ⟨G, δ_r⟩² / transcript tokens

for r = 1..k (k: the eigenvectors kept, up to the largest rank that saves parameters). This is the Monte-Carlo
("true") Fisher, not the empirical Fisher of the greedy labels: the greedy token of a confident position has a
near-zero gradient, so the empirical Fisher would under-weight exactly the positions where the stock model is
sure and a cut can hurt. Each sample is one backward pass; `samples` > 1 averages several on the same forward.

Parameters get no gradients (only the inputs do, from the first encoder layer up: the convolutions below need
none), so the backward costs about one forward. On a float32 model `compress` runs the forward, the backward and
the projections on V under bfloat16 autocast where the device computes bfloat16 natively
(`precision.autocast_dtype_for`: CUDA, or a CPU with AVX-512 BF16 or AMX), and transcribes the probe clips with a
copy of the model cast to bfloat16 (`sensitivity.probe_set`): on real base (24 clips, this project's CPU) 0.55× the
float32 time, the 24 sensitivities' rank correlation with float32's 0.993, each within 25 %. The sums over
positions and ranks stay float32/float64: ⟨G, δ_r⟩ is a difference of two nearly equal sums at high ranks.
Activations the autograd graph keeps are referenced, not copied; B is cached per slot across samples when there
are several. Clips run in batches small enough for the activations autograd keeps (`batch_size_for`: 4 clips for
tiny to small, 1 for large-v3).

Results: `curves[slot]` [k] float64, the estimated KL per token at each rank (what `ranks.ranks_for_budget`
spends the budget on), and `sensitivity[slot]` = est_KL(probe rank) / discarded variance, the probe's scalar,
for comparison and for code that reads only the scalar.
"""

from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import torch

from configuration_lite_whisper import slot_shape

from .calibration import SlotKey, encoder_linear, encoder_of
from .decomposition import Spectrum
from .precision import autocast_to
from .sensitivity import DEFAULT_LEVEL, ProbeSet, probe_rank

DEFAULT_SAMPLES = 1  # Gaussian probe vectors per clip (one backward pass each)
MAX_BATCH = 4  # clips per forward/backward at most
ACTIVATION_BUDGET_BYTES = 4e9  # what the autograd graph of one batch may hold (see batch_size_for)


def batch_size_for(config, dtype: torch.dtype = torch.float32, budget: float = ACTIVATION_BUDGET_BYTES) -> int:
    """Clips per forward/backward so that the encoder activations autograd keeps stay within `budget`: about
    (8·d_model + 2·ffn) values per position and layer (4 for tiny to base, 1 for large-v3 in float32)."""
    per_clip = (config.encoder_layers * config.max_source_positions
                * (8 * config.d_model + 2 * config.encoder_ffn_dim) * torch.finfo(dtype).bits // 8)
    return int(max(1, min(MAX_BATCH, budget // per_clip)))


def fisher_probe_vectors(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """u ~ N(0, diag(p) − p pᵀ) per row of `logits` [n, vocab] (p = softmax), float32, detached."""
    probabilities = torch.softmax(logits.detach().float(), dim=-1)  # [n, vocab]
    root = probabilities.sqrt()
    noise = torch.randn(probabilities.shape, generator=generator, dtype=torch.float32).to(logits.device)
    scaled = root * noise  # [n, vocab]
    return scaled - probabilities * scaled.sum(dim=-1, keepdim=True)


class _SlotState:
    """What one slot needs across the backward passes of one batch."""

    def __init__(self, spectrum: Spectrum, device, keep_projection: bool, projection_dtype: torch.dtype):
        self.device_type = torch.device(device).type
        self.mean = spectrum.mean.to(device=device, dtype=torch.float32)  # [d]
        self.basis = spectrum.eigenvectors.to(device=device, dtype=projection_dtype)  # [d, k]
        self.output: Optional[torch.Tensor] = None  # Y [b, positions, d], referenced (autograd keeps it anyway)
        self.centred_projection: Optional[torch.Tensor] = None  # B = (Y − μ) V [b, positions, k]
        self.keep_projection = keep_projection  # cache B for the next sample's backward pass
        self.squares = torch.zeros(spectrum.eigenvectors.shape[1], dtype=torch.float64)  # Σ ⟨G, δ_r⟩², r = 1..k

    def add_gradient(self, gradient: torch.Tensor) -> None:
        """Accumulate ⟨G, δ_r⟩² for every rank r from G = ∂(Σ u·z)/∂Y [b, positions, d]: the projections on the
        basis in its dtype, the sums in float32 and float64."""
        with torch.autocast(self.device_type, enabled=False):
            self._add_gradient(gradient.float())

    def _add_gradient(self, gradient: torch.Tensor) -> None:
        centred = self.output.detach().float() - self.mean  # [b, positions, d]
        projection = self.centred_projection
        if projection is None:
            projection = (centred.to(self.basis.dtype) @ self.basis).float()  # [b, positions, k]
        if self.keep_projection:
            self.centred_projection = projection
        total = (gradient * centred).sum(dim=(1, 2)).double()  # [b]: ⟨G, Y − μ⟩
        del centred
        components = ((gradient.to(self.basis.dtype) @ self.basis).float() * projection).sum(dim=1).double()  # [b, k]
        tail = total[:, None] - components.cumsum(dim=1)  # [b, k]: −⟨G, δ_r⟩ at r = 1..k
        self.squares += tail.pow(2).sum(dim=0).cpu()

    def end_batch(self) -> None:
        self.output, self.centred_projection = None, None


@contextmanager
def _gradients_to_inputs_only(model):
    """No parameter gradients (the backward computes only what flows to the slot outputs)."""
    flags = [parameter.requires_grad for parameter in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)


def estimate_fisher(
    model,
    probes: ProbeSet,
    spectra_by_slot: Dict[SlotKey, Spectrum],
    samples: int = DEFAULT_SAMPLES,
    batch_size: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
    processes=None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> Tuple[Dict[SlotKey, torch.Tensor], int]:
    """(Σ over clips and samples of ⟨G, δ_r⟩² per slot [k] float64, transcript tokens), summed over processes.

    `probes` needs decoder ids and mask only (no reference log-probs). `batch_size`: clips per pass (default:
    `batch_size_for` the model). `autocast_dtype`: run the forward and backward under autocast to it (e.g.
    `precision.autocast_dtype_for` the model's device and dtype); None: in the model's dtype. See the module docstring."""
    from tqdm.auto import tqdm

    if samples < 1:
        raise ValueError(f"the Fisher estimate needs at least one sample per clip, got {samples}")
    encoder = encoder_of(model)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    batch_size = batch_size or batch_size_for(model.config, dtype)
    states = {key: _SlotState(spectrum_, device, keep_projection=samples > 1, projection_dtype=autocast_dtype or torch.float32)
              for key, spectrum_ in spectra_by_slot.items()}

    def capture(state):
        def hook(module, inputs, output):  # output: [b, positions, d]
            state.output = output
            output.register_hook(state.add_gradient)

        return hook

    def gradients_stop_at_the_first_layer(module, args):  # nothing below it needs them: skip the convolutions
        return (args[0].detach().requires_grad_(True),) + tuple(args[1:])

    handles = [encoder_linear(encoder, *key).register_forward_hook(capture(state)) for key, state in states.items()]
    handles.append(encoder.layers[0].register_forward_pre_hook(gradients_stop_at_the_first_layer))
    generator = torch.Generator().manual_seed(seed + (processes.index if processes is not None else 0))
    clips = probes.decoder_ids.shape[0]
    bar = tqdm(total=clips, desc="sensitivity (Fisher)", unit="clip", disable=not progress)
    try:
        with _gradients_to_inputs_only(model), torch.enable_grad():
            for start in range(0, clips, batch_size):
                stop = start + batch_size
                features = probes.features[start:stop].to(device=device, dtype=dtype)
                ids = probes.decoder_ids[start:stop, :-1].to(device)
                mask = probes.mask[start:stop].to(device)
                with autocast_to(device, autocast_dtype):
                    logits = model(input_features=features, decoder_input_ids=ids).logits[mask]  # [tokens, vocab]
                for sample in range(samples):
                    directions = fisher_probe_vectors(logits, generator)
                    (logits.float() * directions).sum().backward(retain_graph=sample + 1 < samples)
                del logits
                for state in states.values():
                    state.end_batch()
                bar.update(stop - start if stop <= clips else clips - start)
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    keys = list(states)
    sums = torch.cat([states[key].squares for key in keys] + [torch.tensor([float(probes.tokens)], dtype=torch.float64)])
    if processes is not None and processes.count > 1:
        sums = processes.sum(sums)
    tokens = int(sums[-1])
    result, offset = {}, 0
    for key in keys:
        length = states[key].squares.numel()
        result[key] = sums[offset : offset + length] / samples
        offset += length
    return result, tokens


def fisher_sensitivity(
    model,
    probes: ProbeSet,
    spectra_by_slot: Dict[SlotKey, Spectrum],
    level: float = DEFAULT_LEVEL,
    samples: int = DEFAULT_SAMPLES,
    batch_size: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
    processes=None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> Tuple[Dict[SlotKey, float], Dict[SlotKey, torch.Tensor]]:
    """(sensitivity[slot], curves[slot]): the estimated KL per transcript token at every rank 1..k of each slot
    (`curves`, float64), and that estimate at the probe's rank divided by the variance discarded there
    (`sensitivity`, the scalar `sensitivity.measure_sensitivity` gives; 0 for slots no rank can shrink)."""
    squares, tokens = estimate_fisher(model, probes, spectra_by_slot, samples, batch_size, seed, progress, processes,
                                      autocast_dtype)
    config = model.config
    sensitivity, curves = {}, {}
    for key, spectrum_ in spectra_by_slot.items():
        curve = 0.5 * squares[key] / max(tokens, 1)  # [k]: estimated KL per token at rank r = index + 1
        curves[key] = curve
        rank = probe_rank(spectrum_.explained_variance, level, *slot_shape(config, key[1]))
        discarded = 1.0 - float(spectrum_.explained_variance[rank - 1]) if rank is not None else 0.0
        sensitivity[key] = float(curve[rank - 1]) / discarded if rank is not None and discarded > 0 else 0.0
    return sensitivity, curves
