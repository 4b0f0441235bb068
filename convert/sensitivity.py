"""Sensitivity: what a low-rank error in each encoder linear costs the decoder, measured without labels.

Explained variance says how much of a linear's OUTPUT a rank keeps, not how much that matters downstream. On
real tiny.en the two disagree by orders of magnitude: at the same 99% explained variance, cutting layer 0's
out_proj moves the decoder's predictions ~500 times more than cutting layer 2's q_proj (see README, "Rank
allocation"). So we measure it.

Probe set: a few calibration clips and the stock model's own greedy transcripts of them (pseudo-labels: no
references needed), decoded from the encoder outputs the calibration pass already computed where `compress`
kept them (the probe clips are the first calibration clips), so the encoder does not run on them again. A
multilingual model transcribes each clip in its own language: the one its source states (`Utterance.language`),
else the one the model detects, so a mix of languages probes every language in it. For a model M, the probe
loss is the mean over transcript tokens of KL(stock ‖ M) between next-token distributions, teacher-forced on the
stock transcripts.

Sensitivity of a slot s: factor only s, at the smallest multiple-of-16 rank r whose explained variance reaches
`level`, and divide the probe loss by the fraction of variance discarded:

    sensitivity[s] = KL(stock ‖ stock with s at rank r) / (1 − explained_variance_s(r))

`ranks.ranks_for_budget` then models the cost of any rank as sensitivity[s] · (1 − explained_variance_s(r)) and
spends a parameter budget where it costs least. One probe per slot: 24 for tiny, 36 for base, 192 for large-v3.
Each probe starts from the cached stock input of its slot's layer (the layers before it are unchanged), runs
the rest of the encoder with that one slot factored, then the decoder, in batches of clips, on the model's
device and dtype. `fisher.py` estimates the same quantity for every slot from one pass.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch

from configuration_lite_whisper import ATTENTION_SLOTS, slot_shape

from .calibration import SlotKey, encoder_linear, encoder_of, encoder_stem, run_layer
from .decomposition import Spectrum, low_rank_linear, useful_rank_limit
from .precision import cast_copy
from .ranks import RANK_MULTIPLE

DEFAULT_PROBE_CLIPS = 32
DEFAULT_LEVEL = 0.99  # explained variance at which each slot is probed
# Length limit of a probe transcript, against repetition loops. Passed as `max_length`, which Whisper's generate
# counts from the end of the decoder prompt: `max_new_tokens` beside the max_length every Whisper generation config
# carries makes transformers warn on every batch.
MAX_LENGTH = 128
MAX_TRANSCRIPTION_BATCH = 32  # clips per generate call at most (see transcription_batch_size)
TRANSCRIPTION_CACHE_BYTES = 1e9  # what the cross-attention cache of one generate call may hold


@dataclass
class ProbeSet:
    """Probe clips with the stock model's transcripts and next-token log-probabilities."""

    features: torch.Tensor  # [clips, mels, frames]
    decoder_ids: torch.Tensor  # [clips, T]: decoder prompt + stock greedy transcript (+ padding)
    mask: torch.Tensor  # [clips, T-1] bool: positions whose next token is part of the transcript (eos included)
    reference: Optional[torch.Tensor]  # [tokens, vocab] float32: the stock model's log-probs at the masked positions
    batch_size: int
    languages: List[Optional[str]] = field(default_factory=list)  # per clip; None for an English-only model
    detected: int = 0  # how many of those the model detected (the clip's source did not say)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


def decoder_prompt(generation_config, language: Optional[str]) -> List[int]:
    """The ids Whisper's generate puts before a transcript without timestamps: start of transcript, then (for a
    multilingual model, `language` a Whisper code) the language and the transcribe task, then no-timestamps where
    the generation config has that token (a bare config, e.g. of a random test model, does not)."""
    prompt = [generation_config.decoder_start_token_id]
    if language is not None:
        prompt += [generation_config.lang_to_id[f"<|{language}|>"], generation_config.task_to_id["transcribe"]]
    no_timestamps = getattr(generation_config, "no_timestamps_token_id", None)
    return prompt + ([no_timestamps] if no_timestamps is not None else [])


def _generate_kwargs(model, languages: Optional[List[str]] = None) -> dict:
    kwargs = dict(max_length=min(MAX_LENGTH, model.config.max_target_positions // 2), num_beams=1, do_sample=False)
    if languages:  # a multilingual model: transcribe each clip in its language
        kwargs.update(task="transcribe", language=list(languages))
    return kwargs


def clip_languages(model, features: torch.Tensor, given: List[Optional[str]], batch_size: int,
                   encoder_states: Optional[torch.Tensor] = None) -> List[Optional[str]]:
    """Each clip's language for a multilingual model: the given one, else the one the model detects from its
    first 30 s window (from `encoder_states` [clips, positions, d] when given, else from `features`); [None, ...]
    for an English-only model."""
    if not getattr(model.generation_config, "is_multilingual", False):
        return [None] * len(given)
    languages = list(given)
    unknown = [position for position, language in enumerate(languages) if language is None]
    if unknown:
        code_of = {token_id: token.strip("<|>") for token, token_id in model.generation_config.lang_to_id.items()}
        for start in range(0, len(unknown), batch_size):
            positions = unknown[start : start + batch_size]
            inputs = _encoder_inputs(model, features, encoder_states, positions)
            with torch.inference_mode():
                detected = model.detect_language(**inputs)  # [b] language token ids
            for position, token_id in zip(positions, detected.tolist()):
                languages[position] = code_of[token_id]
    return languages


def _encoder_inputs(model, features: torch.Tensor, encoder_states: Optional[torch.Tensor], rows) -> dict:
    """Keyword arguments that give the model clips `rows`: their encoder output when it is known (no encoder pass),
    else their log-mel features; on the model's device and dtype."""
    from transformers.modeling_outputs import BaseModelOutput

    parameter = next(model.parameters())
    if encoder_states is not None:
        states = encoder_states[rows].to(device=parameter.device, dtype=parameter.dtype)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=states)}
    return {"input_features": features[rows].to(device=parameter.device, dtype=parameter.dtype)}


def _log_probs(model, probes_features, decoder_ids, mask, batch_size: int,
               encoder_states: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Teacher-forced next-token log-probs [tokens, vocab] at the masked positions."""
    parameter = next(model.parameters())
    chunks = []
    with torch.inference_mode():
        for start in range(0, decoder_ids.shape[0], batch_size):
            stop = start + batch_size
            inputs = _encoder_inputs(model, probes_features, encoder_states, slice(start, stop))
            ids = decoder_ids[start:stop, :-1].to(parameter.device)
            logits = model(**inputs, decoder_input_ids=ids).logits  # [b, T-1, vocab]
            chunks.append(torch.log_softmax(logits.float(), dim=-1)[mask[start:stop].to(parameter.device)].cpu())
    return torch.cat(chunks)


def transcription_batch_size(config, dtype: torch.dtype, budget: float = TRANSCRIPTION_CACHE_BYTES) -> int:
    """Clips per `generate` call: as many as keep the cross-attention cache (keys and values of every decoder layer
    over all encoder positions) within `budget`, at most MAX_TRANSCRIPTION_BATCH (in bfloat16: 32 for tiny, base
    and turbo, 18 for small, 6 for medium, 4 for large-v3). Greedy decoding pays per step, not per clip,
    so larger batches cost less per clip. The cache is most of what generate holds: 32 base clips (18 MB of cache
    each) raise the transcription's peak by 0.9 GB."""
    per_clip = (2 * config.decoder_layers * config.max_source_positions * config.d_model
                * torch.finfo(dtype).bits // 8)
    return int(max(1, min(MAX_TRANSCRIPTION_BATCH, budget // per_clip)))


def probe_set(model, feature_extractor, clips: Iterable, batch_size: int = 8, reference: bool = True,
              encoder_states: Optional[torch.Tensor] = None,
              transcribe_dtype: Optional[torch.dtype] = None) -> ProbeSet:
    """Transcribe `clips` (audio.Utterance) greedily with the stock `model` and keep its predictions (with
    `reference`, also its teacher-forced log-probs, which `probe_loss` compares against, `batch_size` clips at a
    time; the Fisher estimate does not need them). `encoder_states` [clips, positions, d]: the stock encoder's
    outputs on these clips, where calibration has already computed them; the encoder then does not run again.
    `transcribe_dtype`: transcribe with a copy of the model cast to it (the Fisher estimate's transcripts, which
    only say where to look; the reference log-probs are always in the model's dtype).

    Clips are transcribed in order of duration (similar transcript lengths share a batch), `transcription_batch_size`
    at a time, and returned in the order given."""
    clips = list(clips)
    audios = [clip.audio for clip in clips]
    if not audios:
        raise ValueError("a sensitivity probe needs at least one clip")
    inputs = feature_extractor(audios, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt",
                               return_attention_mask=True)  # without it, generate warns on a batch
    features = inputs.input_features
    given = [getattr(clip, "language", None) for clip in clips]
    if encoder_states is not None and encoder_states.shape[0] != len(clips):
        raise ValueError(f"{encoder_states.shape[0]} encoder outputs for {len(clips)} probe clips")
    transcriber = cast_copy(model, transcribe_dtype) if transcribe_dtype is not None else model
    parameter = next(transcriber.parameters())
    generation_batch = transcription_batch_size(model.config, parameter.dtype)
    languages = clip_languages(transcriber, features, given, generation_batch, encoder_states)
    by_duration = sorted(range(len(audios)), key=lambda position: len(audios[position]))
    transcripts = [None] * len(audios)
    config = model.generation_config
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    ends = {eos, config.pad_token_id} - {None}
    prompts = [None] * len(audios)  # per clip: its decoder prompt
    with torch.inference_mode():
        for start in range(0, len(audios), generation_batch):
            rows = by_duration[start : start + generation_batch]
            mask = inputs.attention_mask[rows].to(parameter.device)
            kwargs = _generate_kwargs(transcriber, [languages[row] for row in rows if languages[row]])
            # Plain generate returns the transcripts alone ([b, ≤ max_length], padded). With
            # return_dict_in_generate it also returns its cache, split per clip and stacked again: on 32 base clips
            # 54 MB per clip at the peak against 20 MB (18 MB of it the cross-attention cache), and 10-20% slower.
            generated = transcriber.generate(**_encoder_inputs(transcriber, features, encoder_states, rows),
                                             attention_mask=mask, **kwargs)
            for row, ids in zip(rows, generated.cpu().tolist()):
                text = next((ids[:position] for position, token in enumerate(ids) if token in ends), ids)
                # generate stopped at eos unless it ran out of tokens (max_length counts them after the prompt)
                ending = [eos] if len(text) < kwargs["max_length"] else []
                prompts[row] = decoder_prompt(config, languages[row])
                transcripts[row] = torch.tensor(prompts[row] + text + ending)
    del transcriber
    decoder_ids = torch.nn.utils.rnn.pad_sequence(transcripts, batch_first=True, padding_value=eos)  # [clips, T]
    # Token t+1 is predicted at position t: score the transcript's tokens and its eos. The decoder prompt (start of
    # transcript, language, task, no-timestamps) is forced, not predicted.
    mask = torch.zeros(decoder_ids.shape[0], decoder_ids.shape[1] - 1, dtype=torch.bool)  # [clips, T-1]
    for row, (prompt, sequence) in enumerate(zip(prompts, transcripts)):
        mask[row, len(prompt) - 1 : len(sequence) - 1] = True
    log_probs = _log_probs(model, features, decoder_ids, mask, batch_size, encoder_states) if reference else None
    detected = sum(given_language is None and language is not None for given_language, language in zip(given, languages))
    return ProbeSet(features, decoder_ids, mask, log_probs, batch_size, languages, detected)


def _mean_kl(sums: torch.Tensor, processes=None) -> float:
    """Mean KL per token from float64 [Σ KL, token count], summed across processes when given."""
    if processes is not None:
        sums = processes.sum(sums)
    return float(sums[0] / sums[1])


def _kl_sums(reference: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    kl = (reference.exp() * (reference - log_probs)).sum(dim=-1)  # [tokens]
    return torch.stack([kl.double().sum(), torch.tensor(kl.numel(), dtype=torch.float64)])


def probe_loss(model, probes: ProbeSet, processes=None) -> float:
    """Mean KL(stock ‖ model) per transcript token, teacher-forced on the stock transcripts.

    Under data parallelism (`processes`, a distributed.Processes) each process holds its shard of the probe
    clips and the float64 sum of KL and the token count are summed across processes: every process gets the
    mean over all probe tokens."""
    log_probs = _log_probs(model, probes.features, probes.decoder_ids, probes.mask, probes.batch_size)
    return _mean_kl(_kl_sums(probes.reference, log_probs), processes)


def _swap(layer, slot: str, module) -> torch.nn.Module:
    """Put `module` into `slot` of an encoder layer; returns the module it replaced."""
    owner = layer.self_attn if slot in ATTENTION_SLOTS else layer
    previous = getattr(owner, slot)
    setattr(owner, slot, module)
    return previous


def probe_rank(curve: torch.Tensor, level: float, in_features: int, out_features: int) -> Optional[int]:
    """The smallest multiple of 16 whose explained variance reaches `level`, at most the largest multiple of 16
    that saves parameters; None when no rank saves parameters (the slot always stays dense)."""
    largest = useful_rank_limit(in_features, out_features) // RANK_MULTIPLE * RANK_MULTIPLE
    if largest < RANK_MULTIPLE:
        return None
    reached = int((curve < level).sum()) + 1  # first rank with curve[rank-1] >= level
    return max(RANK_MULTIPLE, min(-(-reached // RANK_MULTIPLE) * RANK_MULTIPLE, largest))


def measure_sensitivity(
    model,
    probes: ProbeSet,
    spectra_by_slot: Dict[SlotKey, Spectrum],
    level: float = DEFAULT_LEVEL,
    progress: bool = False,
    processes=None,
) -> Dict[SlotKey, float]:
    """sensitivity[slot]: probe loss per unit of discarded explained variance, one slot factored at a time.

    Layer by layer: the stock hidden states entering the layer are computed once for all probe clips
    ([clips, positions, d], on the model's device and dtype); each of the layer's slots is then factored in
    place, the encoder runs from that layer on and the decoder scores the stock transcripts; the slot is put
    back. With `processes`, `probes` is this process's shard and every process returns the same values."""
    from tqdm.auto import tqdm
    from transformers.modeling_outputs import BaseModelOutput

    config = model.config
    encoder = encoder_of(model)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    size = probes.batch_size
    clips = probes.decoder_ids.shape[0]
    mask = probes.mask.to(device)

    def batches(tensor):
        return [tensor[start : start + size] for start in range(0, clips, size)]

    sensitivity = {}
    bar = tqdm(total=len(spectra_by_slot), desc="sensitivity", unit="linear", disable=not progress)
    with torch.inference_mode():
        hidden = torch.cat([encoder_stem(encoder, features.to(device=device, dtype=dtype))
                            for features in batches(probes.features)])  # [clips, positions, d]: layer 0's input
        for layer_index, layer in enumerate(encoder.layers):
            for key in [key for key in spectra_by_slot if key[0] == layer_index]:
                slot = key[1]
                curve = spectra_by_slot[key].explained_variance
                rank = probe_rank(curve, level, *slot_shape(config, slot))
                bar.update(1)
                if rank is None:
                    sensitivity[key] = 0.0
                    continue
                factored = low_rank_linear(encoder_linear(encoder, layer_index, slot), spectra_by_slot[key], rank)
                dense = _swap(layer, slot, factored)
                sums = torch.zeros(2, dtype=torch.float64)
                try:
                    start = 0
                    for states, ids in zip(batches(hidden), batches(probes.decoder_ids)):
                        for later in encoder.layers[layer_index:]:
                            states = run_layer(later, states)
                        encoded = BaseModelOutput(last_hidden_state=encoder.layer_norm(states))
                        logits = model(encoder_outputs=encoded, decoder_input_ids=ids[:, :-1].to(device)).logits
                        kept = mask[start : start + len(ids)]
                        log_probs = torch.log_softmax(logits.float(), dim=-1)[kept].cpu()
                        offset = int(probes.mask[:start].sum())
                        sums += _kl_sums(probes.reference[offset : offset + log_probs.shape[0]], log_probs)
                        start += len(ids)
                finally:
                    _swap(layer, slot, dense)
                discarded = 1.0 - float(curve[rank - 1])
                loss = _mean_kl(sums, processes)
                # KL is >= 0; a slightly negative estimate is rounding noise: the slot is insensitive
                sensitivity[key] = max(loss, 0.0) / discarded if discarded > 0 else 0.0
            hidden = torch.cat([run_layer(layer, states) for states in batches(hidden)])  # the next layer's input
    bar.close()
    return {key: sensitivity[key] for key in spectra_by_slot}


def probe_description(probes: ProbeSet, level: float, clips_source: Optional[str] = None, processes=None) -> dict:
    """What the sensitivities were measured on (over all processes' shards): recorded with them in the stats
    file and README."""
    counts = torch.tensor([probes.features.shape[0], probes.tokens, probes.detected], dtype=torch.int64)
    languages = [language for language in probes.languages if language]
    if processes is not None:
        counts = processes.sum(counts)
        languages = processes.gather(languages)
    description = {"clips": int(counts[0]), "tokens": int(counts[1]), "level": level, "source": clips_source or ""}
    if languages:  # a multilingual model: clips per language, and how many languages were detected
        description["languages"] = dict(sorted(Counter(languages).items(), key=lambda item: (-item[1], item[0])))
        description["detected_languages"] = int(counts[2])
    return description
