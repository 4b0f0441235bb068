"""Every language Whisper speaks: calibration mixes of several sources and languages, per-language evaluation
(normaliser, WER or CER, language identification), on tiny random models and on real German/Spanish speech."""

import csv
import json
from collections import Counter

import pytest
import soundfile
from compress_fixtures import clips, write_tiny_base
from conftest import speech_set

from lite_whisper_convert import cli
from lite_whisper_convert.audio import (
    SAMPLING_RATE,
    AudioDataError,
    iter_calibration,
    iter_utterances,
    language_code,
)
from lite_whisper_convert.calibration import load_stats
from lite_whisper_convert.compress import compress

FAST = dict(num_samples=12, batch_size=4, probe_clips=2, smoke_test=False, progress=False, recovery="none")


def write_folder(folder, languages, seed=0, texts=None):
    """A local audio folder whose metadata.csv gives each clip's language (None: no language column)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (utterance, language) in enumerate(zip(clips(len(languages), seed), languages)):
        name = f"{folder.name}-{index}.wav"
        soundfile.write(folder / name, utterance.audio, SAMPLING_RATE)
        rows.append({"file_name": name, **({"language": language} if language else {}),
                     **({"text": texts[index]} if texts else {})})
    with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    english = write_folder(root / "english", [None] * 10)  # no language column, like LibriSpeech
    # Sorted by language, as the shared multilingual-calib-77 is: 6 German, 1 Greek, 5 Spanish.
    other = write_folder(root / "other", ["de"] * 6 + ["el"] + ["es"] * 5, seed=1)
    return english, other


def test_language_balance_gives_each_language_an_equal_turn(sources):
    english, other = sources
    mix = list(iter_calibration([english, other], limit=10))
    # One source without a language column counts as one language; the folder's languages take turns.
    assert [clip.language for clip in mix] == [None, "de", "el", "es", None, "de", "es", None, "de", "es"]
    assert Counter(clip.source for clip in mix) == {"english": 3, "other": 7}


def test_source_balance_gives_each_source_an_equal_turn(sources):
    english, other = sources
    mix = list(iter_calibration([english, other], limit=10, balance="source"))
    assert [clip.source for clip in mix] == ["english", "other"] * 5
    assert [clip.language for clip in mix[1::2]] == ["de", "el", "es", "de", "es"]  # inside a source: languages alternate


def test_one_source_without_languages_reads_in_its_own_order(sources):
    english, _ = sources
    assert [clip.name for clip in iter_calibration(english, limit=6)] == [u.name for u in iter_utterances(english, 6)]


def test_shards_of_a_mix_partition_it(sources):
    whole = [clip.name for clip in iter_calibration(list(sources), limit=9)]
    shards = [[clip.name for clip in iter_calibration(list(sources), limit=9, shard=(index, 2))] for index in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(whole) and shards[0] == whole[0::2]


def test_languages_are_read_as_whisper_codes_and_unknown_ones_are_named(tmp_path):
    assert [language_code(value) for value in ("de", "German", "de-DE", "pt_br", "", "clean")] == \
        ["de", "de", "de", "pt", None, None]
    folder = write_folder(tmp_path / "bad", ["klingon"])
    with pytest.raises(AudioDataError, match="unknown language 'klingon'"):
        list(iter_utterances(folder))


def test_a_bad_balance_is_a_named_error(sources):
    with pytest.raises(AudioDataError, match="balance must be one of language, source"):
        list(iter_calibration(list(sources), balance="random"))


def test_compress_on_two_sources_records_languages_and_counts(sources, tmp_path):
    base = tmp_path / "tiny-random-whisper"
    write_tiny_base(base)
    stats_path = tmp_path / "mix.stats"
    compress(str(base), tmp_path / "lite", [str(path) for path in sources], target_encoder_params=0.8,
             stats_path=stats_path, **FAST)
    # 12 clips: english, de, el, es, english, de, es, english, de, es, english, de
    expected = {"balance": "language", "languages": {"de": 4, "unknown": 4, "es": 3, "el": 1},
                "sources": {"other": 8, "english": 4}}
    recipe = json.loads((tmp_path / "lite" / "compression_recipe.json").read_text())
    assert recipe["calibration"] == "english + other"
    assert recipe["extra"]["calibration_mix"] == expected
    assert load_stats(stats_path).mix == expected  # a reused stats file still knows its mix
    # Reused: the recipe of a later preset reports the same mix.
    compress(str(base), tmp_path / "lite2", None, target_encoder_params=0.7, stats_path=stats_path, **FAST)
    assert json.loads((tmp_path / "lite2" / "compression_recipe.json").read_text())["extra"]["calibration_mix"] == expected


def test_cli_takes_calibration_several_times(sources, tmp_path, capsys):
    base = tmp_path / "tiny-random-whisper"
    write_tiny_base(base)
    english, other = sources
    code = cli.main(["compress", str(base), "--target-encoder-params", "0.8", "--calibration", str(english),
                     "--calibration", str(other), "--calibration-balance", "source", "--num-samples", "6",
                     "--probe-clips", "2", "--recovery", "none", "--no-smoke-test", "--no-progress",
                     "--device", "cpu", "--out", str(tmp_path / "lite")])
    assert code == 0, capsys.readouterr().err
    mix = json.loads((tmp_path / "lite" / "compression_recipe.json").read_text())["extra"]["calibration_mix"]
    assert mix == {"balance": "source", "languages": {"unknown": 3, "de": 1, "el": 1, "es": 1},
                   "sources": {"english": 3, "other": 3}}
