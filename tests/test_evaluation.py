"""Evaluation: Whisper's English normaliser, corpus WER, the results schema, tiny random and real tiny.en models."""

import csv
import json

import numpy as np
import pytest
import soundfile
import torch

from conftest import TINY_WHISPER, factorise_exactly, speech_set
from lite_whisper_convert import evaluation
from lite_whisper_convert.evaluation import (
    EvaluationError,
    evaluate,
    generation_kwargs,
    load_model,
    normalize,
    transcribe,
    word_error_rate,
)

SCHEMA = {"model": str, "encoder_params": int, "decoder_params": int, "encoder_gflops": float, "mean_wer": float}
SET_SCHEMA = {"wer": float, "num_utterances": int, "audio_seconds": float, "rtfx": float}
# Standard log-mel front end (80 bins, 1500 encoder positions) on an otherwise tiny random Whisper.
TINY_ASR = dict(TINY_WHISPER, num_mel_bins=80, max_source_positions=1500, max_target_positions=32)
SPECIALS = ["<|pad|>", "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"]


def tiny_processor():
    """A WhisperProcessor with the standard feature extractor and a 100-token vocabulary matching TINY_ASR."""
    from transformers import AddedToken, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    vocab = {token: index for index, token in enumerate(SPECIALS)}
    for index in range(len(SPECIALS), TINY_ASR["vocab_size"]):
        offset = index - len(SPECIALS)
        vocab[letters[offset % len(letters)] * (1 + offset // len(letters))] = index
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIALS], special_tokens=True)
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer)


def tiny_dense_model(seed=0):
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY_ASR)).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_length=12
    )
    return model


TINY_RANKS = [{"q_proj": 16, "fc1": 32}, {"k_proj": 8, "v_proj": 8, "out_proj": 16, "fc2": 24}]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """(dense Whisper folder, LiteWhisper folder of the same model), each with processor files."""
    root = tmp_path_factory.mktemp("tiny-models")
    processor = tiny_processor()
    dense = tiny_dense_model()
    dense.save_pretrained(root / "dense")
    processor.save_pretrained(root / "dense")
    lite = factorise_exactly(dense, TINY_RANKS)
    lite.save_pretrained(root / "lite", dtype=torch.float32)
    processor.save_pretrained(root / "lite")
    return root / "dense", root / "lite"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """An audiofolder at 8 kHz: three speech-like clips with references, one with an empty reference."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = []
    for index, (seconds, text) in enumerate([(1.0, "hello world"), (2.5, "Colour me 10"), (0.6, ""), (1.5, "ok")]):
        audio = (0.1 * rng.standard_normal(int(8000 * seconds))).astype(np.float32)
        soundfile.write(folder / f"clip{index}.wav", audio, 8000)
        rows.append({"file_name": f"clip{index}.wav", "text": text})
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


# --- normaliser and WER -------------------------------------------------------------------------------------


def test_normaliser_is_whispers_english_one():
    assert normalize("Hello, World!") == "hello world"
    assert normalize("The colour of the theatre") == normalize("the color of the theater")  # spelling map
    assert normalize("I won't pay $10") == normalize("i will not pay ten dollars")  # contractions, numbers
    assert normalize("um uh hmm yes") == "yes"  # fillers dropped
    assert normalize(None) == ""


def test_wer_is_corpus_level_percent_after_normalisation():
    # 1 error over 4 reference words in total: 25 %, not the mean of per-utterance rates (50 % and 0 %).
    assert word_error_rate(["Hello there", "A B"], ["hello", "a b."]) == pytest.approx(25.0)
    assert word_error_rate(["Mr. Smith's colour"], ["mister smith's color"]) == 0.0
    assert word_error_rate(["one two"], [""]) == 100.0


def test_wer_rejects_unscorable_input():
    with pytest.raises(EvaluationError, match="empty after normalisation"):
        word_error_rate(["fine", "uh"], ["fine", "uh"])
    with pytest.raises(EvaluationError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


# --- decoding options -----------------------------------------------------------------------------------------


def test_english_only_models_get_no_language_or_task():
    model = tiny_dense_model()
    assert generation_kwargs(model, "en") == {"num_beams": 1, "do_sample": False}
    model.generation_config.is_multilingual = True
    assert generation_kwargs(model, "en") == {"num_beams": 1, "do_sample": False, "task": "transcribe", "language": "en"}
    assert generation_kwargs(model, "en", {"num_beams": 5})["num_beams"] == 5


# --- evaluate on tiny random models ----------------------------------------------------------------------------


def test_evaluate_writes_the_schema_and_counts_skipped_references(tiny_folders, clips):
    dense_dir, _ = tiny_folders
    results = evaluate(str(dense_dir), [str(clips)], batch_size=2, progress=False)
    json.loads(json.dumps(results))  # plain JSON
    for key, kind in SCHEMA.items():
        assert isinstance(results[key], kind), key
    (name, result), = results["datasets"].items()
    assert name == clips.name
    for key, kind in SET_SCHEMA.items():
        assert isinstance(result[key], kind), key
    assert result["num_utterances"] == 3 and result["skipped_empty_references"] == 1
    assert result["audio_seconds"] == pytest.approx(1.0 + 2.5 + 1.5)
    assert result["rtfx"] > 0 and result["wer"] >= 0
    assert results["mean_wer"] == result["wer"]
    assert "EnglishTextNormalizer" in results["normalizer"]
    machine = results["machine"]
    assert machine["threads"] == torch.get_num_threads() and machine["torch"] == torch.__version__
    assert machine["cpu"] and machine["date"]


def test_encoder_size_matches_the_loaded_model(tiny_folders):
    for folder in tiny_folders:
        model, _ = load_model(folder, device="cpu")
        learned = sum(p.numel() for n, p in model.model.encoder.named_parameters() if "embed_positions" not in n)
        sizes = evaluation.model_sizes(model)
        assert sizes["encoder_params"] == learned
        assert sizes["decoder_params"] == sum(p.numel() for p in model.model.decoder.parameters())


def test_lite_whisper_folder_transcribes_like_its_dense_model(tiny_folders, clips):
    """The LiteWhisper folder (trust_remote_code) is an exact factorisation: same text, smaller encoder."""
    from lite_whisper_convert.audio import iter_utterances

    dense_dir, lite_dir = tiny_folders
    dense, processor = load_model(dense_dir, device="cpu")
    lite, _ = load_model(lite_dir, device="cpu")
    assert evaluation.model_type(lite) == "lite-whisper" and evaluation.model_type(dense) == "whisper"
    # the dense folder was saved before factorise_exactly truncated its weights: compare against the truncated one
    truncated = tiny_dense_model()
    factorise_exactly(truncated, TINY_RANKS)
    utterances = list(iter_utterances(str(clips)))
    assert transcribe(lite, processor, utterances, batch_size=3) == transcribe(truncated, processor, utterances, 2)
    assert evaluation.model_sizes(lite)["encoder_params"] < evaluation.model_sizes(dense)["encoder_params"]


def test_no_scorable_reference_is_a_named_error(tiny_folders, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    soundfile.write(folder / "a.wav", np.full(1600, 0.1, np.float32), 16000)
    with pytest.raises(EvaluationError, match="no utterance has a reference"):
        evaluate(str(tiny_folders[0]), [str(folder)], progress=False)


def test_eval_cli_writes_json(tiny_folders, clips, tmp_path, capsys):
    from lite_whisper_convert.cli import main

    out = tmp_path / "results" / "tiny.json"
    code = main(["eval", str(tiny_folders[1]), "--data", str(clips), "--data", str(clips), "--limit", "2",
                 "--batch-size", "2", "--json", str(out), "--no-progress"])
    assert code == 0
    results = json.loads(out.read_text())
    assert list(results["datasets"]) == [clips.name, clips.name + "-2"]
    assert all(result["num_utterances"] == 2 for result in results["datasets"].values())
    assert "mean WER" in capsys.readouterr().out


# --- real weights ----------------------------------------------------------------------------------------------


def test_real_tiny_en_on_librispeech_mini(tiny_en_dir):
    data = speech_set("librispeech-test-clean-mini")
    model_dir = tiny_en_dir
    results = evaluate(str(model_dir), [str(data)], batch_size=4, progress=False, keep_transcripts=True)
    result = results["datasets"]["librispeech-test-clean-mini"]
    assert result["num_utterances"] == 4 and result["audio_seconds"] == pytest.approx(21.21, abs=0.01)
    # Whisper tiny.en reads these four clean clips almost perfectly (5.6 % WER on all of test-clean).
    assert result["wer"] < 10.0, result["transcripts"]
    assert results["encoder_params"] == pytest.approx(7.63e6, rel=2e-3)
    assert result["rtfx"] > 0  # no speed threshold: shared CI machines are too noisy for one


def test_fallback_decoding_is_reported_beside_greedy_never_instead(tiny_en_dir, tmp_path, capsys):
    from lite_whisper_convert.cli import main

    data = speech_set("librispeech-test-clean-mini")
    out = tmp_path / "tiny.en.json"
    assert main(["eval", str(tiny_en_dir), "--data", str(data), "--limit", "2", "--batch-size", "2", "--fallback",
                 "--json", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    greedy, safeguarded = results["datasets"][data.name], results["fallback"]["datasets"][data.name]
    assert "fallback" not in results["decoding"] and results["decoding"]["num_beams"] == 1  # the primary metric
    assert results["fallback"]["decoding"]["fallback"] is True
    assert results["fallback"]["decoding"]["temperature"][0] == 0.0
    assert safeguarded["num_utterances"] == greedy["num_utterances"] == 2
    plain = evaluate(str(tiny_en_dir), [str(data)], limit=2, batch_size=2, progress=False)
    assert greedy["wer"] == plain["datasets"][data.name]["wer"]  # --fallback leaves the greedy figure alone
    assert 0.0 <= safeguarded["wer"] < 100.0
    assert "with temperature fallback" in capsys.readouterr().out


def test_hub_datasets_stream_through_the_same_path(tiny_folders, monkeypatch):
    """hf:// sources go through `datasets.load_dataset(..., streaming=True)` (faked here: no network)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    class FakeStream:
        def cast_column(self, column, feature):
            calls.append(("cast", column, feature.sampling_rate))
            return self

        def __iter__(self):
            rng = np.random.default_rng(1)
            for index, text in enumerate(["a cat", "", "the dog", "one more"]):
                yield {"id": f"utt{index}", "text": text,
                       "audio": {"array": 0.1 * rng.standard_normal(16000), "sampling_rate": 16000}}

    def fake_load_dataset(path, config, split, streaming):
        calls.append(("load", path, config, split, streaming))
        return FakeStream()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    results = evaluate(str(tiny_folders[0]), ["hf://openslr/librispeech_asr:clean/test"], limit=3, progress=False)
    assert calls[0] == ("load", "openslr/librispeech_asr", "clean", "test", True) and calls[1] == ("cast", "audio", 16000)
    (name, result), = results["datasets"].items()
    assert name == "librispeech_asr-clean-test"
    assert result["num_utterances"] == 2 and result["skipped_empty_references"] == 1  # limit counts rows read


def test_leaderboard_alias_expands_to_its_english_sets():
    sources = evaluation.expand_sources(["open-asr-leaderboard", "my/folder"])
    assert len(sources) == 9 and sources[-1] == "my/folder"
    assert "hf://hf-audio/esb-datasets-test-only-sorted:librispeech/test.other" in sources
    assert evaluation.expand_sources("my/folder") == ["my/folder"]
    with pytest.raises(EvaluationError, match="no data"):
        evaluation.expand_sources([])


def test_benchmark_script_runs_side_by_side(tiny_folders, clips, tmp_path):
    """benchmarks/speed_and_wer.py on the tiny models: one report, every model on the same data."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("speed_and_wer", REPO_ROOT / "benchmarks" / "speed_and_wer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    dense_dir, lite_dir = tiny_folders
    report = script.main(["--label", "tiny-random", "--whisper", str(dense_dir), "--lite", f"acc={lite_dir}",
                          "--data", str(clips), "--repeats", "2", "--latency-batches", "1", "2",
                          "--batch-size", "2", "--out", str(tmp_path)])
    assert [model["name"] for model in report["models"]] == ["stock whisper", "acc"]
    for model in report["models"]:
        assert set(model["encoder_latency_ms"]) == {"1", "2"} and model["rtfx"] > 0
        assert model["datasets"][clips.name]["num_utterances"] == 3  # the empty reference is left out
    assert report["models"][1]["encoder_params"] < report["models"][0]["encoder_params"]
    (written,) = tmp_path.glob("tiny-random-*.json")
    assert json.loads(written.read_text())["machine"]["threads"] == torch.get_num_threads()
    table = written.with_suffix(".md").read_text()
    assert "| stock whisper |" in table and "| acc |" in table and "Machine:" in table
