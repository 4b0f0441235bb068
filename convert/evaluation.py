"""Evaluate a Whisper or LiteWhisper model: WER, speed (RTFx), encoder size and cost.

    model, processor = load_model("whisper-tiny.en")                       # any folder or Hub id
    texts = transcribe(model, processor, iter_utterances("clips/"), batch_size=8)
    wer = word_error_rate(references, texts)                               # percent, English normaliser
    results = evaluate("lite-whisper-tiny.en-acc", ["clips/", "hf://openslr/librispeech_asr:clean/test"])

Conventions (those of the Open ASR leaderboard):
- Greedy decoding (`num_beams=1, do_sample=False`) is the primary metric. English-only (`.en`) models get no
  language or task; multilingual ones are told `task="transcribe"` and the set's language: `language` when
  given, else the set's own (its metadata.csv `language` column, or the language a Hub config names), else
  English. `language="detect"` lets the model detect each utterance's language instead, and the results then
  report language-identification accuracy against the set's language.
- Each set is scored in its language: English text through Whisper's English normaliser (transformers'
  `EnglishTextNormalizer` with Whisper's British->American spelling map, `data/english_spelling.json`, OpenAI's
  `english.json`), any other language through Whisper's language-independent `BasicTextNormalizer`, as Whisper's
  and the Open ASR leaderboard's multilingual evaluations do. Languages written without spaces between words
  (NO_SPACE_LANGUAGES: Chinese, Japanese, Thai, ...) are scored by character error rate (spaces removed), all
  others by WER; each set's result names its `language`, `metric`, `error_rate` and `normalizer`.
- Error rates are in percent, computed with jiwer at corpus level over each set (total edits / total reference
  words or characters), and `mean_wer` is the unweighted mean of the sets' error rates.
- Utterances whose reference is missing or empty after normalisation cannot be scored: they are skipped
  before transcription and counted (`skipped_empty_references`).
- RTFx is audio seconds / wall seconds, where the wall time covers feature extraction, `generate` and
  decoding of each batch (reading and resampling the audio files is not counted).
- Encoder parameters exclude the sinusoidal position table; GFLOPs are per 30 s window (see `measures`).

`evaluate` returns (and `lite-whisper eval --json` writes) the schema that benchmarks and model cards read:
`{"model", "encoder_params", "decoder_params", "encoder_gflops", "mean_wer", "datasets": {NAME: {"language",
"metric", "error_rate", "wer" | "cer", "num_utterances", "audio_seconds", "rtfx", ...}}, "machine": {...}, ...}`.
"""

import datetime
import functools
import itertools
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .audio import (
    SAMPLING_RATE,
    Utterance,
    batches,
    folder_entries,
    iter_utterances,
    language_code,
    parse_hub_spec,
    source_name,
)
from .measures import encoder_flops, encoder_parameters

SPELLING_MAP = Path(__file__).resolve().parent / "data" / "english_spelling.json"
NORMALIZER_NAME = "whisper-english (transformers EnglishTextNormalizer + Whisper english.json spelling map)"
BASIC_NORMALIZER_NAME = "whisper-basic (transformers BasicTextNormalizer, language-independent)"
# Languages written without spaces between words: scored by character error rate (Whisper's own evaluation
# does the same for these).
NO_SPACE_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})
DETECT = "detect"  # `language` value: let the model identify each utterance's language
GREEDY = {"num_beams": 1, "do_sample": False}
# Decoding safeguard, an option reported beside greedy and never instead of it: Whisper's temperature fallback. A
# segment is decoded again at the next temperature when its compression ratio (transformers computes it with
# zlib on the token ids, hence 1.35 rather than OpenAI's 2.4 on text) is above the threshold or its mean token
# log-probability below -1. Sampling is seeded with FALLBACK_SEED at the start of each transcription.
FALLBACK = {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 1.35, "logprob_threshold": -1.0}
FALLBACK_SEED = 0
WINDOW_SECONDS = 30.0

# The English test sets of the Open ASR leaderboard (hf-audio/esb-datasets-test-only-sorted), for users online.
OPEN_ASR_LEADERBOARD = "open-asr-leaderboard"
OPEN_ASR_LEADERBOARD_SETS = tuple(
    f"hf://hf-audio/esb-datasets-test-only-sorted:{config}/{split}"
    for config, split in (
        ("ami", "test"),
        ("earnings22", "test"),
        ("gigaspeech", "test"),
        ("librispeech", "test.clean"),
        ("librispeech", "test.other"),
        ("spgispeech", "test"),
        ("tedlium", "test"),
        ("voxpopuli", "test"),
    )
)


class EvaluationError(ValueError):
    """An evaluation cannot produce a meaningful number (no scorable references, mismatched lists)."""


# ---------------------------------------------------------------------------------------------------------------
# Text normalisation and WER


@functools.lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's English text normaliser (the one the Open ASR leaderboard uses), with the spelling map."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    if not SPELLING_MAP.is_file():
        raise FileNotFoundError(
            f"Whisper's English spelling map is missing: {SPELLING_MAP} (it ships with lite_whisper_convert)"
        )
    return EnglishTextNormalizer(json.loads(SPELLING_MAP.read_text(encoding="utf-8")))


@functools.lru_cache(maxsize=1)
def basic_normalizer() -> Callable[[str], str]:
    """Whisper's language-independent normaliser: lower case, bracketed text and symbols removed, spaces collapsed."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def is_english(language: Optional[str]) -> bool:
    return language in (None, "en")


def normalizer_name(language: Optional[str] = "en") -> str:
    return NORMALIZER_NAME if is_english(language) else BASIC_NORMALIZER_NAME


def metric_for(language: Optional[str] = "en") -> str:
    """'cer' for languages written without spaces between words, else 'wer'."""
    return "cer" if language in NO_SPACE_LANGUAGES else "wer"


def normalize(text: Optional[str], language: Optional[str] = "en") -> str:
    """`text` after Whisper's normaliser for `language` (English's, else the basic one); '' for None."""
    normalizer = english_normalizer() if is_english(language) else basic_normalizer()
    return normalizer(text or "").strip()


def error_rate(references: Sequence[str], hypotheses: Sequence[str], language: Optional[str] = "en") -> float:
    """Corpus-level error rate in percent, in `language`'s metric (metric_for) after its normaliser on both sides.

    Total substitutions + deletions + insertions over total reference words (WER), or over total reference
    characters with spaces removed (CER), computed with jiwer. Every reference must be non-empty after
    normalisation (filter those first: they cannot be scored).
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise EvaluationError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise EvaluationError("no references to score")
    normalized_references = [normalize(text, language) for text in references]
    empty = [index for index, text in enumerate(normalized_references) if not text]
    if empty:
        raise EvaluationError(
            f"{len(empty)} reference(s) are empty after normalisation (first at index {empty[0]}): "
            "they cannot be scored; drop them before computing the error rate"
        )
    normalized_hypotheses = [normalize(text, language) for text in hypotheses]
    if metric_for(language) == "cer":
        return 100.0 * jiwer.cer([text.replace(" ", "") for text in normalized_references],
                                 [text.replace(" ", "") for text in normalized_hypotheses])
    return 100.0 * jiwer.wer(normalized_references, normalized_hypotheses)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], language: Optional[str] = "en") -> float:
    """Corpus-level WER in percent after Whisper's normaliser for `language` (English's by default)."""
    if metric_for(language) != "wer":
        raise EvaluationError(f"{language!r} is written without spaces between words: score it by error_rate (CER)")
    return error_rate(references, hypotheses, language)


# ---------------------------------------------------------------------------------------------------------------
# Models


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device) -> torch.dtype:
    """float32 on CPU (fp16 matmuls are slow or missing there), float16 on GPUs."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def load_model(model_id_or_path, device: Optional[str] = None, dtype: Optional[torch.dtype] = None):
    """(model, processor) for any Whisper or LiteWhisper folder or Hub id, in eval mode on `device`.

    Loaded through the Auto classes with `trust_remote_code=True`, so stock Whisper and LiteWhisper (whose code
    travels in the repo) load the same way. The weights are cast to `dtype` (default: float32 on CPU, float16
    on GPU), whatever dtype they were saved in.
    """
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    import configuration_lite_whisper  # noqa: F401  registers "lite-whisper": AutoProcessor then never prompts

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    # Cast after loading: from_pretrained's dtype keyword is `torch_dtype` before transformers 4.56.
    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(model_id_or_path), trust_remote_code=True)
    model = model.to(device=device, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(str(model_id_or_path), trust_remote_code=True)
    return model, processor


def is_multilingual(model) -> bool:
    """False for English-only (`.en`) checkpoints, which must not be given a language or task."""
    generation_config = model.generation_config
    flag = getattr(generation_config, "is_multilingual", None)
    if flag is not None:
        return bool(flag)
    return bool(getattr(generation_config, "lang_to_id", None))


def generation_kwargs(model, language: Optional[str] = "en", generate_kwargs: Optional[dict] = None,
                      fallback: bool = False) -> dict:
    """Greedy decoding plus language/task for multilingual models (none for `.en` ones); caller's keys win.
    With `fallback`, Whisper's temperature fallback (FALLBACK) on top of greedy."""
    kwargs = dict(GREEDY)
    if fallback:
        kwargs.update(FALLBACK)
    if is_multilingual(model):
        kwargs["task"] = "transcribe"
        if language and language != DETECT:
            kwargs["language"] = language
    kwargs.update(generate_kwargs or {})
    return kwargs


def model_sizes(model) -> dict:
    """Encoder parameters (no sinusoidal table) and GFLOPs per 30 s window from the config; decoder parameters."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model.decoder
    return {
        "encoder_params": int(encoder_parameters(model.config)),
        "decoder_params": int(sum(parameter.numel() for parameter in decoder.parameters())),
        "encoder_gflops": encoder_flops(model.config) / 1e9,
    }


def model_type(model) -> str:
    """The serialised model type: 'lite-whisper' for LiteWhisper, 'whisper' for stock (the runtime value lies)."""
    return type(model.config).model_type


# ---------------------------------------------------------------------------------------------------------------
# Transcription


def _features(processor, audios: List[np.ndarray], device, dtype) -> Tuple[dict, bool]:
    """Log-mel inputs for one batch, and whether it needs long-form (sequential 30 s window) decoding."""
    feature_extractor = getattr(processor, "feature_extractor", processor)
    window = feature_extractor.n_samples
    long_form = any(len(audio) > window for audio in audios)
    if long_form:
        inputs = feature_extractor(
            audios, sampling_rate=SAMPLING_RATE, return_tensors="pt", truncation=False, padding="longest",
            return_attention_mask=True,
        )
    else:  # the mask too: without it, generate warns on every batch (Whisper's pad token is its eos)
        inputs = feature_extractor(audios, sampling_rate=SAMPLING_RATE, return_tensors="pt", return_attention_mask=True)
    inputs = {
        key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for key, value in inputs.items()
        if key in ("input_features", "attention_mask")
    }
    return inputs, long_form


def detect_languages(model, input_features: torch.Tensor) -> List[str]:
    """The language code a multilingual model identifies in each item's first 30 s window."""
    window = model.config.max_source_positions * 2  # mel frames per 30 s window
    code_of = {token_id: token.strip("<|>") for token, token_id in model.generation_config.lang_to_id.items()}
    with torch.inference_mode():
        token_ids = model.detect_language(input_features=input_features[..., :window])
    return [code_of[token_id] for token_id in token_ids.tolist()]


def transcribe_batches(
    model,
    processor,
    utterances: Iterable[Utterance],
    batch_size: int = 8,
    language: Optional[str] = "en",
    generate_kwargs: Optional[dict] = None,
    fallback: bool = False,
) -> Iterator[Tuple[List[Utterance], List[str], float]]:
    """Yield (batch, hypotheses, wall seconds) per batch; the time covers features, generate and decoding.

    With `language` None or "detect", a multilingual model identifies each utterance's language (from its first
    30 s) and transcribes it in that language; the code is stored in `utterance.detected_language`."""
    kwargs = generation_kwargs(model, language, generate_kwargs, fallback)
    detect = is_multilingual(model) and language in (None, DETECT) and "language" not in kwargs
    if fallback:  # sampling at temperatures above 0: reproducible from a fixed seed
        torch.manual_seed(FALLBACK_SEED)
    device, dtype = model.device, model.dtype
    for batch in batches(utterances, batch_size):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        inputs, long_form = _features(processor, [utterance.audio for utterance in batch], device, dtype)
        batch_kwargs = dict(kwargs)
        if detect:
            languages = detect_languages(model, inputs["input_features"])
            batch_kwargs["language"] = languages
            for utterance, detected in zip(batch, languages):
                utterance.detected_language = detected
        if long_form:  # audio over 30 s: Whisper's sequential long-form decoding over 30 s windows
            batch_kwargs.setdefault("return_timestamps", True)
            batch_kwargs.setdefault("condition_on_prev_tokens", False)
        with torch.inference_mode():
            token_ids = model.generate(**inputs, **batch_kwargs)
        if not isinstance(token_ids, torch.Tensor):  # generate(return_dict_in_generate=True)
            token_ids = token_ids["sequences"]
        texts = [text.strip() for text in processor.batch_decode(token_ids, skip_special_tokens=True)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield batch, texts, time.perf_counter() - start


def transcribe(
    model,
    processor,
    utterances: Iterable[Utterance],
    batch_size: int = 8,
    language: Optional[str] = "en",
    generate_kwargs: Optional[dict] = None,
    fallback: bool = False,
) -> List[str]:
    """Transcribe `utterances` (16 kHz `Utterance`s) in batches with greedy decoding; one text per utterance.

    English-only models get no language/task; multilingual ones get `language` (None: detect) and
    task "transcribe". `generate_kwargs` are passed to `model.generate` and override the defaults.
    Audio longer than 30 s is decoded with Whisper's long-form (sequential) algorithm. `fallback=True` adds
    Whisper's temperature fallback (FALLBACK), a decoding safeguard to report beside greedy, not instead of it.
    """
    texts = []
    for _, batch_texts, _ in transcribe_batches(model, processor, utterances, batch_size, language, generate_kwargs,
                                                fallback):
        texts.extend(batch_texts)
    return texts


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def machine_info() -> dict:
    """The machine a result was measured on: CPU model, torch threads, versions, GPU, date (UTC)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return info


def expand_sources(data_sources: Sequence[str]) -> List[str]:
    """Data sources with the `open-asr-leaderboard` alias expanded to the leaderboard's English test sets."""
    if isinstance(data_sources, (str, Path)):  # one source given bare
        data_sources = [data_sources]
    expanded = []
    for source in data_sources:
        if str(source) == OPEN_ASR_LEADERBOARD:
            expanded.extend(OPEN_ASR_LEADERBOARD_SETS)
        else:
            expanded.append(str(source))
    if not expanded:
        raise EvaluationError("no data to evaluate on: give at least one --data folder or hf:// dataset")
    return expanded


def _expected_count(source: str, limit: Optional[int]) -> Optional[int]:
    """How many utterances a source will yield, when that is known without reading it (for the progress bar)."""
    if str(source).startswith("hf://"):
        return limit
    count = len(folder_entries(Path(source)))
    return count if limit is None else min(count, limit)


def dataset_language(source: str, limit: Optional[int] = None) -> Optional[str]:
    """The language a data set states: its metadata.csv `language` column (one language per set), or the
    language a Hub dataset's config names (e.g. "german", "de_de"); None when it does not say."""
    if str(source).startswith("hf://"):
        return language_code(parse_hub_spec(str(source))[1])
    languages = {language for _, _, language in folder_entries(Path(source))[:limit]}
    if len(languages) > 1:
        named = ", ".join(sorted(str(language) for language in languages))
        raise EvaluationError(f"{source}: metadata.csv mixes languages ({named}); evaluate one language per set "
                              "(split the folder) so that each set gets one normaliser and metric")
    return languages.pop() if languages else None


def language_identification(languages: Sequence[Optional[str]], expected: str) -> dict:
    """Accuracy (percent) of the detected languages against the set's language, and what was detected."""
    detected = Counter(language or "unknown" for language in languages)
    return {"expected": expected, "accuracy": 100.0 * detected[expected] / max(len(languages), 1),
            "detected": dict(sorted(detected.items(), key=lambda item: (-item[1], item[0])))}


def _unique_name(name: str, taken: Dict) -> str:
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    return candidate


def evaluate_dataset(
    model,
    processor,
    source: str,
    limit: Optional[int] = None,
    batch_size: int = 8,
    language: Optional[str] = None,
    generate_kwargs: Optional[dict] = None,
    progress: bool = True,
    fallback: bool = False,
    processes=None,
) -> dict:
    """WER, RTFx and counts for one data source; `transcripts` lists (name, reference, hypothesis) in source order.

    Under data parallelism (`processes`, a distributed.Processes with count > 1) this process transcribes every
    count-th utterance; the per-utterance results are gathered, so every process returns the WER of the whole
    set, equal to one process's. RTFx is then the job's: all audio over the slowest process's wall time.

    `language`: a code forces decoding in that language; None decodes in the set's own language
    (dataset_language; English when the set does not say); "detect" lets the model identify each utterance's
    language and adds `language_identification` (when the set states its language). The set is scored in its
    own language (else the forced one, else English): normaliser and metric (WER or CER) follow it.
    """
    from tqdm.auto import tqdm

    from .distributed import Processes

    processes = Processes.of(processes)
    stated = dataset_language(source, limit)
    if language is None:
        language = stated or "en"
    scoring_language = stated or (language if language != DETECT else "en")
    index, count = processes.shard
    expected = _expected_count(source, limit)
    bar = tqdm(
        total=len(range(index, expected, count)) if expected is not None else None, desc=source_name(source),
        unit="utt", disable=not (progress and processes.is_main), dynamic_ncols=True,
    )
    scored, skipped = [], []  # scored: (position in the source, name, reference, hypothesis, seconds)
    wall_seconds = 0.0

    def transcribe_shard():
        nonlocal wall_seconds
        positions = {}  # utterance name -> position in the source

        def scorable(utterances):
            for position, utterance in zip(itertools.count(index, count), utterances):
                if normalize(utterance.text, scoring_language):
                    positions[utterance.name] = position
                    yield utterance
                else:
                    skipped.append(utterance.name)

        stream = scorable(iter_utterances(source, limit=limit, shard=processes.shard))
        for batch, texts, seconds in transcribe_batches(model, processor, stream, batch_size, language, generate_kwargs,
                                                        fallback):
            scored.extend((positions[utterance.name], utterance.name, utterance.text, text, utterance.detected_language,
                           utterance.seconds) for utterance, text in zip(batch, texts))
            wall_seconds += seconds
            bar.update(len(scored) + len(skipped) - bar.n)
            audio_so_far = sum(entry[-1] for entry in scored)
            bar.set_postfix(rtfx=f"{audio_so_far / max(wall_seconds, 1e-9):.1f}")

    try:
        processes.run(transcribe_shard, f"evaluation on {source}")
    finally:
        bar.close()
    scored = sorted(processes.gather(scored))
    skipped_count = len(processes.gather(skipped))
    wall_seconds = max(processes.gather([wall_seconds]))
    if not scored:
        raise EvaluationError(
            f"{source}: no utterance has a reference text to score against "
            f"({skipped_count} skipped with a missing or empty reference)"
        )
    _, names, references, hypotheses, detected, seconds = zip(*scored)
    audio_seconds = float(sum(seconds))
    metric, value = metric_for(scoring_language), error_rate(references, hypotheses, scoring_language)
    result = {
        "language": scoring_language,
        "metric": metric,
        "error_rate": value,
        metric: value,
        "normalizer": normalizer_name(scoring_language),
        "decoding_language": language if is_multilingual(model) else None,
        "num_utterances": len(references),
        "audio_seconds": audio_seconds,
        "wall_seconds": wall_seconds,
        "rtfx": audio_seconds / wall_seconds if wall_seconds > 0 else float("inf"),
        "skipped_empty_references": skipped_count,
        "source": str(source),
        "transcripts": [
            {"name": name, "reference": reference, "hypothesis": hypothesis}
            | ({"detected_language": language} if language else {})
            for name, reference, hypothesis, language in zip(names, references, hypotheses, detected)
        ],
    }
    if language == DETECT and stated and is_multilingual(model):
        result["language_identification"] = language_identification(detected, stated)
    return result


def evaluate(
    model_id_or_path,
    data_sources: Sequence[str],
    limit: Optional[int] = None,
    batch_size: int = 8,
    language: Optional[str] = None,
    device: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    generate_kwargs: Optional[dict] = None,
    progress: bool = True,
    keep_transcripts: bool = False,
    model=None,
    processor=None,
    fallback: bool = False,
    processes=None,
) -> dict:
    """Evaluate one model on each data source; returns the results schema (see the module docstring).

    `model_id_or_path`: a Whisper or LiteWhisper folder or Hub id (pass `model` and `processor` too to reuse
    ones already loaded; the id is then only recorded). `data_sources`: local audiofolders, `hf://` datasets
    or `open-asr-leaderboard`. `language`: None (each set in its own language), a code forced on every set, or
    "detect" (see evaluate_dataset). `limit`: at most this many utterances read per source. With
    `keep_transcripts`, each set's entry keeps its (name, reference, hypothesis) list. `fallback=True` decodes
    with Whisper's temperature fallback (FALLBACK) instead of plain greedy: report it beside a greedy result.

    Data parallelism: call this on every process of an `accelerate launch` job with the job's `processes` and
    each process's own `device`; each process transcribes its shard and every process returns the same results.
    """
    from .distributed import Processes, RankFailedError

    processes = Processes.of(processes)
    sources = expand_sources(data_sources)
    if model is None or processor is None:
        model, processor = load_model(model_id_or_path, device=device, dtype=dtype)
    datasets, failed = {}, {}
    for source in sources:
        try:
            result = evaluate_dataset(model, processor, source, limit, batch_size, language, generate_kwargs, progress,
                                      fallback, processes)
        except (ValueError, OSError, RankFailedError) as error:  # one bad set must not lose the others' results
            failed[source] = (str(error).strip().splitlines() or [type(error).__name__])[0]
            continue
        if not keep_transcripts:
            result.pop("transcripts")
        datasets[_unique_name(source_name(source), datasets)] = result
    if not datasets:
        raise EvaluationError("no data set could be scored: " + "; ".join(f"{name}: {why}" for name, why in failed.items()))
    results = {
        "model": str(model_id_or_path),
        "model_type": model_type(model),
        **model_sizes(model),
        "mean_wer": float(np.mean([result["error_rate"] for result in datasets.values()])),
        "datasets": datasets,
        "normalizer": "; ".join(dict.fromkeys(result["normalizer"] for result in datasets.values())),
        "decoding": {
            key: value for key, value in generation_kwargs(model, language, generate_kwargs, fallback).items()
            if isinstance(value, (str, int, float, bool))
        } | ({"fallback": True, "temperature": list(FALLBACK["temperature"])} if fallback else {}),
        "batch_size": batch_size,
        "processes": processes.count,
        "limit": limit,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "machine": machine_info(),
    }
    if failed:
        results["failed_datasets"] = failed  # source -> why it could not be scored; mean_wer covers the others
    return results


def write_results(results: dict, path) -> Path:
    """Write results as indented JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def read_results(path) -> dict:
    """Read a results JSON file, checking it has the fields cards and benchmarks rely on."""
    path = Path(path)
    results = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in ("model", "encoder_params", "mean_wer", "datasets") if key not in results]
    if missing:
        raise EvaluationError(f"{path}: not a lite-whisper eval results file (missing {', '.join(missing)})")
    return results


def format_results(results: dict) -> str:
    """A short human-readable summary, one line per set plus the mean."""
    lines = [
        f"{results['model']}: encoder {results['encoder_params'] / 1e6:.2f}M params, "
        f"{results['encoder_gflops']:.1f} GFLOPs / 30 s; decoder {results['decoder_params'] / 1e6:.2f}M params",
    ]
    for name, result in results["datasets"].items():
        skipped = result.get("skipped_empty_references", 0)
        identification = result.get("language_identification")
        lines.append(
            f"  {name} [{result.get('language', 'en')}]: {result.get('metric', 'wer').upper()} "
            f"{result.get('error_rate', result.get('wer')):.2f}% over {result['num_utterances']} utterances "
            f"({result['audio_seconds'] / 60:.1f} min), RTFx {result['rtfx']:.1f}"
            + (f", language identified {identification['accuracy']:.1f}%" if identification else "")
            + (f", {skipped} skipped (empty reference)" if skipped else "")
        )
    metrics = {result.get("metric", "wer") for result in results["datasets"].values()}
    label = f"mean {metrics.pop().upper()}" if len(metrics) == 1 else "mean error rate (WER and CER)"
    lines.append(f"  {label} over {len(results['datasets'])} set(s): {results['mean_wer']:.2f}%  "
                 f"[{results['normalizer']}]")
    for source, reason in results.get("failed_datasets", {}).items():
        lines.append(f"  NOT SCORED {source}: {reason}")
    if "fallback" in results:
        wers = ", ".join(f"{name} {result['error_rate']:.2f}%" for name, result in results["fallback"]["datasets"].items())
        lines.append(f"  with temperature fallback (a decoding safeguard, not the greedy metric): {wers}; "
                     f"mean {results['fallback']['mean_wer']:.2f}%")
    return "\n".join(lines)
