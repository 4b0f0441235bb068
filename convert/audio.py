"""Audio sources for calibration and evaluation: a local folder of audio files, or a Hub dataset.

Every source yields `Utterance`s: 16 kHz mono float32 audio plus the reference text when there is one.
A local folder follows the `audiofolder` layout of Hugging Face `datasets`: audio files and an optional
`metadata.csv` with a `file_name` column (and `text` where references exist). A Hub dataset is named
`hf://OWNER/NAME[:CONFIG]/SPLIT` and streamed with `datasets`, so nothing is downloaded in full.
"""

import csv
import re
from collections import deque
from dataclasses import dataclass
from itertools import islice
from math import gcd
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

SAMPLING_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
# Users online calibrate on LibriSpeech's training data by default; it never overlaps the test sets.
DEFAULT_CALIBRATION = "hf://openslr/librispeech_asr:clean/train.100"
# Multilingual models calibrate on a mix by default: LibriSpeech English plus Multilingual LibriSpeech (read
# audiobooks, parquet on the Hub, so `datasets` >= 4 streams it without a loading script or a token) in its seven
# languages, one source per language, balanced as BALANCES describes. FLEURS (google/fleurs) and Common Voice
# would cover more languages but need a loading script (unsupported since datasets 4.0) or authentication.
DEFAULT_MULTILINGUAL_CALIBRATION = (DEFAULT_CALIBRATION,) + tuple(
    f"hf://facebook/multilingual_librispeech:{language}/train"
    for language in ("german", "dutch", "french", "spanish", "italian", "portuguese", "polish")
)
# How clips of several calibration sources are interleaved (`iter_calibration`):
#   language  clips are grouped by language (a local folder's `language` column; a Hub dataset, or a folder
#             without that column, forms its own group) and the groups take turns, one clip each, until the clip budget is spent; a group that
#             runs out drops out of the rotation. Every language gets an equal share where it has the clips.
#   source    the sources take turns the same way (inside a source its languages take turns).
BALANCES = ("language", "source")
DEFAULT_BALANCE = "language"


class AudioDataError(ValueError):
    """An audio source or one of its files cannot be used (missing, unreadable, empty, silent, not finite)."""


@dataclass
class Utterance:
    name: str
    audio: np.ndarray  # [samples], float32, 16 kHz mono
    text: Optional[str] = None
    language: Optional[str] = None  # Whisper language code ("de") when the source states it
    source: Optional[str] = None  # the source it came from (set by iter_calibration)
    detected_language: Optional[str] = None  # what a model identified (set by evaluation in detect mode)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLING_RATE


def resample(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Resample mono audio to 16 kHz with a polyphase filter (exact for integer ratios like 48k/44.1k)."""
    if sampling_rate == SAMPLING_RATE:
        return audio.astype(np.float32, copy=False)
    if sampling_rate <= 0:
        raise AudioDataError(f"invalid sampling rate {sampling_rate}")
    from scipy.signal import resample_poly

    divisor = gcd(SAMPLING_RATE, int(sampling_rate))
    return resample_poly(audio, SAMPLING_RATE // divisor, int(sampling_rate) // divisor).astype(np.float32)


def checked(name: str, audio: np.ndarray) -> np.ndarray:
    """Reject audio that would silently poison calibration or evaluation."""
    if audio.size == 0:
        raise AudioDataError(f"{name}: the audio is empty (0 samples)")
    if not np.isfinite(audio).all():
        raise AudioDataError(f"{name}: the audio contains NaN or infinite samples")
    if not np.any(audio):
        raise AudioDataError(f"{name}: the audio is silent (all samples are zero)")
    return audio


def load_audio(path: Path) -> np.ndarray:
    """Read one audio file as 16 kHz mono float32."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioDataError(f"audio file not found: {path}")
    try:
        audio, sampling_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises its own LibsndfileError, or RuntimeError on old versions
        raise AudioDataError(f"{path}: not a readable audio file ({error})") from None
    return checked(str(path), resample(audio.mean(axis=1), sampling_rate))


def language_code(value, where: str = "") -> Optional[str]:
    """Whisper's code for a language given as a code ("de"), a locale ("de-DE", "de_de", "pt-BR") or a name
    ("German"); None for an empty value. With `where`, an unrecognised value raises AudioDataError naming it;
    without, it gives None (e.g. a Hub config name that is not a language, like "clean")."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    text = str(value or "").strip().lower()
    if not text:
        return None
    for candidate in (text, re.split(r"[-_]", text)[0]):
        if candidate in LANGUAGES:
            return candidate
        if candidate in TO_LANGUAGE_CODE:
            return TO_LANGUAGE_CODE[candidate]
    if where:
        raise AudioDataError(f"{where}: unknown language {value!r}: use Whisper's language codes (en, de, fr, zh, ...)")
    return None


def read_metadata(metadata: Path) -> list:
    """The rows of a metadata.csv: UTF-8, with or without the byte-order mark Excel writes; any other encoding is
    named (where the first undecodable byte is) rather than guessed."""
    try:
        with metadata.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        line = metadata.read_bytes()[: error.start].count(b"\n") + 1
        raise AudioDataError(f"{metadata}: not UTF-8 (byte 0x{error.object[error.start]:02x} on line {line}); "
                             "save it as UTF-8 (in Excel: CSV UTF-8)") from None
    except csv.Error as error:
        raise AudioDataError(f"{metadata}: not a readable CSV file ({error})") from None


def folder_entries(folder: Path) -> list:
    """(file, text or None, language or None) for each utterance of a local audio folder, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioDataError(f"audio folder not found: {folder}")
    metadata = folder / "metadata.csv"
    if metadata.is_file():
        rows = read_metadata(metadata)
        if rows and "file_name" not in rows[0]:
            raise AudioDataError(f"{metadata}: needs a 'file_name' column, found {list(rows[0])}")
        entries = [(folder / row["file_name"], row.get("text"), language_code(row.get("language"), str(metadata)))
                   for row in rows]
    else:
        entries = [(path, None, None) for path in sorted(folder.rglob("*")) if path.suffix.lower() in AUDIO_SUFFIXES]
    if not entries:
        raise AudioDataError(f"{folder}: no audio files found (looked for {', '.join(AUDIO_SUFFIXES)})")
    return entries


def iter_audio_folder(folder: Path, limit: Optional[int] = None, shard: tuple = (0, 1)) -> Iterator[Utterance]:
    """Utterances of a local folder, loaded lazily; `shard=(index, count)` keeps every count-th one."""
    folder = Path(folder)
    entries = folder_entries(folder)[:limit]
    index, count = shard
    for path, text, language in entries[index::count]:
        yield Utterance(name=str(path.relative_to(folder)), audio=load_audio(path), text=text, language=language)


def parse_hub_spec(spec: str) -> tuple:
    """'hf://owner/name[:config]/split' -> (path, config or None, split)."""
    body = spec[len("hf://") :]
    repo_and_config, _, split = body.rpartition("/")
    if not repo_and_config or not split or "/" not in repo_and_config:
        raise AudioDataError(f"{spec!r}: a Hub dataset is written hf://OWNER/NAME[:CONFIG]/SPLIT")
    path, _, config = repo_and_config.partition(":")
    return path, config or None, split


def iter_hub_dataset(spec: str, limit: Optional[int] = None, shard: tuple = (0, 1)) -> Iterator[Utterance]:
    """Utterances streamed from a Hub dataset with an `audio` column (and `text` when present)."""
    try:
        import datasets
    except ImportError:
        raise AudioDataError(
            f"{spec}: streaming a Hub dataset needs the `datasets` package: pip install 'lite-whisper[hub]'"
        ) from None
    path, config, split = parse_hub_spec(spec)
    stream = datasets.load_dataset(path, config, split=split, streaming=True)
    stream = stream.cast_column("audio", datasets.Audio(sampling_rate=SAMPLING_RATE))
    # A row's language: its own `language`/`locale` field, else the config's name when that names one
    # ("german" in Multilingual LibriSpeech, "de_de" in FLEURS).
    config_language = language_code(config)
    index, count = shard
    for position, row in enumerate(stream):
        if limit is not None and position >= limit:
            break
        if position % count != index:
            continue
        name = str(row.get("id", position))
        audio = np.asarray(row["audio"]["array"], dtype=np.float32)
        text = next((row[key] for key in ("text", "sentence", "transcript", "transcription") if row.get(key)), None)
        language = language_code(row.get("language") or row.get("locale")) or config_language
        yield Utterance(name=name, audio=checked(f"{spec}[{name}]", audio), text=text, language=language)


def iter_utterances(source: str, limit: Optional[int] = None, shard: tuple = (0, 1)) -> Iterator[Utterance]:
    """Utterances from a local folder or an `hf://` dataset: the one entry point the pipeline uses."""
    if str(source).startswith("hf://"):
        return iter_hub_dataset(str(source), limit=limit, shard=shard)
    return iter_audio_folder(Path(source), limit=limit, shard=shard)


def round_robin(iterables: Iterable[Iterable]) -> Iterator:
    """One item from each iterable in turn; an exhausted one drops out of the rotation."""
    queue = deque(iter(iterable) for iterable in iterables)
    while queue:
        iterator = queue.popleft()
        try:
            item = next(iterator)
        except StopIteration:
            continue
        yield item
        queue.append(iterator)


def _source_groups(source: str) -> List[Tuple[Optional[str], Iterator[Callable[[], Utterance]]]]:
    """(language or None, clips loaded on demand) per language of one source, in order of first appearance.

    A local folder is split by its metadata's `language` column without reading audio; a Hub dataset streams
    and is one group, whose language is read from its rows (or config) as they arrive."""
    name = source_name(source)

    def tagged(utterance: Utterance) -> Utterance:
        utterance.source = name
        return utterance

    if str(source).startswith("hf://"):
        streamed = iter_hub_dataset(str(source))
        return [(None, ((lambda utterance=utterance: tagged(utterance)) for utterance in streamed))]
    folder = Path(source)
    groups = {}
    for path, text, language in folder_entries(folder):
        groups.setdefault(language, []).append(
            lambda path=path, text=text, language=language: tagged(Utterance(
                name=str(path.relative_to(folder)), audio=load_audio(path), text=text, language=language)))
    return [(language, iter(clips)) for language, clips in groups.items()]


def calibration_sources(sources) -> List[str]:
    """One source (str or Path) or several -> a non-empty list of source strings."""
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not sources:
        raise AudioDataError("no calibration data: give at least one --calibration folder or hf:// dataset")
    return [str(source) for source in sources]


def iter_calibration(sources, limit: Optional[int] = None, shard: tuple = (0, 1),
                     balance: str = DEFAULT_BALANCE) -> Iterator[Utterance]:
    """The first `limit` clips of a mix of calibration sources, interleaved as `balance` says (see BALANCES);
    `shard=(index, count)` keeps every count-th one. Each clip carries its `language` (None when the source does
    not say) and `source`. One source without a language column reads exactly as `iter_utterances` reads it."""
    if balance not in BALANCES:
        raise AudioDataError(f"calibration balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    sources = calibration_sources(sources)
    groups = [(source, language, clips) for source in sources for language, clips in _source_groups(source)]
    if balance == "source":
        streams = [round_robin([clips for owner, _, clips in groups if owner == source]) for source in sources]
    else:
        by_language = {}  # language, or (source,) for a source that does not say -> its clip iterators
        for source, language, clips in groups:
            by_language.setdefault(language if language is not None else (source,), []).append(clips)
        streams = [round_robin(clips) for clips in by_language.values()]
    index, count = shard
    for load in islice(round_robin(streams), index, limit, count):
        yield load()


def mix_name(sources) -> str:
    """A short name for a mix of calibration sources: their names joined by ' + '."""
    return " + ".join(source_name(source) for source in calibration_sources(sources))


def source_name(source: str) -> str:
    """A short name for reports: the folder name, or the dataset path and split."""
    if str(source).startswith("hf://"):
        path, config, split = parse_hub_spec(str(source))
        return f"{path.split('/')[-1]}{'-' + config if config else ''}-{split}"
    return Path(source).name


def batches(utterances: Iterable, batch_size: int) -> Iterator[list]:
    """Consecutive lists of `batch_size` items (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    batch = []
    for utterance in utterances:
        batch.append(utterance)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_paths(paths) -> Iterator[Utterance]:
    """Utterances from a mix of audio files and audio folders (each folder as `iter_audio_folder` reads it)."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from iter_audio_folder(path)
        else:
            yield Utterance(name=str(path), audio=load_audio(path))
