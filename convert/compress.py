"""Compress a stock Whisper into a LiteWhisper repo: the whole pipeline, one function per stage.

    compress("openai/whisper-base", "lite-whisper-base-fast", preset="fast")     # calibration data from the Hub
    compress("whisper-tiny.en/", "out/", preset="acc", calibration="clips/", stats_path="tiny.stats")

Stages (each a function the tests call directly):

    load_base         stock model + feature extractor
    prepare_stats     calibration sums (or a stats file), spectra, explained variance, sensitivities  [stats file]
    plan_ranks        (ranks.py) low_rank_config for a preset, thresholds or a size target
    decompose         (decomposition.py) the LiteWhisper in memory
    recover           (recovery.py) optional least-squares refit / distillation towards the stock encoder, no
                      labels (`recovery`/`recover_steps`; per-preset defaults in recovery.PRESET_RECOVERY), or any callable
    export            (export.py) the repo folder, smoke-tested in a fresh process, renamed into place

The stats file is the expensive artefact: given `stats_path`, it is written after the first run and reused by
later ones (every preset of a model from one calibration run); everything after it is cheap.

Reproducibility: the same inputs and seed give byte-identical safetensors. The calibration clips are the first
`num_samples` of the source in its stable order; `seed` seeds torch and numpy for any stochastic step (none of
the current stages draws random numbers; a recovery step would).
"""

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from .audio import (
    DEFAULT_BALANCE,
    DEFAULT_CALIBRATION,
    DEFAULT_MULTILINGUAL_CALIBRATION,
    calibration_sources,
    iter_calibration,
    mix_name,
)
from .calibration import (
    DEFAULT_FRAMES,
    StatsMismatchError,
    check_enough_audio,
    collect_stats,
    load_stats,
    model_identity,
    reduce_stats,
    save_stats,
)
from .checks import (
    check_base_model,
    check_count,
    check_data_source,
    check_device,
    check_output_folder,
    check_recovery_request,
    check_size_target,
    check_stats_request,
    check_whisper_config,
)
from .distributed import Processes
from .evaluation import is_multilingual
from .decomposition import attach_explained_variance, decompose, spectra
from .export import Recipe, SmokeResult, check_output, export
from .measures import encoder_parameters
from .precision import autocast_dtype_for
from .recovery import recover as recover_encoder
from .recovery import TARGET_CACHE_BYTES, recovery_recipe, resolve_recovery, stock_output_bytes
from .ranks import DEFAULT_POLICY, Thresholds, check_request, model_family, plan_ranks
from .fisher import fisher_sensitivity
from .sensitivity import DEFAULT_LEVEL, DEFAULT_PROBE_CLIPS, measure_sensitivity, probe_description, probe_set
from .stages import StageCosts

logger = logging.getLogger(__name__)
# Calibration frames per rank policy, measured on real tiny.en at the official sizes with the earlier sensitivity
# probe (greedy WER delta on librispeech-test-other-60, acc/balanced/fast; compress_presets_tiny.en_earlier_probe
# .json): sensitivity on real frames +0.36/+0.09/-0.62, on all frames +0.71/+1.60/+0.98; threshold on all frames
# +0.27/+0.27/+35.6, on real frames +2.31/+16.4/+258 (loops). Not yet re-measured with the current probe.
DEFAULT_FRAMES_BY_POLICY = {"sensitivity": "real", "threshold": "all"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_NUM_SAMPLES = 100
SMOKE_CLIPS = 3  # held-out clips the smoke test transcribes with both models
# How the sensitivity policy measures each linear: "fisher" (fisher.py, one forward and backward pass of the probe
# clips for every linear at once, a cost curve per rank) or "probe" (sensitivity.py, one pass per linear).
SENSITIVITY_METHODS = ("fisher", "probe")
# Probe clips when --probe-clips is not given. The per-linear probe pays one pass per linear for every clip, so it
# keeps to 32; the Fisher estimate pays one forward and backward pass per clip for all linears, so it reads the
# first calibration clips, up to 64: on base, 100 clips cost 4.7 stock encoder passes for the whole fast conversion
# and 64 clips 3.6, with every preset's WER within paired-bootstrap noise of the 100-clip models in English
# (benchmarks/README.md, "What a conversion costs"); 32 clips were visibly noisier.
DEFAULT_FISHER_CLIPS = 64


def default_sensitivity_method(model, distils: bool = False) -> str:
    """Fisher for multilingual models and for conversions that distil (`distils`), the per-linear probe for the
    other English-only ones, as measured (benchmarks/README.md): on base, Fisher (on 100 clips then) keeps every
    preset within noise of the probe in English, German and Spanish, with English fast at +0.80 against +1.16, in
    a third of the time (and large-v3 and turbo would need 192 probe passes); on tiny.en the probe's presets lose
    less where nothing repairs the ranks afterwards (fast +0.18 against +1.15), while after distillation both give
    the same WER (balanced 15.66 %) and the probe would be a third of the conversion's time."""
    return "fisher" if is_multilingual(model) or distils else "probe"


def default_probe_clips(sensitivity_method: str, num_samples: int) -> int:
    if sensitivity_method == "fisher":
        return min(DEFAULT_FISHER_CLIPS, num_samples)
    return DEFAULT_PROBE_CLIPS


# The stages whose results the stats file keeps (their costs are saved with them).
STATS_STAGES = ("audio decoding", "calibration statistics", "spectra", "sensitivity")


def sensitivity_method_of(stats) -> Optional[str]:
    """How the sensitivities in `stats` were measured (files from before the Fisher estimate: "probe")."""
    if not stats.sensitivity:
        return None
    return stats.sensitivity_probe.get("method", "probe")


def measure(model, probes, by_slot, method: str, level: float, progress: bool, processes, seed: int = 0,
            autocast_dtype: Optional[torch.dtype] = None):
    """(sensitivity, cost curves or {}, description extras) by `method` (SENSITIVITY_METHODS); the Fisher estimate
    runs under autocast to `autocast_dtype` when given."""
    if method == "fisher":
        sensitivity, curves = fisher_sensitivity(model, probes, by_slot, level=level, seed=seed, progress=progress,
                                                 processes=processes, autocast_dtype=autocast_dtype)
        dtype = autocast_dtype or next(model.parameters()).dtype
        return sensitivity, curves, {"method": "fisher", "samples": 1, "dtype": str(dtype).removeprefix("torch.")}
    return measure_sensitivity(model, probes, by_slot, level=level, progress=progress, processes=processes), {}, \
        {"method": "probe"}


@dataclass
class CompressResult:
    out_dir: Path
    low_rank_config: List[dict]
    rank_policy: dict  # what plan_ranks resolved (policy, preset, thresholds, target, encoder_params)
    encoder_params: int
    stock_encoder_params: int
    smoke: Optional[SmokeResult]
    calibration_clips: int = 0  # clips the statistics came from, and their audio seconds (0: not recorded)
    calibration_seconds: float = 0.0
    stats_reused: bool = False
    notes: List[str] = dataclasses.field(default_factory=list)  # what the run could not do as asked (stats not saved ...)
    stages: List[dict] = dataclasses.field(default_factory=list)  # StageCosts.as_list(): seconds, peak memory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_base(model_id_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(stock WhisperForConditionalGeneration in eval mode, its WhisperFeatureExtractor)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    # Cast after loading: from_pretrained's dtype keyword is `torch_dtype` before transformers 4.56.
    model = WhisperForConditionalGeneration.from_pretrained(str(model_id_or_path))
    model = model.to(device=device, dtype=dtype).eval()
    return model, WhisperFeatureExtractor.from_pretrained(str(model_id_or_path))


class _FirstClips:
    """Pass utterances through, keeping the first `count` (for the sensitivity probe and the smoke test) and
    counting every clip by language and by source (for the recipe)."""

    def __init__(self, utterances, count: int):
        self.utterances, self.count, self.kept = utterances, count, []
        self.seen = []  # (language or "unknown", source) per clip

    def __iter__(self):
        for utterance in self.utterances:
            if len(self.kept) < self.count:
                self.kept.append(utterance)
            self.seen.append((utterance.language or "unknown", utterance.source or ""))
            yield utterance


class _EncoderStates:
    """The stock encoder's outputs on the first `wanted` calibration clips, kept during the calibration pass so that
    the sensitivity probe transcribes them and recovery distils towards them without running the encoder again
    (tiny: 2.3 MB per clip in float32, base 3 MB, large-v3 7.7 MB)."""

    def __init__(self, wanted: int):
        self.wanted = wanted
        self.batches: List[torch.Tensor] = []  # [b, positions, d] each, on the CPU

    @property
    def count(self) -> int:
        return sum(batch.shape[0] for batch in self.batches)

    def keep(self, states: torch.Tensor) -> None:
        """collect_stats' `on_batch`: keep this batch's outputs while fewer than `wanted` are kept."""
        if self.count < self.wanted:
            self.batches.append(states[: self.wanted - self.count].detach().cpu())

    def of(self, clips: int) -> Optional[torch.Tensor]:
        """[clips, positions, d] when the first `clips` were kept, else None (the probe runs the encoder). The
        batches are joined once; every call returns a view of that one tensor."""
        if not self.batches or self.count < clips:
            return None
        if len(self.batches) > 1:
            self.batches = [torch.cat(self.batches)]
        return self.batches[0][:clips]


@dataclass
class KeptClips:
    """The first calibration clips of this process, kept by `prepare_stats`, and the stock encoder's outputs on them
    [clips, positions, d] when the calibration pass computed them (None when the sums came from a stats file)."""

    utterances: list
    encoder_states: Optional[torch.Tensor] = None


def default_calibration(model) -> tuple:
    """The calibration sources a model gets when none are named: LibriSpeech for English-only models, a mix of
    languages (audio.DEFAULT_MULTILINGUAL_CALIBRATION) for multilingual ones."""
    return DEFAULT_MULTILINGUAL_CALIBRATION if is_multilingual(model) else (DEFAULT_CALIBRATION,)


def calibration_mix(seen, balance: str) -> dict:
    """What calibration ran on, for the recipe: the balance and clip counts by language and by source."""
    def counts(values) -> dict:
        return dict(sorted(Counter(values).items(), key=lambda item: (-item[1], item[0])))

    return {"balance": balance, "languages": counts(language for language, _ in seen),
            "sources": counts(source for _, source in seen)}


def first_clips(calibration, count: int, balance: str = DEFAULT_BALANCE, stages: Optional[StageCosts] = None) -> list:
    """The first `count` clips of a calibration source or mix of sources (the mix `compress` calibrates on; their
    decoding timed as `stages`' audio decoding)."""
    utterances = iter_calibration(calibration, balance=balance)
    return list(islice(stages.iterate(utterances, "audio decoding") if stages else utterances, count))


def held_out_clips(calibration, num_samples: int, count: int = SMOKE_CLIPS, balance: str = DEFAULT_BALANCE) -> tuple:
    """(clips, held_out): the `count` clips after the first `num_samples` of the source (or mix), which
    calibration never saw; where it has none left, its last calibration clips (held_out False)."""
    after = list(islice(iter_calibration(calibration, balance=balance), num_samples, num_samples + count))
    if after:
        return after, True
    return first_clips(calibration, num_samples, balance)[-count:], False


def prepare_stats(
    model,
    feature_extractor,
    calibration=DEFAULT_CALIBRATION,
    num_samples: int = 100,
    batch_size: int = 8,
    frames: Optional[str] = None,
    stats_path=None,
    name: Optional[str] = None,
    default_frames: str = DEFAULT_FRAMES,
    sensitivity: bool = True,
    probe_clips: int = DEFAULT_PROBE_CLIPS,
    probe_level: float = DEFAULT_LEVEL,
    progress: bool = True,
    processes: Optional[Processes] = None,
    sensitivity_method: str = "fisher",
    stages: Optional[StageCosts] = None,
    balance: str = DEFAULT_BALANCE,
    keep: int = 0,
):
    """(Stats with explained-variance curves and, if `sensitivity`, sensitivities; spectra by slot; KeptClips).

    With an existing `stats_path` the sums come from that file (a file from another model raises
    StatsMismatchError); otherwise calibration runs on the first `num_samples` clips of `calibration` (one
    source or several, interleaved as `balance` says: audio.iter_calibration), over `frames` (None:
    `default_frames`); `stats.mix` records the clips by language and source. Anything derived that the file lacks
    is computed and the file is rewritten (by the main process); a new file is written only when complete.
    Sensitivities measured by another `sensitivity_method` than the one asked for are measured again (and replace
    them in the file).

    Under data parallelism (`processes` with count > 1) each process calibrates on its shard of the clips (every
    count-th one) and the sums are all-reduced; the sensitivity probe splits its clips the same way. Every
    process returns the same statistics; the kept clips are this process's.

    `stages` (a StageCosts) records the cost of audio decoding, calibration statistics, spectra and sensitivity;
    the costs of the stages that made the sums are saved with them (`stats.costs`).

    `keep`: keep this process's first `keep` clips (at least the probe clips) and, where the calibration pass runs,
    the stock encoder's outputs on them (for recovery; see KeptClips).
    """
    stages = stages or StageCosts(next(model.parameters()).device)
    processes = Processes.of(processes)
    index, count = processes.shard
    if sensitivity_method not in SENSITIVITY_METHODS:
        raise ValueError(f"unknown sensitivity method {sensitivity_method!r}; choose one of "
                         f"{', '.join(SENSITIVITY_METHODS)}")
    if sensitivity and probe_clips < count:
        raise ValueError(f"the sensitivity probe needs at least one clip per process: --probe-clips {probe_clips} "
                         f"is fewer than the {count} processes")
    own_probe_clips = len(range(index, probe_clips, count))
    identity = model_identity(model, name)
    stats_path = Path(stats_path) if stats_path is not None else None
    clips = _FirstClips([], 0)
    states = _EncoderStates(0)  # none kept when the sums come from a stats file
    if stats_path is not None and stats_path.exists():
        stats = load_stats(stats_path, identity)
        if frames is not None and frames != stats.frames:
            raise StatsMismatchError(
                f"{stats_path} holds statistics over {stats.frames!r} frames but {frames!r} was asked for; "
                "drop --frames or use another --stats file"
            )
        logger.info("reusing calibration statistics from %s (%d clips of %s)", stats_path, stats.utterances,
                    stats.calibration)
        changed = False
    else:
        decoded = stages.iterate(iter_calibration(calibration, limit=num_samples, shard=processes.shard,
                                                  balance=balance),
                                 "audio decoding")
        clips = _FirstClips(decoded, max(own_probe_clips, keep, 1))
        states = _EncoderStates(max(own_probe_clips if sensitivity else 0, keep))
        with stages.stage("calibration statistics"):
            stats = processes.run(
                lambda: collect_stats(model, feature_extractor, clips, batch_size=batch_size,
                                      frames=frames or default_frames, progress=progress,
                                      total=len(range(index, num_samples, count)), name=name,
                                      calibration=mix_name(calibration),
                                      on_batch=lambda _, outputs: states.keep(outputs)),
                "calibration",
            )
            if count > 1:
                reduce_stats(stats, processes.sum_in_place)
        check_enough_audio(stats, model.config)
        stats.mix = calibration_mix(processes.gather(clips.seen), balance)
        changed = True
    device = next(model.parameters()).device
    with stages.stage("spectra"):
        by_slot = spectra(stats, model.config, device=device if device.type == "cuda" else None, progress=progress)
    if not stats.explained_variance:
        attach_explained_variance(stats, by_slot)
        changed = True
    if sensitivity and sensitivity_method_of(stats) != sensitivity_method:
        # The first `probe_clips` clips of the mix, split across processes as calibration split them; each is
        # transcribed in its own language (given by its source, else detected).
        probe_audio = clips.kept[:own_probe_clips] or first_clips(calibration, probe_clips, balance, stages)[index::count]
        with stages.stage("sensitivity"):
            fisher = sensitivity_method == "fisher"
            # the Fisher estimate and its transcripts in reduced precision where native; the probe never
            reduced = autocast_dtype_for(device, next(model.parameters()).dtype) if fisher else None
            probes = processes.run(lambda: probe_set(model, feature_extractor, probe_audio, batch_size=batch_size,
                                                     reference=not fisher,
                                                     encoder_states=states.of(len(probe_audio)),
                                                     transcribe_dtype=reduced),
                                   "sensitivity probe")
            stats.sensitivity, stats.sensitivity_curves, extras = measure(
                model, probes, by_slot, sensitivity_method, probe_level, progress, processes, autocast_dtype=reduced)
            stats.sensitivity_probe = {**probe_description(probes, probe_level, mix_name(calibration), processes),
                                       **extras}
        changed = True
    if changed:  # what the statistics in the file cost to make (the stages run just now)
        made = {record["stage"]: record for record in stages.as_list()}
        stats.costs = {**stats.costs, **{stage: made[stage] for stage in STATS_STAGES if stage in made}}
    if stats_path is not None and changed and processes.is_main:
        save_stats_or_fallback(stats, stats_path)
    return stats, by_slot, KeptClips(clips.kept, states.of(len(clips.kept)) if clips.kept else None)


def save_stats_or_fallback(stats, stats_path: Path) -> Path:
    """Save the stats file; where that fails (disk full, permissions) save it in the temporary folder instead and
    say where, so that a calibration run is never lost to a full disk."""
    import tempfile

    try:
        return save_stats(stats, stats_path)
    except OSError as error:
        fallback = Path(tempfile.gettempdir()) / f"lite-whisper-{stats_path.name}"
        try:
            save_stats(stats, fallback)
        except OSError:
            logger.warning("could not save the statistics to %s (%s) nor to %s; the run continues without them",
                           stats_path, error.strerror or error, fallback)
            stats.sensitivity_probe = dict(stats.sensitivity_probe, unsaved=str(error.strerror or error))
            return stats_path
        logger.warning("could not save the statistics to %s (%s); saved them to %s instead", stats_path,
                       error.strerror or error, fallback)
        stats.sensitivity_probe = dict(stats.sensitivity_probe, saved_instead=str(fallback))
        return fallback


def compress(
    model: str,
    out_dir,
    calibration=None,
    preset: Optional[str] = None,
    thresholds: Optional[Thresholds] = None,
    target_encoder_params=None,
    policy: str = DEFAULT_POLICY,
    num_samples: Optional[int] = None,
    batch_size: int = 8,
    stats_path=None,
    frames: Optional[str] = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    probe_clips: Optional[int] = None,
    smoke_test: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    recover: Optional[Callable] = None,
    recovery: str = "auto",
    recover_steps: Optional[int] = None,
    processes: Optional[Processes] = None,
    reuse_stats: bool = False,
    sensitivity_method: Optional[str] = None,
    balance: str = DEFAULT_BALANCE,
) -> CompressResult:
    """Stock Whisper (`model`: Hub id or folder) -> LiteWhisper repo at `out_dir`.

    `calibration`: a local audio folder or `hf://` dataset, or a list of them mixed as `balance` says
    (audio.BALANCES); None: `default_calibration(model)`, a mix of languages for a multilingual model. The
    sensitivity probe and recovery run on the same mix.

    Exactly one of `preset` ("acc" | "balanced" | "fast"), `thresholds` or `target_encoder_params` (a count, or
    a ratio of the stock encoder) chooses the ranks, with `policy` "sensitivity" (default) or "threshold".
    `dtype` is the calibration compute dtype; the repo is saved in float16. `recover`, when given, receives the
    decomposed LiteWhisper and returns the model to export. Before it, label-free recovery towards the stock
    encoder runs on the first `num_samples` calibration clips: `recovery` "auto" (the measured default for this model
    family and preset, recovery.PRESET_RECOVERY), "none" (the paper's recipe), "refit" (least squares) or "distill" (refit +
    distillation); `recover_steps` N > 0 adds N distillation steps, 0 means none (see recovery.resolve_recovery).
    `sensitivity_method` ("fisher" or "probe", SENSITIVITY_METHODS) is how the sensitivity policy measures what
    each linear's rank costs (None: `default_sensitivity_method`), on `probe_clips` clips (None:
    `default_probe_clips`).

    Data parallelism: call this on every process of an `accelerate launch` job with the job's `processes` (a
    distributed.Processes) and each process's own `device`. Calibration, the sensitivity probe and recovery
    split the clips across processes and sum their statistics; every process plans the same ranks; the main
    process alone writes the stats file and the repo and runs the smoke test (`smoke` is None elsewhere).

    Every argument, path, the model folder and an existing stats file are checked before anything runs
    (checks.py; InputError). `calibration`/`num_samples` None: those of an existing `stats_path`, else the
    default source and 100 clips; given ones that disagree with the file raise unless `reuse_stats`.
    """
    processes = Processes.of(processes)
    progress = progress and processes.is_main
    header = check_compress_inputs(model, out_dir, calibration, num_samples, batch_size, stats_path, frames, device,
                                   probe_clips, overwrite, recovery, recover_steps, target_encoder_params, preset,
                                   thresholds, policy, smoke_test, reuse_stats)
    stats_reused = header is not None
    if num_samples is None:
        num_samples = int(header["utterances"]) if header else DEFAULT_NUM_SAMPLES
    out_dir = check_output(out_dir, overwrite)
    seed_everything(seed)
    stages = StageCosts(device)
    with stages.stage("load model"):
        base, feature_extractor = load_base(model, device, dtype)
    calibration = calibration_sources(calibration if calibration is not None else default_calibration(base))
    check_request(base.config, preset, thresholds, target_encoder_params, policy)
    effective_policy = "threshold" if thresholds is not None else policy
    family = model_family(base.config) if preset is not None else None
    reduced = autocast_dtype_for(next(base.parameters()).device, next(base.parameters()).dtype)
    recovery_settings = resolve_recovery(preset, recovery, recover_steps, family=family, seed=seed,
                                         autocast_dtype=str(reduced).removeprefix("torch.") if reduced else None)
    distils = recovery_settings is not None and recovery_settings.steps > 0
    sensitivity_method = sensitivity_method or default_sensitivity_method(base, distils)
    if probe_clips is None:
        probe_clips = default_probe_clips(sensitivity_method, num_samples)
    # Recovery reads the same first clips: calibration keeps them, with the stock encoder's outputs where they fit
    # distillation's target cache (one stock pass fewer).
    keep = num_samples if recovery_settings is not None and processes.count == 1 else 0
    if keep and keep * stock_output_bytes(base.config, next(base.parameters()).dtype) > TARGET_CACHE_BYTES:
        keep = 0
    stats, by_slot, kept = prepare_stats(
        base, feature_extractor, calibration, num_samples, batch_size, frames, stats_path, name=str(model),
        default_frames=DEFAULT_FRAMES_BY_POLICY[effective_policy], sensitivity=effective_policy == "sensitivity",
        probe_clips=probe_clips, progress=progress, processes=processes, sensitivity_method=sensitivity_method,
        stages=stages, balance=balance, keep=keep,
    )
    stats = dataclasses.replace(stats, slots={})  # the float64 sums are no longer needed: free them
    with stages.stage("rank choice"):
        low_rank_config, rank_policy = plan_ranks(stats, base.config, preset, thresholds, target_encoder_params, policy)
    with stages.stage("decomposition"):
        lite = decompose(base, by_slot, low_rank_config, progress=progress)
    del by_slot
    recovery_report = None
    if recovery_settings is not None:
        # Every process passes the same clips; recovery takes its own shard of them.
        outputs = None
        if len(kept.utterances) >= num_samples and processes.count == 1:
            clips = kept.utterances[:num_samples]
            outputs = kept.encoder_states[:num_samples] if kept.encoder_states is not None else None
        else:
            clips = first_clips(calibration, num_samples, balance, stages)
        with stages.stage("recovery"):
            recovery_report = recover_encoder(lite, base, feature_extractor, clips, recovery_settings,
                                              processes=processes, progress=progress, stock_outputs=outputs)
        del clips, outputs
    del kept
    if recover is not None:
        lite = recover(lite)
    recipe = Recipe(
        base_model=str(model),
        calibration=stats.calibration,
        num_utterances=stats.utterances,
        frames=stats.frames,
        rank_policy=rank_policy,
        seed=seed,
        calibration_dtype=str(dtype).removeprefix("torch."),
        extra={"recovery": recovery_recipe(recovery_report, mix_name(calibration)),
               **({"calibration_mix": stats.mix} if stats.mix else {}),
               **({"sensitivity_probe": stats.sensitivity_probe} if stats.sensitivity_probe else {}),
               # a stats file made earlier: what its stages cost then (not part of this run's stages)
               **({"stats_file_costs": stats.costs} if stats.costs and "calibration statistics" not in stages.records
                  else {})},
    )

    def write_repo():
        if not processes.is_main:
            return out_dir, None
        smoke_clips = held_out_clips(calibration, num_samples, balance=balance) if smoke_test else None
        return export(lite.to("cpu"), out_dir, str(model), recipe, base_config=base.config, smoke_clip=smoke_clips,
                      overwrite=overwrite, stages=stages)

    out_dir, smoke = processes.run(write_repo, "export")
    notes = []
    if not stats_reused and stats.utterances < num_samples:
        notes.append(f"the calibration source yielded {stats.utterances} clips of the {num_samples} asked for")
    for key, text in (("saved_instead", "the statistics could not be saved to {path}; saved to {value} instead"),
                      ("unsaved", "the statistics could not be saved to {path} ({value})")):
        if key in stats.sensitivity_probe:
            notes.append(text.format(path=stats_path, value=stats.sensitivity_probe[key]))
    return CompressResult(
        out_dir=out_dir,
        low_rank_config=low_rank_config,
        rank_policy=rank_policy,
        encoder_params=rank_policy["encoder_params"],
        stock_encoder_params=int(encoder_parameters(base.config)),
        smoke=smoke,
        calibration_clips=stats.utterances,
        calibration_seconds=stats.seconds,
        stats_reused=stats_reused,
        notes=notes,
        stages=stages.as_list(),
    )


def check_compress_inputs(model, out_dir, calibration, num_samples, batch_size, stats_path, frames, device,
                          probe_clips, overwrite, recovery, recover_steps, target_encoder_params, preset, thresholds,
                          policy, smoke_test, reuse_stats) -> Optional[dict]:
    """Every check that needs no model weights and no audio (checks.py), in the order a user would fix them;
    returns the header of an existing stats file to reuse (None: calibration will run)."""
    check_count("--num-samples", num_samples)
    check_count("--batch-size", batch_size)
    check_count("--probe-clips", probe_clips)
    check_recovery_request(recovery, recover_steps)
    check_size_target(target_encoder_params)
    check_device(device)
    sources = calibration_sources(calibration) if calibration is not None else None
    check_output_folder(out_dir, overwrite, {"MODEL": model, "--stats": stats_path,
                                             **{f"--calibration {source}": source for source in sources or ()}})
    config = check_whisper_config(check_base_model(model), model)
    check_request(config, preset, thresholds, target_encoder_params, policy)
    header = check_stats_request(stats_path, mix_name(sources) if sources else None, num_samples, frames, reuse_stats)
    needs_audio = header is None or smoke_test or recovery != "none" or recover_steps
    if needs_audio:
        clips_needed = num_samples if num_samples is not None else (header["utterances"] if header else DEFAULT_NUM_SAMPLES)
        for source in sources or (DEFAULT_CALIBRATION,):  # a mix may take fewer clips of each source
            check_data_source("--calibration", source,
                              clips_needed if len(sources or ()) == 1 and (header is None or calibration) else None)
    if header and frames is not None and frames != header["frames"] and reuse_stats:
        raise StatsMismatchError(f"{stats_path} holds statistics over {header['frames']!r} frames but {frames!r} was "
                                 "asked for; drop --frames or use another --stats file")
    return header
