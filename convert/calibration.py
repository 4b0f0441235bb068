"""Calibration statistics: streaming sums of each encoder linear's outputs over real speech.

For every encoder layer and each of its six linears (`q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1` before the
GELU, `fc2`) a forward hook adds the layer's OUTPUT rows y [out] into three float64 sums:

    count          how many rows (encoder positions) were seen
    total  [out]   Σ y
    outer  [out, out]  Σ y yᵀ

Memory is O(Σ out²) whatever the number of clips; the clips stream through in batches and are never kept.

Four of the six sums need not be accumulated row by row: `q_proj`, `k_proj` and `v_proj` read the same input
(the first layer norm's output) and `fc1` reads a d_model-wide input for a 4·d_model-wide output, so for those
(when they are plain nn.Linear) the hooks sum the INPUT rows x once per distinct input and the output sums follow
exactly from the weights (`output_sums`: Σ y = W Σ x + n b, Σ y yᵀ = W (Σ x xᵀ) Wᵀ + (W Σ x) bᵀ + b (W Σ x)ᵀ + n b bᵀ).
Per encoder position and layer that is 4 float64 products of d_model² instead of 21, which was most of the time
calibration took beyond the encoder pass itself.
From the sums, `decomposition.spectrum` gets the mean and the centred covariance. Plain sums merge by adding,
so shards computed in several processes combine with `merge_stats` (in one process) or `reduce_stats` (in
place, e.g. with `torch.distributed.all_reduce`).

Whisper pads every clip to 30 s. `frames="real"` keeps only the encoder positions that cover real audio,
`frames="all"` keeps all of them as the original LiteASR recipe does. Which is better depends on the rank
policy (measured on real tiny.en, benchmarks/results/compress_presets_tiny.en.json): padding positions are
most of the window (a 10 s clip is two thirds padding) and nearly alike, so "all" spends principal directions
on them, while "real" lets the projection damage them, yet the decoder cross-attends to every position,
padding included. The sensitivity policy measures that damage through the decoder and does best on "real"
statistics; the threshold policy cannot see it and does best on "all" (compress.DEFAULT_FRAMES_BY_POLICY).

A `Stats` records the identity of the model it came from (encoder shapes and a hash of the encoder weights),
so that a stats file is never applied to another model: `check_identity` raises `StatsMismatchError`.
"""

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from configuration_lite_whisper import ATTENTION_SLOTS, LOW_RANK_SLOTS, slot_shape

from .audio import batches

FRAMES_POLICIES = ("real", "all")
DEFAULT_FRAMES = "real"
STATS_FORMAT = "lite-whisper-calibration-stats/1"
ROWS_PER_UPDATE = 4096  # rows converted to float64 at a time: bounds the transient memory of a hook
# Audio that cannot carry statistics is refused, never averaged in: a clip shorter than this covers a handful of
# encoder positions (20 ms each), and one quieter than this RMS (-80 dBFS) is silence for Whisper's log-mel.
MIN_CLIP_SECONDS = 0.25
MIN_CLIP_RMS = 1e-4
# Probes before the clamp in sensitivity.measure_sensitivity could store a slightly negative KL estimate (rounding):
# down to this fraction of the largest |sensitivity| in the file it is read as 0; below, the file is refused.
SENSITIVITY_NOISE = 0.01
IDENTITY_SHAPE_KEYS = (
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "num_mel_bins",
    "max_source_positions",
)

SlotKey = Tuple[int, str]  # (encoder layer index, slot name)


class CalibrationError(ValueError):
    """Calibration cannot produce usable statistics (no audio, non-finite activations, ...)."""


class StatsMismatchError(CalibrationError):
    """A statistics file or shard belongs to another model, or another calibration setting."""


class StatsFileError(CalibrationError):
    """A statistics file is missing, unreadable or not in our format."""


@dataclass
class SlotStats:
    """Running sums of one linear's outputs."""

    count: int
    total: torch.Tensor  # [out] float64: Σ y
    outer: torch.Tensor  # [out, out] float64: Σ y yᵀ

    @classmethod
    def zeros(cls, out_features: int) -> "SlotStats":
        return cls(0, torch.zeros(out_features, dtype=torch.float64), torch.zeros(out_features, out_features, dtype=torch.float64))

    def add(self, rows: torch.Tensor) -> None:
        """Accumulate output rows [n, out] (any float dtype), ROWS_PER_UPDATE at a time in float64."""
        for start in range(0, rows.shape[0], ROWS_PER_UPDATE):
            chunk = rows[start : start + ROWS_PER_UPDATE].to(device="cpu", dtype=torch.float64)
            self.total += chunk.sum(dim=0)
            self.outer.addmm_(chunk.T, chunk)
        self.count += rows.shape[0]


@dataclass
class Stats:
    """Calibration statistics of one model's encoder linears, plus what they were computed from.

    `explained_variance[(layer, slot)]` [out] is filled by `decomposition.attach_explained_variance`: entry k-1 is
    the fraction of the centred output variance that the top-k principal directions keep. `sensitivity` (one
    float per slot) and `sensitivity_probe` (what it was measured on, and by which method) are filled by
    `sensitivity.py` or `fisher.py`; the Fisher estimate also fills `sensitivity_curves[(layer, slot)]` [k], its
    estimated cost at every rank 1..k. All are derived from the sums and the model, and are saved with them so
    that every preset comes from one file.
    """

    identity: dict  # model_identity(): base model name, encoder shapes, encoder weight hash
    frames: str  # "real" | "all"
    utterances: int  # clips seen
    calibration: str  # name of the calibration data
    slots: Dict[SlotKey, SlotStats]
    explained_variance: Dict[SlotKey, torch.Tensor] = field(default_factory=dict)
    sensitivity: Dict[SlotKey, float] = field(default_factory=dict)
    sensitivity_probe: dict = field(default_factory=dict)
    seconds: float = 0.0  # audio seconds seen (0 in files written before it was recorded)
    real_positions: int = 0  # encoder positions that covered real audio (0 in older files)
    sensitivity_curves: Dict[SlotKey, torch.Tensor] = field(default_factory=dict)
    costs: Dict[str, dict] = field(default_factory=dict)  # stage -> its cost when these were made (stages.py)
    mix: dict = field(default_factory=dict)  # {"balance", "languages": {code: clips}, "sources": {name: clips}}

    @property
    def frames_seen(self) -> int:
        """Encoder positions accumulated (the same for every slot)."""
        return next(iter(self.slots.values())).count if self.slots else 0


# ---------------------------------------------------------------------------------------------- model plumbing


def encoder_of(model):
    """The WhisperEncoder of a Whisper/LiteWhisper model (or the encoder itself)."""
    return model.get_encoder() if hasattr(model, "get_encoder") else model


def encoder_linear(encoder, layer_index: int, slot: str) -> torch.nn.Module:
    """The module in one slot of one encoder layer (nn.Linear, or LowRankLinear in a LiteWhisper)."""
    layer = encoder.layers[layer_index]
    return getattr(layer.self_attn if slot in ATTENTION_SLOTS else layer, slot)


def encoder_stem(encoder, features: torch.Tensor) -> torch.Tensor:
    """The encoder up to its first layer: convolutions, GELU, positions. [b, mels, frames] -> [b, positions, d]."""
    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    return hidden + encoder.embed_positions.weight[: hidden.shape[1]]


def run_layer(layer, hidden: torch.Tensor) -> torch.Tensor:
    """One encoder layer on hidden states [b, positions, d] (no attention mask, as Whisper's encoder runs)."""
    output = layer(hidden, None)
    return output[0] if isinstance(output, tuple) else output


def _slot_order(key: SlotKey) -> tuple:
    return key[0], LOW_RANK_SLOTS.index(key[1])


def slot_keys(config) -> List[SlotKey]:
    """Every (layer, slot) of an encoder, in layer order then slot order."""
    return [(layer_index, slot) for layer_index in range(config.encoder_layers) for slot in LOW_RANK_SLOTS]


def model_identity(model, name: Optional[str] = None) -> dict:
    """What a stats file must match: the base model's name, encoder shapes and a hash of its encoder weights.

    The hash covers every encoder parameter rounded to float16 (name, shape and bytes, in name order), so a
    model loaded in float32, float16 or bfloat16 from the same checkpoint hashes alike for all practical
    purposes, while any other model does not.
    """
    config = model.config
    digest = hashlib.sha256()
    encoder = encoder_of(model)
    for parameter_name, tensor in sorted(encoder.state_dict().items()):
        if parameter_name.startswith("embed_positions"):
            continue  # the fixed sinusoidal table: part of the architecture, not of the trained weights
        digest.update(f"{parameter_name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float16).contiguous().numpy().tobytes())
    return {
        "base_model": name or getattr(config, "_name_or_path", "") or "",
        "shapes": {key: int(getattr(config, key)) for key in IDENTITY_SHAPE_KEYS},
        "encoder_sha256": digest.hexdigest(),
    }


def check_identity(stats: Stats, identity: dict) -> None:
    """Raise StatsMismatchError unless `stats` were computed on the model whose identity is given."""
    if stats.identity["shapes"] != identity["shapes"]:
        raise StatsMismatchError(
            f"the statistics were computed on {stats.identity['base_model'] or 'another model'} with encoder "
            f"shapes {stats.identity['shapes']}, but this model ({identity['base_model']}) has {identity['shapes']}"
        )
    if stats.identity["encoder_sha256"] != identity["encoder_sha256"]:
        raise StatsMismatchError(
            f"the statistics were computed on {stats.identity['base_model'] or 'another model'} whose encoder "
            f"weights differ from this model's ({identity['base_model']}): same shapes, different checkpoint"
        )


# --------------------------------------------------------------------------------------------------- collecting


# Slots whose output sums are derived from the sums of another slot's input rows (see the module docstring): q, k
# and v from the input they share, fc1 from its own (d_model wide, its output 4·d_model).
SUMMED_INPUT_OF = {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "fc1": "fc1"}


def output_sums(input_sums: SlotStats, linear: torch.nn.Linear) -> SlotStats:
    """The sums of `linear`'s outputs y = W x + b over the rows whose input sums are given (exact, float64)."""
    weight = linear.weight.detach().to(device="cpu", dtype=torch.float64)  # [out, in]
    bias = (linear.bias.detach().to(device="cpu", dtype=torch.float64) if linear.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64))  # [out]
    count = input_sums.count
    mapped = weight @ input_sums.total  # [out]: W Σ x
    outer = weight @ input_sums.outer @ weight.T  # [out, out]: W (Σ x xᵀ) Wᵀ
    outer += torch.outer(mapped, bias) + torch.outer(bias, mapped) + count * torch.outer(bias, bias)
    return SlotStats(count, mapped + count * bias, outer)


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in `tensor` (either makes the float32 sum non-finite; a full isfinite mask is several
    times slower, at the size of every linear's output)."""
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32)))


class _Collector:
    """Forward hooks that add rows to running sums, for the positions in `self.mask`: a slot's own output rows, or
    for the slots in `inputs_of` ({slot key: key of the slot whose input rows stand for it}) that input's rows,
    once per distinct input. `slots()` returns every slot's output sums."""

    def __init__(self, encoder, config, keys: List[SlotKey]):
        self.encoder = encoder
        self.inputs_of = {
            key: (key[0], SUMMED_INPUT_OF[key[1]]) for key in keys
            if key[1] in SUMMED_INPUT_OF and type(encoder_linear(encoder, *key)) is torch.nn.Linear
        }
        self.sums = {}  # key -> SlotStats of the rows that hook adds: outputs, or the input of a key in inputs_of
        for key in keys:
            source = self.inputs_of.get(key)
            if source is None:
                self.sums[key] = SlotStats.zeros(slot_shape(config, key[1])[1])
            elif source == key:
                self.sums[key] = SlotStats.zeros(slot_shape(config, key[1])[0])
        self.mask: Optional[torch.Tensor] = None  # [batch, positions] bool, or None for every position

    def rows(self, tensor: torch.Tensor, key: SlotKey, where: str) -> torch.Tensor:
        """The kept rows of `tensor` [batch, positions, width], refused if any is NaN or infinite."""
        rows = tensor[self.mask] if self.mask is not None else tensor.reshape(-1, tensor.shape[-1])
        if not _all_finite(rows):
            layer_index, slot = key
            raise CalibrationError(
                f"non-finite activations (NaN or inf) at the {where} of encoder layer {layer_index} {slot}; "
                "the model or its dtype cannot run this audio (try --dtype float32)"
            )
        return rows.detach()

    def hook(self, key: SlotKey) -> Callable:
        source = self.inputs_of.get(key)

        def accumulate(module, inputs, output):  # inputs[0]: [batch, positions, in]; output: [batch, positions, out]
            if source is None:
                self.sums[key].add(self.rows(output, key, "output"))
                return
            if source == key:
                self.sums[key].add(self.rows(inputs[0], key, "input"))
            if not _all_finite(output):  # a dtype overflow shows at the output
                self.rows(output, key, "output")

        return accumulate

    def slots(self) -> Dict[SlotKey, SlotStats]:
        """Every slot's output sums, in slot order."""
        return {
            key: output_sums(self.sums[self.inputs_of[key]], encoder_linear(self.encoder, *key))
            if key in self.inputs_of else self.sums[key]
            for key in sorted(set(self.sums) | set(self.inputs_of), key=_slot_order)
        }


@contextmanager
def _hooks(encoder, collector: _Collector, keys: List[SlotKey]):
    handles = [encoder_linear(encoder, *key).register_forward_hook(collector.hook(key)) for key in keys]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_clip(utterance) -> None:
    """Refuse a clip that cannot carry statistics: too short or silent (CalibrationError naming it)."""
    import numpy as np

    seconds = len(utterance.audio) / 16_000
    if seconds < MIN_CLIP_SECONDS:
        raise CalibrationError(f"calibration clip {utterance.name} lasts {seconds * 1000:.0f} ms: clips shorter than "
                               f"{MIN_CLIP_SECONDS * 1000:.0f} ms cannot carry statistics; remove it or use longer speech")
    rms = float(np.sqrt(np.mean(np.square(utterance.audio, dtype=np.float64))))
    if rms < MIN_CLIP_RMS:
        raise CalibrationError(f"calibration clip {utterance.name} is silent (RMS {rms:.1e}, below {MIN_CLIP_RMS:.0e}); "
                               "remove it or use real speech")


def minimum_positions(config) -> int:
    """Real encoder positions calibration needs at least: one per output dimension of the model (d_model), or
    the covariance of a linear's outputs cannot have full rank and the PCA basis is arbitrary."""
    return int(config.d_model)


def real_positions(attention_mask: torch.Tensor, positions: int) -> torch.Tensor:
    """Mel-frame mask [batch, frames] -> encoder-position mask [batch, positions]: a position is real if any of
    the mel frames it downsamples holds audio (the second conv has stride 2)."""
    stride = attention_mask.shape[1] // positions
    return attention_mask.bool().reshape(attention_mask.shape[0], positions, stride).any(dim=-1)


def collect_stats(
    model,
    feature_extractor,
    utterances: Iterable,
    batch_size: int = 8,
    frames: str = DEFAULT_FRAMES,
    progress: bool = True,
    total: Optional[int] = None,
    name: Optional[str] = None,
    calibration: str = "",
    on_batch: Optional[Callable[[list, torch.Tensor], None]] = None,
) -> Stats:
    """Run `utterances` (audio.Utterance) through the model's encoder and return the output statistics.

    `feature_extractor` is the model's WhisperFeatureExtractor; `frames` is "real" or "all" (see the module
    docstring); `total` only sizes the progress bar; `name` and `calibration` are recorded in the Stats.
    `on_batch(utterances, last_hidden_state)`, if given, sees each batch's encoder output [b, positions, d] (the
    sensitivity probe reuses it instead of running the encoder on its clips again).
    """
    if frames not in FRAMES_POLICIES:
        raise CalibrationError(f"frames must be one of {', '.join(FRAMES_POLICIES)}, got {frames!r}")
    if batch_size < 1:
        raise CalibrationError(f"batch size must be at least 1, got {batch_size}")
    from tqdm.auto import tqdm

    config = model.config
    encoder = encoder_of(model)
    parameter = next(encoder.parameters())
    positions = config.max_source_positions
    keys = slot_keys(config)
    collector = _Collector(encoder, config, keys)
    seen, seconds, real = 0, 0.0, 0
    bar = tqdm(total=total, unit="clip", desc="calibration", disable=not progress)
    with torch.no_grad(), _hooks(encoder, collector, keys):
        for batch in batches(utterances, batch_size):
            for utterance in batch:
                check_clip(utterance)
            inputs = feature_extractor(
                [utterance.audio for utterance in batch],
                sampling_rate=feature_extractor.sampling_rate,
                return_tensors="pt",
                return_attention_mask=True,
            )
            features = inputs.input_features.to(device=parameter.device, dtype=parameter.dtype)  # [b, mels, frames]
            real_mask = real_positions(inputs.attention_mask, positions)
            mask = real_mask if frames == "real" else None
            collector.mask = mask.to(parameter.device) if mask is not None else None
            encoded = encoder(features)
            if on_batch is not None:
                on_batch(batch, encoded.last_hidden_state)
            seen += len(batch)
            seconds += sum(len(utterance.audio) for utterance in batch) / feature_extractor.sampling_rate
            real += int(real_mask.sum())
            bar.update(len(batch))
    bar.close()
    if seen == 0:
        raise CalibrationError("no calibration audio: the source yielded no clips")
    return Stats(
        identity=model_identity(model, name),
        frames=frames,
        utterances=seen,
        calibration=calibration,
        slots=collector.slots(),
        seconds=seconds,
        real_positions=real,
    )


def check_enough_audio(stats: Stats, config) -> None:
    """Refuse statistics over too little real audio (after any all-reduce: the job's total counts)."""
    needed = minimum_positions(config)
    if stats.real_positions and stats.real_positions < needed:
        raise CalibrationError(
            f"calibration saw {stats.utterances} clips, {stats.seconds:.1f} s of audio, {stats.real_positions} encoder "
            f"positions of real audio; at least {needed} (d_model, {needed * 0.02:.1f} s) are needed for the "
            "statistics to mean anything: use more or longer clips (--num-samples)"
        )


# ------------------------------------------------------------------------------------------- merging / reducing


def _check_compatible(first: Stats, other: Stats) -> None:
    check_identity(other, first.identity)
    if other.frames != first.frames:
        raise StatsMismatchError(f"cannot merge statistics over {first.frames!r} frames with {other.frames!r} frames")
    if set(other.slots) != set(first.slots):
        raise StatsMismatchError("cannot merge statistics that cover different encoder slots")


def merge_stats(parts: List[Stats]) -> Stats:
    """One Stats holding the sums of several (e.g. shards computed by different processes)."""
    if not parts:
        raise CalibrationError("nothing to merge")
    first = parts[0]
    for other in parts[1:]:
        _check_compatible(first, other)
    slots = {
        key: SlotStats(
            count=sum(part.slots[key].count for part in parts),
            total=sum(part.slots[key].total for part in parts),
            outer=sum(part.slots[key].outer for part in parts),
        )
        for key in first.slots
    }
    calibration = " + ".join(dict.fromkeys(part.calibration for part in parts))
    return Stats(first.identity, first.frames, sum(p.utterances for p in parts), calibration, slots,
                 seconds=sum(p.seconds for p in parts), real_positions=sum(p.real_positions for p in parts))


def reduce_stats(stats: Stats, all_reduce: Callable[[torch.Tensor], None]) -> Stats:
    """Sum `stats` across processes in place with a summing `all_reduce(tensor)`, e.g.
    `torch.distributed.all_reduce` (move the tensors to the backend's device first where it needs one).

    The float64 sums are reduced one slot at a time; the counts travel together in one int64 tensor: clips, each
    slot's rows, real-audio positions, milliseconds of audio.
    """
    keys = sorted(stats.slots)
    counts = torch.tensor([stats.utterances] + [stats.slots[key].count for key in keys]
                          + [stats.real_positions, round(stats.seconds * 1000)], dtype=torch.int64)
    all_reduce(counts)
    stats.utterances, stats.real_positions, stats.seconds = int(counts[0]), int(counts[-2]), int(counts[-1]) / 1000
    for position, key in enumerate(keys, start=1):
        slot = stats.slots[key]
        slot.count = int(counts[position])
        all_reduce(slot.total)
        all_reduce(slot.outer)
    stats.explained_variance, stats.sensitivity, stats.sensitivity_curves = {}, {}, {}  # derived from the local sums
    return stats


# --------------------------------------------------------------------------------------------------- save / load


def save_stats(stats: Stats, path) -> Path:
    """Write `stats` to one safetensors file (written to a temporary name, then renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for (layer_index, slot), sums in stats.slots.items():
        tensors[f"{layer_index}.{slot}.total"] = sums.total.contiguous()
        tensors[f"{layer_index}.{slot}.outer"] = sums.outer.contiguous()
    for (layer_index, slot), curve in stats.explained_variance.items():
        tensors[f"{layer_index}.{slot}.explained_variance"] = curve.to(torch.float64).contiguous()
    for (layer_index, slot), curve in stats.sensitivity_curves.items():
        tensors[f"{layer_index}.{slot}.sensitivity_curve"] = curve.to(torch.float64).contiguous()
    header = {
        "format": STATS_FORMAT,
        "identity": stats.identity,
        "frames": stats.frames,
        "utterances": stats.utterances,
        "calibration": stats.calibration,
        "counts": {f"{layer_index}.{slot}": sums.count for (layer_index, slot), sums in stats.slots.items()},
        "sensitivity": {f"{layer_index}.{slot}": value for (layer_index, slot), value in stats.sensitivity.items()},
        "sensitivity_probe": stats.sensitivity_probe,
        "seconds": stats.seconds,
        "real_positions": stats.real_positions,
        "costs": stats.costs,
        "mix": stats.mix,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata={"lite_whisper": json.dumps(header, sort_keys=True)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp and safetensors create it owner-only
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return path


_HEADER_KEYS = ("identity", "frames", "utterances", "calibration", "counts")


def read_stats_header(path, tensor_shapes: bool = False):
    """The JSON header of a stats file, checked for every key and tensor `load_stats` needs (StatsFileError naming
    the first one missing); with `tensor_shapes`, also returns {tensor name: shape}. Reads no tensor data."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise StatsFileError(f"statistics file not found: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # SafetensorError, OSError, ValueError: truncated or not safetensors
        raise StatsFileError(f"{path}: not a statistics file ({error})") from None
    try:
        header = json.loads(metadata["lite_whisper"])
    except (KeyError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != STATS_FORMAT:
        raise StatsFileError(f"{path}: not a LiteWhisper calibration statistics file ({STATS_FORMAT})")
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise StatsFileError(f"{path}: the header lacks {', '.join(missing)}; the file is damaged: delete it to "
                             "calibrate again")
    identity = header["identity"]
    if not isinstance(identity, dict) or not {"shapes", "encoder_sha256"} <= set(identity) or \
            "encoder_layers" not in (identity.get("shapes") or {}):
        raise StatsFileError(f"{path}: the header's model identity is incomplete; the file is damaged: delete it to "
                             "calibrate again")
    expected = {f"{layer}.{slot}" for layer in range(int(identity["shapes"]["encoder_layers"])) for slot in LOW_RANK_SLOTS}
    if set(header["counts"]) != expected:
        absent = sorted(expected - set(header["counts"]))
        raise StatsFileError(f"{path}: statistics for {', '.join(absent[:3]) or 'unknown slots'} are missing; the file "
                             "is damaged: delete it to calibrate again")
    for key_text in header["counts"]:
        for part in ("total", "outer"):
            if f"{key_text}.{part}" not in shapes:
                raise StatsFileError(f"{path}: tensor {key_text}.{part} is missing; the file is damaged: delete it "
                                     "to calibrate again")
        layer_text, _, slot = key_text.partition(".")
        if not layer_text.isdigit() or slot not in LOW_RANK_SLOTS:
            raise StatsFileError(f"{path}: unknown slot {key_text!r}; the file is damaged: delete it to calibrate again")
    sensitivity = header.get("sensitivity") or {}
    finite = [abs(value) for value in sensitivity.values() if isinstance(value, (int, float)) and math.isfinite(value)]
    noise = SENSITIVITY_NOISE * max(finite, default=0.0)
    for key_text, value in sensitivity.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < -noise:
            raise StatsFileError(f"{path}: sensitivity of {key_text} is {value!r}, not a finite value >= 0; the probe "
                                 "failed or the file was edited: delete the file to calibrate and probe again")
    return (header, shapes) if tensor_shapes else header


def load_stats(path, identity: Optional[dict] = None) -> Stats:
    """Read a stats file; with `identity` (from `model_identity`), raise StatsMismatchError if it is another model's.
    A damaged file (a key or tensor missing, non-finite sums or sensitivities) raises StatsFileError."""
    from safetensors import safe_open

    path = Path(path)
    header = read_stats_header(path)
    with safe_open(str(path), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise StatsFileError(f"{path}: tensor {name} holds NaN or infinite values; delete the file to calibrate again")
    slots, curves, sensitivity, cost_curves = {}, {}, {}, {}
    for key_text, count in header["counts"].items():
        layer_text, slot = key_text.split(".")
        key = (int(layer_text), slot)
        slots[key] = SlotStats(int(count), tensors[f"{key_text}.total"], tensors[f"{key_text}.outer"])
        if f"{key_text}.explained_variance" in tensors:
            curves[key] = tensors[f"{key_text}.explained_variance"]
        if f"{key_text}.sensitivity_curve" in tensors:
            cost_curves[key] = tensors[f"{key_text}.sensitivity_curve"]
        if key_text in header.get("sensitivity", {}):
            sensitivity[key] = max(float(header["sensitivity"][key_text]), 0.0)  # noise below 0: see read_stats_header
    stats = Stats(
        identity=header["identity"],
        frames=header["frames"],
        utterances=header["utterances"],
        calibration=header["calibration"],
        slots={key: slots[key] for key in sorted(slots, key=_slot_order)},
        explained_variance={key: curves[key] for key in sorted(curves, key=_slot_order)},
        sensitivity={key: sensitivity[key] for key in sorted(sensitivity, key=_slot_order)},
        sensitivity_probe=header.get("sensitivity_probe", {}),
        seconds=float(header.get("seconds", 0.0)),
        real_positions=int(header.get("real_positions", 0)),
        sensitivity_curves={key: cost_curves[key] for key in sorted(cost_curves, key=_slot_order)},
        costs=header.get("costs", {}),
        mix=header.get("mix", {}),
    )
    if identity is not None:
        check_identity(stats, identity)
        if stats.sensitivity and len(stats.sensitivity) != len(stats.slots):
            raise StatsFileError(f"{path}: sensitivities cover {len(stats.sensitivity)} of {len(stats.slots)} slots; "
                                 "the file is damaged: delete it to calibrate and probe again")
    return stats
