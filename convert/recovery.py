"""Recovery: make a decomposed encoder reproduce the stock encoder again, without transcripts.

LiteASR's factorisation fits each linear on its own: it minimises that layer's output error on the stock
model's activations. In the compressed model every layer sees inputs already disturbed by the layers below,
and the errors compound; below ~0.85x encoder parameters greedy decoding falls into repetition loops. Recovery
fixes the compressed encoder against the stock one on (unlabelled) calibration audio, in two stages:

1. **Least-squares refit** (closed form, `refit_least_squares`). Layer by layer, and within a layer in the
   order the data flows (q/k/v, out_proj, fc1, fc2), each factored linear keeps its first factor W1 and gets
   a new second factor and bias

       [W2; b] = argmin Σ ‖ (x_c W1) W2 + b − y_s ‖²    (ridge-regularised, float64)

   where x_c is the input that linear actually receives in the compressed model (with everything before it
   already refitted) and y_s is the stock linear's output on the stock model's own activations. The hidden
   states entering the current layer are cached for both models (memory: 2 · clips · positions · d_model
   float32, e.g. 32 clips of tiny = 0.15 GB), so each layer is run a few times, not the whole encoder, and each
   run stops once the stage's linears have run (`_Capture.run`).

2. **Distillation** (`distill`): AdamW with linear warm-up and cosine decay trains the low-rank factors and
   biases (and optionally the encoder's layer norms) to match the stock encoder's final hidden states
   (plus, with a weight, every layer's output), on full 30 s windows (the decoder cross-attends to every encoder
   position, padding included); float32 parameters and optimiser, the steps' forward and backward under bfloat16
   autocast where `settings.autocast_dtype` asks for it. The stock encoder's outputs on the training and held-out clips
   are computed once and kept (`StockTargets`: 2.3 MB per clip for tiny, 7.7 MB for large-v3, up to
   TARGET_CACHE_BYTES; beyond that they are computed at each step); `compress` hands over the ones its calibration
   pass computed on the same clips, so no stock pass runs here at all. A held-out slice of the calibration clips
   is scored every `eval_every` steps and the best state is kept (early stopping). Under `accelerate launch`
   each process takes its shard of the training clips and gradients are all-reduced (accelerate's DDP); the
   held-out loss is summed across processes, so every process keeps the same best state.

`recover` runs both and returns a `RecoveryReport` (held-out relative error of the final hidden states before,
after the refit and after distillation; steps; seconds). `steps=0` with `refit=False` is the paper's recipe.

Loss: mean squared error of the final hidden states divided by their mean square ("relative MSE"), so the
figure is comparable across model sizes.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from configuration_lite_whisper import ATTENTION_SLOTS
from modeling_lite_whisper import LowRankLinear, set_inference_layout

from .calibration import encoder_of, encoder_stem, run_layer
from .precision import autocast_to

# Distillation keeps the stock encoder's outputs on its clips up to this size (StockTargets).
TARGET_CACHE_BYTES = 2e9
# Within one encoder layer, the order in which data reaches the factored linears.
REFIT_STAGES = (("q_proj", "k_proj", "v_proj"), ("out_proj",), ("fc1",), ("fc2",))


class RecoveryError(ValueError):
    """Recovery cannot run with these settings or data."""


@dataclass
class RecoverySettings:
    """How to recover a decomposed encoder. Defaults were measured on tiny.en and base (see
    benchmarks/recovery_frontier.py)."""

    steps: int = 0  # distillation optimiser steps; 0: no distillation
    refit: bool = True  # least-squares refit of W2 and bias first (cheap, closed form)
    # clips the refit uses (bounds its cache: 2 · clips · positions · d_model floats). 32: on tiny.en balanced the
    # held-out error after the refit was 0.00640 against 0.00626 with 64 clips, after distillation 0.00519 against
    # 0.00514, greedy WER 14.59 % against 15.12 %, for half the refit's time.
    refit_clips: int = 32
    ridge: float = 1e-4  # ridge of the refit, relative to the mean eigenvalue of the input covariance
    holdout: int = 32  # calibration clips held out for early stopping (the last ones)
    batch_size: int = 4  # clips per optimiser step (per process)
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    train_layer_norms: bool = True
    layer_loss_weight: float = 0.0  # weight of every layer's output error next to the final hidden states'
    eval_every: int = 50  # held-out checks (each a float32 pass of the held-out clips; 100 steps: at 50 and 100)
    seed: int = 0
    # dtype the training steps' forward and backward run in under autocast ("bfloat16"; None: float32). The
    # factors, the optimiser and the held-out checks stay float32. compress asks for bfloat16 where the device
    # computes it natively (precision.autocast_dtype_for).
    autocast_dtype: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RecoveryReport:
    """What recovery did: relative MSE of the final hidden states on the held-out clips at each stage."""

    settings: dict
    train_clips: int
    holdout_clips: int
    holdout_error_before: Optional[float] = None
    holdout_error_after_refit: Optional[float] = None
    holdout_error_after: Optional[float] = None
    refit_reverted: bool = False  # the refit raised the held-out error and was undone
    best_step: int = 0
    steps_run: int = 0
    refit_seconds: float = 0.0
    distill_seconds: float = 0.0
    targets_kept: bool = False  # distillation kept the stock encoder's outputs instead of recomputing them per step
    targets_from_calibration: bool = False  # those outputs came from the calibration pass (no stock pass here)
    history: List[dict] = field(default_factory=list)  # {"step", "train_loss", "holdout_error"}

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------- plumbing


def log_mel_features(feature_extractor, utterances, batch_size: int = 16) -> torch.Tensor:
    """[clips, mels, frames] float32 log-mel windows (30 s, padded as Whisper pads them)."""
    utterances = list(utterances)
    if not utterances:
        return torch.zeros(0)
    chunks = []
    for start in range(0, len(utterances), batch_size):
        batch = utterances[start : start + batch_size]
        inputs = feature_extractor(
            [utterance.audio for utterance in batch], sampling_rate=feature_extractor.sampling_rate, return_tensors="pt"
        )
        chunks.append(inputs.input_features.to(torch.float32))
    return torch.cat(chunks)


def encode(encoder, features: torch.Tensor, layer_outputs: bool = False):
    """Final hidden states [b, positions, d] (the same computation as WhisperEncoder.forward), and with
    `layer_outputs` the list of every layer's output too."""
    hidden = encoder_stem(encoder, features)
    outputs = []
    for layer in encoder.layers:
        hidden = run_layer(layer, hidden)
        if layer_outputs:
            outputs.append(hidden)
    final = encoder.layer_norm(hidden)
    return (final, outputs) if layer_outputs else final


def _slot_module(layer, slot: str) -> nn.Module:
    return getattr(layer.self_attn if slot in ATTENTION_SLOTS else layer, slot)


def _relative_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).pow(2).mean() / target.pow(2).mean().clamp(min=1e-12)


def _chunks(tensor: torch.Tensor, size: int):
    for start in range(0, tensor.shape[0], size):
        yield tensor[start : start + size]


# --------------------------------------------------------------------------------------------- least squares


class _LayerStop(Exception):
    """Raised by a _Capture once it holds every value it waits for: the rest of the layer need not run."""


class _Capture:
    """Forward hooks recording the input (lite) or output (stock) of some linears for one chunk; the layer run
    stops (_LayerStop) as soon as all are recorded: the q/k/v stage needs only the layer's first linears, the
    out_proj stage the attention, and so on."""

    def __init__(self, modules: Dict[str, nn.Module], what: str):
        self.values: Dict[str, torch.Tensor] = {}
        self.handles = []
        for slot, module in modules.items():
            if what == "input":
                hook = lambda module, args, slot=slot: self._keep(slot, args[0])
                self.handles.append(module.register_forward_pre_hook(hook))
            else:
                hook = lambda module, args, output, slot=slot: self._keep(slot, output)
                self.handles.append(module.register_forward_hook(hook))
        self.wanted = len(modules)

    def _keep(self, slot: str, value: torch.Tensor) -> None:
        self.values[slot] = value.detach()
        if len(self.values) == self.wanted:
            raise _LayerStop

    def run(self, layer, hidden: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run `layer` on `hidden` [b, positions, d] until every value is recorded; returns them."""
        try:
            run_layer(layer, hidden)
        except _LayerStop:
            pass
        return self.values

    def close(self):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def refit_least_squares(
    lite, stock, features: torch.Tensor, ridge: float = 1e-4, chunk_size: int = 8, progress: bool = False,
    all_reduce=None,
) -> None:
    """Refit, in place, the second factor and bias of every factored encoder linear of `lite` by least squares
    on the inputs the compressed model actually produces, against the stock linear's outputs (see the module
    docstring). `features`: [clips, mels, frames]. `all_reduce(tensor)` sums the normal equations across
    processes (data parallelism); omit it in one process. The factored linears run unmerged during the refit
    and get their inference layout back at the end."""
    from tqdm.auto import tqdm

    lite_encoder, stock_encoder = encoder_of(lite), encoder_of(stock)
    # run the factors themselves (no merged weights, per-head attention): the refit edits the factors that later
    # stages run through, and captures each slot's input
    set_inference_layout(lite_encoder, False)
    parameter = next(lite_encoder.parameters())
    dtype, device = parameter.dtype, parameter.device
    lite_hidden = torch.cat([encoder_stem(lite_encoder, chunk.to(device, dtype)) for chunk in _chunks(features, chunk_size)])
    stock_hidden = torch.cat([encoder_stem(stock_encoder, chunk.to(device, dtype)) for chunk in _chunks(features, chunk_size)])
    work = [(index, stage) for index in range(len(lite_encoder.layers)) for stage in REFIT_STAGES]
    bar = tqdm(total=len(work), desc="least-squares refit", unit="stage", disable=not progress)
    for layer_index, (lite_layer, stock_layer) in enumerate(zip(lite_encoder.layers, stock_encoder.layers)):
        for stage in REFIT_STAGES:
            slots = [slot for slot in stage if isinstance(_slot_module(lite_layer, slot), LowRankLinear)]
            if slots:
                _refit_stage(lite_layer, stock_layer, slots, lite_hidden, stock_hidden, ridge, chunk_size, all_reduce)
            bar.update(1)
        lite_hidden = torch.cat([run_layer(lite_layer, chunk) for chunk in _chunks(lite_hidden, chunk_size)])
        stock_hidden = torch.cat([run_layer(stock_layer, chunk) for chunk in _chunks(stock_hidden, chunk_size)])
    bar.close()
    set_inference_layout(lite_encoder, True)  # rebuilt from the refitted factors


def _refit_stage(lite_layer, stock_layer, slots, lite_hidden, stock_hidden, ridge, chunk_size, all_reduce) -> None:
    lite_modules = {slot: _slot_module(lite_layer, slot) for slot in slots}
    sums = {}
    for slot, module in lite_modules.items():
        rank, out = module.weight2.shape
        like = dict(dtype=torch.float64, device=module.weight2.device)
        sums[slot] = [torch.zeros(rank, rank, **like), torch.zeros(rank, **like), torch.zeros(rank, out, **like),
                      torch.zeros(out, **like)]
    count = torch.zeros(1, dtype=torch.float64)
    for lite_chunk, stock_chunk in zip(_chunks(lite_hidden, chunk_size), _chunks(stock_hidden, chunk_size)):
        inputs = _Capture(lite_modules, "input")
        outputs = _Capture({slot: _slot_module(stock_layer, slot) for slot in slots}, "output")
        try:
            inputs.run(lite_layer, lite_chunk)
            outputs.run(stock_layer, stock_chunk)
        finally:
            inputs.close()
            outputs.close()
        for slot, module in lite_modules.items():
            projected = (inputs.values[slot] @ module.weight1).reshape(-1, module.rank).double()  # [n, r]
            target = outputs.values[slot].reshape(projected.shape[0], -1).double()  # [n, out]
            gram, total, cross, target_total = sums[slot]
            gram.addmm_(projected.T, projected)
            total += projected.sum(0)
            cross.addmm_(projected.T, target)
            target_total += target.sum(0)
        count += lite_chunk.shape[0] * lite_chunk.shape[1]
    if all_reduce is not None:
        all_reduce(count)
        for tensors in sums.values():
            for tensor in tensors:
                all_reduce(tensor)
    n = float(count)
    for slot, module in lite_modules.items():
        gram, total, cross, target_total = sums[slot]
        mean_in, mean_out = total / n, target_total / n
        covariance = gram / n - torch.outer(mean_in, mean_in)
        cross_covariance = cross / n - torch.outer(mean_in, mean_out)
        scale = ridge * covariance.diagonal().mean().clamp(min=1e-12)
        covariance = covariance + scale * torch.eye(covariance.shape[0], dtype=torch.float64, device=covariance.device)
        weight2 = torch.linalg.solve(covariance, cross_covariance)  # [r, out]
        bias = mean_out - mean_in @ weight2
        module.weight2.copy_(weight2.to(module.weight2.dtype))
        module.bias.copy_(bias.to(module.bias.dtype))


# ---------------------------------------------------------------------------------------------- distillation


def trainable_parameters(lite, train_layer_norms: bool = True) -> Dict[str, nn.Parameter]:
    """The encoder parameters recovery trains: every LowRankLinear's factors and bias, and optionally the
    layer norms. Everything else stays as the stock model has it."""
    encoder = encoder_of(lite)
    chosen = {}
    for name, module in encoder.named_modules():
        if isinstance(module, LowRankLinear) or (train_layer_norms and isinstance(module, nn.LayerNorm)):
            for parameter_name, parameter in module.named_parameters(recurse=False):
                chosen[f"{name}.{parameter_name}"] = parameter
    return chosen


def stock_output_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of the stock encoder's final hidden states on one clip [positions, d]."""
    return config.max_source_positions * config.d_model * torch.finfo(dtype).bits // 8


class StockTargets:
    """The stock encoder's outputs on a set of clips, computed once and kept where they fit `budget` bytes, else
    computed again at each use (the old cost: one stock forward per clip per use).

    Distillation reads the final hidden states [positions, d] of 4 clips per step for 100 steps and every held-out
    clip at each check: kept, they cost one stock pass over the clips instead of about ten (tiny: 2.3 MB per clip,
    large-v3: 7.7 MB; with `layer_outputs`, every layer's output as well). `final` [clips, positions, d]: those
    outputs where another stage already computed them (compress keeps the calibration pass's): no stock pass at all."""

    def __init__(self, stock, features: torch.Tensor, layer_outputs: bool = False,
                 budget: Optional[float] = None, chunk_size: int = 8, final: Optional[torch.Tensor] = None):
        budget = TARGET_CACHE_BYTES if budget is None else budget
        self.encoder = encoder_of(stock)
        self.features, self.layer_outputs = features, layer_outputs
        parameter = next(self.encoder.parameters())
        config = stock.config
        per_clip = stock_output_bytes(config, parameter.dtype) * (1 + (config.encoder_layers if layer_outputs else 0))
        self.final: Optional[torch.Tensor] = None  # [clips, positions, d] when kept
        self.layers: Optional[List[torch.Tensor]] = None
        self.given = final is not None and not layer_outputs
        if self.given:
            if final.shape[0] != len(features):
                raise ValueError(f"{final.shape[0]} stock encoder outputs for {len(features)} clips")
            self.final, self.layers = final.to(parameter.device, parameter.dtype), []
        elif len(features) and len(features) * per_clip <= budget:
            finals, layers = [], []
            for chunk in _chunks(features, chunk_size):
                final, outputs = self._encode(chunk.to(parameter.device, parameter.dtype))
                finals.append(final)
                layers.append(outputs)
            self.final = torch.cat(finals)
            self.layers = [torch.cat(outputs) for outputs in zip(*layers)] if layer_outputs else []

    @torch.no_grad()
    def _encode(self, features: torch.Tensor):
        if self.layer_outputs:
            return encode(self.encoder, features, layer_outputs=True)
        return encode(self.encoder, features), []

    @property
    def kept(self) -> bool:
        return self.final is not None

    def __call__(self, indices) -> tuple:
        """(final hidden states, [every layer's output] or []) of clips `indices` (a list or a slice)."""
        if self.kept:
            return self.final[indices], [layer[indices] for layer in self.layers]
        parameter = next(self.encoder.parameters())
        return self._encode(self.features[indices].to(parameter.device, parameter.dtype))


@torch.no_grad()
def holdout_error(lite, stock, features: torch.Tensor, chunk_size: int = 8, processes=None,
                  targets: Optional[StockTargets] = None) -> float:
    """Relative MSE of the final hidden states on `features` (summed over processes when given); `targets`: the
    stock outputs on them, when already computed."""
    lite_encoder = encoder_of(lite)
    targets = targets or StockTargets(stock, features, budget=0)
    parameter = next(lite_encoder.parameters())
    sums = torch.zeros(2, dtype=torch.float64, device=parameter.device)
    for start in range(0, len(features), chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = features[rows].to(parameter.device, parameter.dtype)
        target, _ = targets(rows)
        prediction = encode(lite_encoder, chunk)
        sums[0] += (prediction - target).double().pow(2).sum()
        sums[1] += target.double().pow(2).sum()
    if processes is not None and processes.count > 1:
        sums = processes.sum(sums)
    sums = sums.cpu()
    return float(sums[0] / sums[1].clamp(min=1e-30))


class _Student(nn.Module):
    """The lite encoder as one module for DDP: features -> (final hidden states, layer outputs)."""

    def __init__(self, encoder, layer_outputs: bool):
        super().__init__()
        self.encoder = encoder
        self.layer_outputs = layer_outputs

    def forward(self, features):
        return encode(self.encoder, features, layer_outputs=self.layer_outputs)


def _learning_rate_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def distill(
    lite, stock, train_features: torch.Tensor, holdout_features: torch.Tensor, settings: RecoverySettings,
    processes=None, progress: bool = False, report: Optional[RecoveryReport] = None,
    holdout_targets: Optional[StockTargets] = None, train_outputs: Optional[torch.Tensor] = None,
) -> RecoveryReport:
    """Train the factors (and layer norms) of `lite`'s encoder to reproduce `stock`'s, in place; keep the state
    with the lowest held-out error. `train_features` / `holdout_features` are this process's shards;
    `holdout_targets` the stock outputs on the latter and `train_outputs` [clips, positions, d] those on the
    former, when already computed."""
    from tqdm.auto import tqdm

    report = report or RecoveryReport(settings.as_dict(), len(train_features), len(holdout_features))
    if settings.steps <= 0:
        return report
    if len(train_features) == 0:
        raise RecoveryError("distillation needs at least one training clip on every process")
    lite_encoder, stock_encoder = encoder_of(lite), encoder_of(stock)
    dtype = next(lite_encoder.parameters()).dtype
    if dtype != torch.float32:
        raise RecoveryError(f"recovery trains in float32; the compressed model is in {dtype}")
    multi = processes is not None and processes.count > 1
    chosen = trainable_parameters(lite, settings.train_layer_norms)
    with torch.no_grad():  # decompose shares the untouched tensors (layer norms) with the stock model: unshare
        for parameter in chosen.values():
            parameter.data = parameter.data.clone()
    frozen = []
    for parameter in lite_encoder.parameters():
        if parameter.requires_grad and not any(parameter is value for value in chosen.values()):
            parameter.requires_grad_(False)
            frozen.append(parameter)
    stock_flags = [parameter.requires_grad for parameter in stock_encoder.parameters()]
    for parameter in stock_encoder.parameters():
        parameter.requires_grad_(False)
    for parameter in chosen.values():
        parameter.requires_grad_(True)

    started = time.perf_counter()
    autocast_dtype = getattr(torch, settings.autocast_dtype) if settings.autocast_dtype else None
    generator = torch.Generator().manual_seed(settings.seed + (processes.index if processes is not None else 0))
    train_targets = StockTargets(stock, train_features, layer_outputs=settings.layer_loss_weight > 0,
                                 final=train_outputs)
    holdout_targets = holdout_targets or StockTargets(stock, holdout_features)
    report.targets_kept = train_targets.kept and (holdout_targets.kept or not len(holdout_features))
    report.targets_from_calibration = train_targets.given and (holdout_targets.given or not len(holdout_features))
    student = _Student(lite_encoder, settings.layer_loss_weight > 0)
    optimizer = torch.optim.AdamW(list(chosen.values()), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if multi:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=processes.device.type == "cpu")
        student, optimizer = accelerator.prepare(student, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, settings.warmup_steps, settings.steps)
    )
    set_inference_layout(lite_encoder, False)  # the held-out checks too must run the factors as trained so far
    lite_encoder.eval()  # no dropout
    best_error = report.holdout_error_after_refit if report.holdout_error_after_refit is not None else report.holdout_error_before
    if best_error is None and len(holdout_features):
        best_error = holdout_error(lite, stock, holdout_features, processes=processes, targets=holdout_targets)
    best_state = {name: parameter.detach().clone() for name, parameter in chosen.items()}
    order = torch.randperm(len(train_features), generator=generator)
    cursor = 0
    bar = tqdm(total=settings.steps, desc="recovery", unit="step", disable=not progress)
    try:
        for step in range(settings.steps):
            indices = []
            while len(indices) < settings.batch_size:
                if cursor == len(order):
                    order, cursor = torch.randperm(len(train_features), generator=generator), 0
                indices.append(int(order[cursor]))
                cursor += 1
            batch = train_features[indices].to(next(lite_encoder.parameters()).device, dtype)
            target, target_layers = train_targets(indices)
            with autocast_to(batch.device, autocast_dtype):
                output = student(batch)
            prediction, prediction_layers = output if isinstance(output, tuple) else (output, [])
            loss = _relative_error(prediction.float(), target)
            if settings.layer_loss_weight > 0:
                layer_loss = sum(_relative_error(p.float(), t) for p, t in zip(prediction_layers, target_layers))
                loss = loss + settings.layer_loss_weight * layer_loss / len(target_layers)
            optimizer.zero_grad(set_to_none=True)
            if multi:
                accelerator.backward(loss)
            else:
                loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            entry = {"step": step + 1, "train_loss": loss.item()}
            if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
                if len(holdout_features):
                    error = holdout_error(lite, stock, holdout_features, processes=processes, targets=holdout_targets)
                    entry["holdout_error"] = error
                    if best_error is None or error < best_error:
                        best_error, report.best_step = error, step + 1
                        best_state = {name: parameter.detach().clone() for name, parameter in chosen.items()}
                else:  # no held-out clips: keep the last state
                    report.best_step = step + 1
                    best_state = {name: parameter.detach().clone() for name, parameter in chosen.items()}
            report.history.append(entry)
            report.steps_run = step + 1
    finally:
        bar.close()
        with torch.no_grad():
            for name, parameter in chosen.items():
                parameter.copy_(best_state[name])
        for parameter in frozen:
            parameter.requires_grad_(True)
        for parameter, flag in zip(stock_encoder.parameters(), stock_flags):
            parameter.requires_grad_(flag)
        lite.eval()
        set_inference_layout(lite_encoder, True)  # rebuilt from the kept factors
    report.holdout_error_after = best_error
    report.distill_seconds = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------------------- entry point


def split_clips(utterances: Sequence, holdout: int) -> tuple:
    """(training clips, held-out clips): the last `holdout` clips are held out (kept below half the set)."""
    utterances = list(utterances)
    holdout = min(max(0, holdout), len(utterances) // 2)
    return utterances[: len(utterances) - holdout], utterances[len(utterances) - holdout :]


def recover(
    lite, stock, feature_extractor, utterances: Sequence, settings: Optional[RecoverySettings] = None,
    processes=None, progress: bool = True, stock_outputs: Optional[torch.Tensor] = None,
) -> RecoveryReport:
    """Recover `lite` (a decomposed LiteWhisper, float32) towards `stock` on unlabelled `utterances`, in place.

    `utterances`: the calibration clips (audio.Utterance; the same list on every process, e.g. the first N of
    the calibration source); the last `settings.holdout` are held out for early stopping, the rest train.
    Under data parallelism (`processes`, a distributed.Processes with count > 1) each process uses every
    count-th clip of each part. `stock_outputs` [clips, positions, d]: the stock encoder's final hidden states on
    `utterances` (this process's view of all of them), where the calibration pass kept them: distillation's
    targets then cost nothing. Returns a RecoveryReport; `lite` is left in eval mode.
    """
    settings = settings or RecoverySettings()
    torch.manual_seed(settings.seed)
    train, held_out = split_clips(utterances, settings.holdout)
    if stock_outputs is not None and stock_outputs.shape[0] != len(utterances):
        raise ValueError(f"{stock_outputs.shape[0]} stock encoder outputs for {len(utterances)} clips")
    index, count = processes.shard if processes is not None else (0, 1)
    train_features = log_mel_features(feature_extractor, train[index::count])
    holdout_features = log_mel_features(feature_extractor, held_out[index::count])
    train_outputs = holdout_outputs = None
    if stock_outputs is not None:
        train_outputs = stock_outputs[: len(train)][index::count]
        holdout_outputs = stock_outputs[len(train) :][index::count]
    report = RecoveryReport(settings.as_dict(), len(train), len(held_out))
    holdout_targets = StockTargets(stock, holdout_features, final=holdout_outputs)
    if len(held_out):
        report.holdout_error_before = holdout_error(lite, stock, holdout_features, processes=processes,
                                                    targets=holdout_targets)
    if settings.refit:
        started = time.perf_counter()
        refit_clips = train[: settings.refit_clips]
        refit_features = log_mel_features(feature_extractor, refit_clips[index::count])
        reduce_in_place = processes.sum_in_place if processes is not None and processes.count > 1 else None
        before_refit = {name: parameter.detach().clone() for name, parameter in trainable_parameters(lite).items()}
        refit_least_squares(lite, stock, refit_features, settings.ridge, progress=progress, all_reduce=reduce_in_place)
        del refit_features
        lite.eval()
        report.refit_seconds = time.perf_counter() - started
        if len(held_out):
            report.holdout_error_after_refit = holdout_error(lite, stock, holdout_features, processes=processes,
                                                             targets=holdout_targets)
            if report.holdout_error_after_refit > report.holdout_error_before:  # it made the output worse: undo
                with torch.no_grad():
                    for name, parameter in trainable_parameters(lite).items():
                        parameter.copy_(before_refit[name])
                lite.eval()
                report.refit_reverted = True
                report.holdout_error_after_refit = report.holdout_error_before
        del before_refit
    report.holdout_error_after = report.holdout_error_after_refit
    distill(lite, stock, train_features, holdout_features, settings, processes, progress, report, holdout_targets,
            train_outputs)
    if report.holdout_error_after is None and report.holdout_error_before is not None:
        report.holdout_error_after = report.holdout_error_before
    lite.eval()
    return report


# ------------------------------------------------------------------------------------------- pipeline defaults

RECOVERY_MODES = ("none", "refit", "distill")  # none: the paper's recipe; refit: closed form; distill: refit + steps
# What `compress` does when not told, per model family and preset: recovery only where it lowered WER against the
# paper's recipe beyond the test set's noise (in at least 90 % of paired bootstrap resamples of the utterances,
# benchmarks/paired_wer.py), else the recipe, which is also far cheaper. Measured with the sensitivity rank policy
# on real tiny.en and base, greedy WER increase over stock on librispeech-test-other-60 (~1,100 words),
# benchmarks/results/compress_presets_{tiny.en,base}[_refit|_distill].json:
#   tiny.en balanced: none +1.16, refit +1.07, refit + 200 distillation steps +0.36 (lower in 90 %) -> distill
#                     (now 100 steps under bfloat16 autocast: +0.62, lower in 80 %; DEFAULT_DISTILL_STEPS)
#   tiny.en fast:     none +0.18, refit -0.36 (lower in 68 %), distill +0.18                   -> none
#   base fast:        none +0.80, refit +1.60, distill +1.16                                     -> none
#   base balanced:    none +0.53; recovery not measured, and it lost at base fast               -> none
# acc stays the recipe (its sizes lose little). Families without real weights here (small, medium, large-v3,
# turbo) have no measurement, and distillation there costs hours on a CPU, so they keep the recipe.
PRESET_RECOVERY = {
    "tiny": {"acc": "none", "balanced": "distill", "fast": "none"},
    "base": {"acc": "none", "balanced": "none", "fast": "none"},
}
# 100 steps: on tiny.en balanced under bfloat16 autocast, 100 and 200 steps gave the same WER (15.66 %; float32 and
# 200 steps 15.39 %, paired +0.27 [-0.30, +0.99]: noise) at half the cost (recovery 212 s against 403 s).
DEFAULT_DISTILL_STEPS = 100


def resolve_recovery(preset: Optional[str] = None, mode: str = "auto", steps: Optional[int] = None,
                     family: Optional[str] = None, **overrides) -> Optional[RecoverySettings]:
    """The RecoverySettings `compress` runs (None: none, the paper's recipe).

    `mode` "auto" takes the default of the model `family` ("tiny", "base", ... as ranks.model_family names it)
    and preset (PRESET_RECOVERY; "none" without a preset or for a family not measured). `steps` (the CLI's
    --recover-steps): 0 means the paper's recipe, N > 0 distillation steps after the refit. Other keyword
    arguments override RecoverySettings fields (e.g. holdout, learning_rate, seed)."""
    if steps is not None and steps < 0:
        raise RecoveryError(f"recovery steps must be 0 or more, got {steps}")
    if mode not in RECOVERY_MODES + ("auto",):
        raise RecoveryError(f"recovery mode must be one of auto, {', '.join(RECOVERY_MODES)}; got {mode!r}")
    if mode == "auto":
        if steps is not None:
            mode = "distill" if steps > 0 else "none"
        else:
            mode = PRESET_RECOVERY.get(family, {}).get(preset, "none")
    if mode == "none":
        return None
    if mode == "refit":
        return RecoverySettings(steps=0, refit=True, **overrides)
    return RecoverySettings(steps=steps if steps else DEFAULT_DISTILL_STEPS, refit=True, **overrides)


def recovery_recipe(report: Optional[RecoveryReport], calibration: str = "") -> dict:
    """What a repo's README and compression_recipe.json record about recovery ({"method": "none"} without it)."""
    if report is None:
        return {"method": "none", "note": "LiteASR recipe only (no recovery)"}
    settings = report.settings
    method = "least-squares refit" + (f" + {report.steps_run} distillation steps" if report.steps_run else "")
    return {
        "method": method,
        "calibration": calibration,
        "train_clips": report.train_clips,
        "holdout_clips": report.holdout_clips,
        "refit_clips": min(settings["refit_clips"], report.train_clips) if settings["refit"] else 0,
        "distillation_steps": report.steps_run,
        "best_step": report.best_step,
        "holdout_relative_error": {
            "before": report.holdout_error_before,
            "after_refit": report.holdout_error_after_refit,
            "after": report.holdout_error_after,
        },
        "refit_reverted": report.refit_reverted,
        # where distillation's targets came from: kept from the calibration pass (no stock pass), or a stock pass
        "stock_outputs": "calibration pass" if report.targets_from_calibration else "stock encoder pass",
        "seed": settings["seed"],
        "labels_used": False,
    }
