"""Sensitivity: what a low-rank error in each encoder linear costs the decoder, measured without labels.

Explained variance says how much of a linear's OUTPUT a rank keeps, not how much that matters downstream. On
real tiny.en the two disagree by orders of magnitude: at the same 99% explained variance, cutting layer 0's
out_proj moves the decoder's predictions ~500 times more than cutting layer 2's q_proj (see README, "Rank
allocation"). So we measure it.

Probe set: a few calibration clips and the stock model's own greedy transcripts of them (pseudo-labels: no
references needed). A multilingual model transcribes each clip in its own language: the one its source states
(`Utterance.language`), else the one the model detects, so a mix of languages probes every language in it. For a model M, the probe loss is the mean over transcript tokens of
KL(stock ‖ M) between next-token distributions, teacher-forced on the stock transcripts.

Sensitivity of a slot s: factor only s, at the smallest multiple-of-16 rank r whose explained variance reaches
`level`, and divide the probe loss by the fraction of variance discarded:

    sensitivity[s] = KL(stock ‖ stock with s at rank r) / (1 − explained_variance_s(r))

`ranks.ranks_for_budget` then models the cost of any rank as sensitivity[s] · (1 − explained_variance_s(r)) and
spends a parameter budget where it costs least. One probe per slot: 24 for tiny, 36 for base, 192 for large-v3.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch

from configuration_lite_whisper import slot_shape

from .calibration import SlotKey
from .decomposition import Spectrum, decompose, useful_rank_limit
from .ranks import RANK_MULTIPLE

DEFAULT_PROBE_CLIPS = 32
DEFAULT_LEVEL = 0.99  # explained variance at which each slot is probed
# Length limit of a probe transcript, against repetition loops. Passed as `max_length`, which Whisper's generate
# counts from the end of the decoder prompt: `max_new_tokens` beside the max_length every Whisper generation config
# carries makes transformers warn on every batch.
MAX_LENGTH = 128


@dataclass
class ProbeSet:
    """Probe clips with the stock model's transcripts and next-token log-probabilities."""

    features: torch.Tensor  # [clips, mels, frames]
    decoder_ids: torch.Tensor  # [clips, T]: decoder prompt + stock greedy transcript (+ padding)
    mask: torch.Tensor  # [clips, T-1] bool: positions whose next token is part of the transcript (eos included)
    reference: torch.Tensor  # [tokens, vocab] float32: the stock model's log-probs at the masked positions
    batch_size: int
    languages: List[Optional[str]] = field(default_factory=list)  # per clip; None for an English-only model
    detected: int = 0  # how many of those the model detected (the clip's source did not say)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


def _generate_kwargs(model, languages: Optional[List[str]] = None) -> dict:
    kwargs = dict(max_length=min(MAX_LENGTH, model.config.max_target_positions // 2), num_beams=1, do_sample=False)
    if languages:  # a multilingual model: transcribe each clip in its language
        kwargs.update(task="transcribe", language=list(languages))
    return kwargs


def clip_languages(model, features: torch.Tensor, given: List[Optional[str]], batch_size: int) -> List[Optional[str]]:
    """Each clip's language for a multilingual model: the given one, else the one the model detects from its
    first 30 s window; [None, ...] for an English-only model."""
    if not getattr(model.generation_config, "is_multilingual", False):
        return [None] * len(given)
    languages = list(given)
    unknown = [position for position, language in enumerate(languages) if language is None]
    if unknown:
        code_of = {token_id: token.strip("<|>") for token, token_id in model.generation_config.lang_to_id.items()}
        parameter = next(model.parameters())
        for start in range(0, len(unknown), batch_size):
            positions = unknown[start : start + batch_size]
            batch = features[positions].to(device=parameter.device, dtype=parameter.dtype)
            with torch.inference_mode():
                detected = model.detect_language(input_features=batch)  # [b] language token ids
            for position, token_id in zip(positions, detected.tolist()):
                languages[position] = code_of[token_id]
    return languages


def _log_probs(model, probes_features, decoder_ids, mask, batch_size: int) -> torch.Tensor:
    """Teacher-forced next-token log-probs [tokens, vocab] at the masked positions."""
    parameter = next(model.parameters())
    chunks = []
    with torch.inference_mode():
        for start in range(0, decoder_ids.shape[0], batch_size):
            stop = start + batch_size
            features = probes_features[start:stop].to(device=parameter.device, dtype=parameter.dtype)
            ids = decoder_ids[start:stop, :-1].to(parameter.device)
            logits = model(input_features=features, decoder_input_ids=ids).logits  # [b, T-1, vocab]
            chunks.append(torch.log_softmax(logits.float(), dim=-1)[mask[start:stop].to(parameter.device)].cpu())
    return torch.cat(chunks)


def probe_set(model, feature_extractor, clips: Iterable, batch_size: int = 8) -> ProbeSet:
    """Transcribe `clips` (audio.Utterance) greedily with the stock `model` and keep its predictions."""
    clips = list(clips)
    audios = [clip.audio for clip in clips]
    if not audios:
        raise ValueError("a sensitivity probe needs at least one clip")
    inputs = feature_extractor(audios, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt",
                               return_attention_mask=True)  # without it, generate warns on a batch
    features = inputs.input_features
    given = [getattr(clip, "language", None) for clip in clips]
    languages = clip_languages(model, features, given, batch_size)
    parameter = next(model.parameters())
    transcripts = []
    with torch.inference_mode():
        for start in range(0, len(audios), batch_size):
            batch = features[start : start + batch_size].to(device=parameter.device, dtype=parameter.dtype)
            mask = inputs.attention_mask[start : start + batch_size].to(parameter.device)
            # The full sequences: decoder prompt, transcript, eos (plain generate drops the prompt and eos).
            kwargs = _generate_kwargs(model, [language for language in languages[start : start + batch_size] if language])
            output = model.generate(batch, attention_mask=mask, return_dict_in_generate=True, **kwargs)
            transcripts.append(output["sequences"].cpu())
    width = max(ids.shape[1] for ids in transcripts)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    decoder_ids = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=eos) for ids in transcripts])
    # Token t+1 is predicted at position t; keep the transcript's tokens and its first eos. The decoder prompt
    # (start of transcript, language, task, no-timestamps) is forced, not predicted: its ids all lie above eos.
    predicted = decoder_ids[:, 1:]  # [clips, T-1]
    after_first_eos = (predicted == eos).cumsum(dim=1) - (predicted == eos).int() > 0
    prompt_length = (decoder_ids <= eos).int().argmax(dim=1)  # [clips]: position of the first transcript token
    in_prompt = torch.arange(1, decoder_ids.shape[1])[None, :] < prompt_length[:, None]
    mask = ~after_first_eos & ~in_prompt  # [clips, T-1]
    reference = _log_probs(model, features, decoder_ids, mask, batch_size)
    detected = sum(given_language is None and language is not None for given_language, language in zip(given, languages))
    return ProbeSet(features, decoder_ids, mask, reference, batch_size, languages, detected)


def probe_loss(model, probes: ProbeSet, processes=None) -> float:
    """Mean KL(stock ‖ model) per transcript token, teacher-forced on the stock transcripts.

    Under data parallelism (`processes`, a distributed.Processes) each process holds its shard of the probe
    clips and the float64 sum of KL and the token count are summed across processes: every process gets the
    mean over all probe tokens."""
    log_probs = _log_probs(model, probes.features, probes.decoder_ids, probes.mask, probes.batch_size)
    kl = (probes.reference.exp() * (probes.reference - log_probs)).sum(dim=-1)  # [tokens]
    sums = torch.stack([kl.double().sum(), torch.tensor(kl.numel(), dtype=torch.float64)])
    if processes is not None:
        sums = processes.sum(sums)
    return float(sums[0] / sums[1])


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

    With `processes`, `probes` is this process's shard and every process returns the same values."""
    from tqdm.auto import tqdm

    config = model.config
    sensitivity = {}
    for key, spectrum_ in tqdm(spectra_by_slot.items(), desc="sensitivity", unit="linear", disable=not progress):
        layer_index, slot = key
        curve = spectrum_.explained_variance
        rank = probe_rank(curve, level, *slot_shape(config, slot))
        if rank is None:
            sensitivity[key] = 0.0
            continue
        low_rank_config: List[dict] = [{} for _ in range(config.encoder_layers)]
        low_rank_config[layer_index][slot] = rank
        discarded = 1.0 - float(curve[rank - 1])
        loss = probe_loss(decompose(model, spectra_by_slot, low_rank_config), probes, processes)
        # KL is >= 0; a slightly negative estimate is rounding noise: the slot is insensitive
        sensitivity[key] = max(loss, 0.0) / discarded if discarded > 0 else 0.0
    return sensitivity


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
