"""Audio sources for calibration and evaluation: a local folder of audio files, or a Hub dataset.

Every source yields `Utterance`s: 16 kHz mono float32 audio plus the reference text when there is one.
A local folder follows the `audiofolder` layout of Hugging Face `datasets`: audio files and an optional
`metadata.csv` with a `file_name` column (and `text` where references exist). A Hub dataset is named
`hf://OWNER/NAME[:CONFIG]/SPLIT` and streamed with `datasets`, so nothing is downloaded in full.
"""

import csv
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

SAMPLING_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
# Users online calibrate on LibriSpeech's training data by default; it never overlaps the test sets.
DEFAULT_CALIBRATION = "hf://openslr/librispeech_asr:clean/train.100"


class AudioDataError(ValueError):
    """An audio source or one of its files cannot be used (missing, unreadable, empty, silent, not finite)."""


@dataclass
class Utterance:
    name: str
    audio: np.ndarray  # [samples], float32, 16 kHz mono
    text: Optional[str] = None

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
    """(file, text or None) for each utterance of a local audio folder, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioDataError(f"audio folder not found: {folder}")
    metadata = folder / "metadata.csv"
    if metadata.is_file():
        rows = read_metadata(metadata)
        if rows and "file_name" not in rows[0]:
            raise AudioDataError(f"{metadata}: needs a 'file_name' column, found {list(rows[0])}")
        entries = [(folder / row["file_name"], row.get("text")) for row in rows]
    else:
        entries = [(path, None) for path in sorted(folder.rglob("*")) if path.suffix.lower() in AUDIO_SUFFIXES]
    if not entries:
        raise AudioDataError(f"{folder}: no audio files found (looked for {', '.join(AUDIO_SUFFIXES)})")
    return entries


def iter_audio_folder(folder: Path, limit: Optional[int] = None, shard: tuple = (0, 1)) -> Iterator[Utterance]:
    """Utterances of a local folder, loaded lazily; `shard=(index, count)` keeps every count-th one."""
    folder = Path(folder)
    entries = folder_entries(folder)[:limit]
    index, count = shard
    for path, text in entries[index::count]:
        yield Utterance(name=str(path.relative_to(folder)), audio=load_audio(path), text=text)


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
    index, count = shard
    for position, row in enumerate(stream):
        if limit is not None and position >= limit:
            break
        if position % count != index:
            continue
        name = str(row.get("id", position))
        audio = np.asarray(row["audio"]["array"], dtype=np.float32)
        text = row.get("text", row.get("sentence"))
        yield Utterance(name=name, audio=checked(f"{spec}[{name}]", audio), text=text)


def iter_utterances(source: str, limit: Optional[int] = None, shard: tuple = (0, 1)) -> Iterator[Utterance]:
    """Utterances from a local folder or an `hf://` dataset: the one entry point the pipeline uses."""
    if str(source).startswith("hf://"):
        return iter_hub_dataset(str(source), limit=limit, shard=shard)
    return iter_audio_folder(Path(source), limit=limit, shard=shard)


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
