"""Every language Whisper speaks: calibration mixes of several sources and languages, per-language evaluation
(normaliser, WER or CER, language identification), on tiny random models and on real German/Spanish speech."""

import csv
import json
from collections import Counter

import pytest
import soundfile
from compress_fixtures import clips, write_tiny_base
from conftest import assert_probe_sequences_are_generates_own, speech_set

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


# ------------------------------------------------------------------------------------------- evaluation


def test_each_language_gets_its_normaliser_and_metric():
    from lite_whisper_convert.evaluation import error_rate, metric_for, normalize, word_error_rate

    # English keeps Whisper's English normaliser (spelling map, numbers); others the basic one, umlauts kept.
    assert normalize("The colour, Mr. Smith!", "en") == "the color mister smith"
    assert normalize("Die Sitzungen waren feuchtfröhlich.", "de") == "die sitzungen waren feuchtfröhlich"
    assert normalize("¿Dónde está?", "es") == "dónde está"
    assert [metric_for(language) for language in ("en", "de", "zh", "ja", "th", "yue")] == ["wer", "wer"] + ["cer"] * 4
    # Chinese: one wrong character of four is 25 % CER (spaces and punctuation do not count).
    assert error_rate(["你好，世界"], ["你 好 世 届"], "zh") == pytest.approx(25.0)
    assert error_rate(["der Hund"], ["der Hunt"], "de") == pytest.approx(50.0)
    with pytest.raises(ValueError, match="without spaces"):
        word_error_rate(["你好"], ["你好"], "zh")


def test_a_set_takes_its_language_from_metadata_and_is_scored_by_cer_where_it_has_no_spaces(tmp_path):
    from lite_whisper_convert.evaluation import dataset_language, evaluate
    from test_evaluation import tiny_dense_model, tiny_processor

    model, processor = tiny_dense_model(), tiny_processor()  # English-only (no languages): decodes as it can
    chinese = write_folder(tmp_path / "zh-set", ["zh", "zh"], texts=["你好世界", "早上好"])
    german = write_folder(tmp_path / "de-set", ["de", "de"], texts=["Guten Morgen", "Gute Nacht"])
    assert dataset_language(chinese) == "zh" and dataset_language(german) == "de"
    results = evaluate("tiny", [chinese, german], model=model, processor=processor, progress=False)
    zh, de = results["datasets"]["zh-set"], results["datasets"]["de-set"]
    assert (zh["language"], zh["metric"], de["language"], de["metric"]) == ("zh", "cer", "de", "wer")
    assert "cer" in zh and "wer" not in zh and zh["error_rate"] == zh["cer"]
    assert "BasicTextNormalizer" in zh["normalizer"] and "BasicTextNormalizer" in de["normalizer"]
    assert results["mean_wer"] == pytest.approx((zh["cer"] + de["wer"]) / 2)
    mixed = write_folder(tmp_path / "mixed", ["de", "fr"], texts=["Hallo", "Bonjour"])
    with pytest.raises(ValueError, match="mixes languages"):
        evaluate("tiny", [mixed], model=model, processor=processor, progress=False)


def test_the_card_reports_each_sets_language_and_metric(tmp_path):
    from lite_whisper_convert.cards import eval_results, load_results

    path = tmp_path / "results.json"
    path.write_text(json.dumps({
        "model": "lite", "model_type": "lite-whisper", "encoder_params": 1, "encoder_gflops": 1.0, "mean_wer": 7.5,
        "datasets": {"de-set": {"language": "de", "metric": "wer", "error_rate": 10.0, "wer": 10.0,
                                "num_utterances": 2, "audio_seconds": 3.0},
                     "zh-set": {"language": "zh", "metric": "cer", "error_rate": 5.0, "cer": 5.0,
                                "num_utterances": 2, "audio_seconds": 3.0}}}))
    (result,) = load_results([path])
    entries = {entry.dataset_type: entry for entry in eval_results(result)}
    assert (entries["de-set"].metric_type, entries["de-set"].metric_value, entries["de-set"].dataset_config) == ("wer", 10.0, "de")
    assert (entries["zh-set"].metric_type, entries["zh-set"].metric_value, entries["zh-set"].dataset_args) == \
        ("cer", 5.0, {"language": "zh"})


def test_real_base_evaluates_german_and_spanish_in_their_languages(base_dir):
    from lite_whisper_convert.evaluation import evaluate

    german, spanish = speech_set("de-thorsten-eval-12"), speech_set("es-css10-eval-18")
    results = evaluate(str(base_dir), [german, spanish], limit=2, progress=False, keep_transcripts=True)
    de, es = results["datasets"]["de-thorsten-eval-12"], results["datasets"]["es-css10-eval-18"]
    assert (de["language"], de["metric"], de["decoding_language"], es["language"], es["decoding_language"]) == \
        ("de", "wer", "de", "es", "es")
    assert "BasicTextNormalizer" in de["normalizer"] and results["decoding"]["task"] == "transcribe"
    assert de["wer"] < 40 and es["wer"] < 40  # transcribed in German and Spanish, not translated
    # Not forced: the model detects each utterance's language, and the results say how often it was right.
    detected = evaluate(str(base_dir), [german], limit=2, language="detect", progress=False, keep_transcripts=True)
    identification = detected["datasets"]["de-thorsten-eval-12"]["language_identification"]
    assert identification == {"expected": "de", "accuracy": 100.0, "detected": {"de": 2}}
    assert [t["detected_language"] for t in detected["datasets"]["de-thorsten-eval-12"]["transcripts"]] == ["de", "de"]


def test_real_base_probe_transcribes_each_clip_in_its_own_language(base_dir):
    from transformers import WhisperTokenizer

    from lite_whisper_convert.compress import load_base
    from lite_whisper_convert.sensitivity import probe_description, probe_set

    mix = list(iter_calibration([speech_set("librispeech-train-clean-100-calib"), speech_set("multilingual-calib-77")],
                                limit=4))
    assert [clip.language for clip in mix] == [None, "de", "el", "es"]  # LibriSpeech says nothing: detected
    model, feature_extractor = load_base(str(base_dir))
    detect_language, identified = model.detect_language, []

    def counted_detect_language(input_features=None, **kwargs):  # the real detection, counted
        identified.append(input_features.shape[0])
        return detect_language(input_features=input_features, **kwargs)

    model.detect_language = counted_detect_language
    probes = probe_set(model, feature_extractor, mix, batch_size=4)
    assert identified == [1]  # only the clip whose source does not say is identified; the others keep theirs
    assert probes.languages == ["en", "de", "el", "es"] and probes.detected == 1
    tokenizer = WhisperTokenizer.from_pretrained(str(base_dir))
    prompts = [tokenizer.convert_ids_to_tokens(ids[:2].tolist())[1] for ids in probes.decoder_ids]
    assert prompts == ["<|en|>", "<|de|>", "<|el|>", "<|es|>"]
    assert_probe_sequences_are_generates_own(model, feature_extractor, mix, probes)
    description = probe_description(probes, 0.99, "mix")
    assert description["languages"] == {"de": 1, "el": 1, "en": 1, "es": 1} and description["detected_languages"] == 1
