"""Model cards: Hub metadata that parses with eval results, the comparison table, the Pareto plot, a usage
snippet that runs."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import factorise_exactly, speech_set
from lite_whisper_convert.cards import CardError, load_results, pareto_front, render_card
from lite_whisper_convert.evaluation import evaluate, write_results
from test_evaluation import TINY_RANKS, tiny_dense_model, tiny_processor

FAST_RANKS = [{"q_proj": 8, "k_proj": 8, "v_proj": 8, "out_proj": 8, "fc1": 16, "fc2": 16}] * 2


def save_lite(dense, ranks, folder):
    lite = factorise_exactly(dense, ranks)
    lite.save_pretrained(folder, dtype=torch.float32)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A stock tiny model, two LiteWhisper presets of it, and one eval results file for each."""
    root = tmp_path_factory.mktemp("family")
    data = speech_set("librispeech-test-clean-mini")
    stock = root / "whisper-tiny"
    tiny_dense_model().save_pretrained(stock)
    tiny_processor().save_pretrained(stock)
    acc = save_lite(tiny_dense_model(), TINY_RANKS, root / "lite-whisper-tiny-acc")
    fast = save_lite(tiny_dense_model(), FAST_RANKS, root / "lite-whisper-tiny-fast")
    results = []
    for folder in (stock, acc, fast):
        outcome = evaluate(str(folder), [str(data)], limit=2, batch_size=2, progress=False)
        results.append(write_results(outcome, root / "results" / f"{folder.name}.json"))
    return {"stock": stock, "acc": acc, "fast": fast, "results": results, "data": data}


@pytest.fixture(scope="module")
def card(family):
    # What export writes to compression_recipe.json (a local base model path, an hf:// calibration set).
    recipe = {"base_model": str(family["stock"]), "calibration": "hf://openslr/librispeech_asr:clean/train.100",
              "num_utterances": 251, "frames": "real", "seed": 0, "extra": {},
              "rank_policy": {"preset": "acc", "thresholds": {"attention": 0.99, "mlp": 0.995}},
              "low_rank_config": TINY_RANKS, "encoder_params": 1}
    (family["acc"] / "compression_recipe.json").write_text(json.dumps(recipe))
    render_card(family["acc"], family["results"], base_model="openai/whisper-tiny", repo_id="someone/lite-tiny-acc")
    return ModelCard.load(family["acc"] / "README.md")


def test_card_metadata_parses_with_eval_results(card, family):
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "automatic-speech-recognition"
    assert data.base_model == "openai/whisper-tiny" and data.license == "apache-2.0" and data.language == ["en"]
    assert "lite-whisper" in data.tags and data.datasets == ["openslr/librispeech_asr"]
    assert data.model_name == "lite-whisper-tiny-acc"
    (result,) = data.eval_results
    expected = json.loads(family["results"][1].read_text())["datasets"]["librispeech-test-clean-mini"]["wer"]
    assert result.metric_type == "wer" and result.metric_value == pytest.approx(expected, abs=0.005)
    assert result.task_type == "automatic-speech-recognition"
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == ("openslr/librispeech_asr", "clean", "test")
    assert result.dataset_name == "LibriSpeech test-clean (2-utterance subset)"  # says what was scored (--limit 2)


def test_card_compares_with_the_stock_model_and_other_presets(card, family):
    text = card.text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| whisper-tiny (stock)") for line in table)
    assert any("**acc (this model)**" in line for line in table)
    assert any(line.startswith("| fast ") for line in table)
    assert "**calibration**: `hf://openslr/librispeech_asr:clean/train.100`" in text and "| layer |" in text
    assert '"preset": "acc"' in text and "**extra**" not in text and "**encoder_params**" not in text
    assert f"**base_model**: `{family['stock'].name}`" in text  # a local path shortened to its name
    assert "/tmp" not in text and str(family["acc"]) not in text  # no local paths leak into the card
    assert "![" in text and "(pareto.png)" in text
    png = (family["acc"] / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_usage_snippet_runs(card, family):
    """The card's Python snippet, pointed at the local folder and a real clip, runs in a fresh process."""
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert "trust_remote_code=True" in snippet and '"someone/lite-tiny-acc"' in snippet
    clip = next(family["data"].glob("*.flac"))
    code = snippet.replace('"someone/lite-tiny-acc"', repr(str(family["acc"]))).replace('"speech.flac"', repr(str(clip)))
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env=environment, cwd=family["acc"].parent)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_real_card_snippet_transcribes(tiny_en_dir, tmp_path):
    """On a LiteWhisper repo cut from real tiny.en, the snippet prints the words of the clip."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    data = speech_set("librispeech-test-clean-mini")
    dense = WhisperForConditionalGeneration.from_pretrained(tiny_en_dir, dtype=torch.float32).eval()
    lite_dir = tmp_path / "lite-whisper-tiny.en-acc"
    factorise_exactly(dense, [{"fc1": 320, "fc2": 320}] * 4).save_pretrained(lite_dir, dtype=torch.float32)
    WhisperProcessor.from_pretrained(tiny_en_dir).save_pretrained(lite_dir)
    files = []
    for folder, model_type, params in ((tiny_en_dir, "whisper", 7_632_384), (lite_dir, "lite-whisper", 6_000_000)):
        results = {"model": str(folder), "model_type": model_type, "encoder_params": params, "decoder_params": 1,
                   "encoder_gflops": 30.0, "mean_wer": 5.0, "machine": {},
                   "datasets": {data.name: {"wer": 5.0, "num_utterances": 4, "audio_seconds": 21.2, "rtfx": 5.0}}}
        files.append(write_results(results, tmp_path / f"{model_type}.json"))
    card = render_card(lite_dir, files, base_model="openai/whisper-tiny.en", repo_id="someone/x")
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    clip = data / "1089-134691-0000.flac"  # "HE COULD WAIT NO LONGER"
    code = snippet.replace('"someone/x"', repr(str(lite_dir))).replace('"speech.flac"', repr(str(clip)))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "could wait no longer" in completed.stdout.lower()


def test_card_needs_results_for_the_model_and_the_stock_model(family, tmp_path):
    stock_json, acc_json, fast_json = family["results"]
    with pytest.raises(CardError, match="no results for .*lite-whisper-tiny-acc"):
        render_card(family["acc"], [stock_json, fast_json], base_model="openai/whisper-tiny", write=False)
    with pytest.raises(CardError, match="stock"):
        render_card(family["acc"], [acc_json, fast_json], base_model="openai/whisper-tiny", write=False)
    with pytest.raises(CardError, match="--base-model"):  # the recipe's base model is a local path
        render_card(family["acc"], family["results"], write=False, recipe={"base_model": str(family["stock"])})
    with pytest.raises(CardError, match="--base-model"):  # no recipe at all
        render_card(family["fast"], family["results"], write=False)


def test_benchmark_reports_are_results_too(tmp_path):
    report = {
        "machine": {"cpu": "x", "threads": 2},
        "models": [
            {"name": "stock whisper", "kind": "transformers", "model": "/m/whisper", "model_type": "whisper",
             "encoder_params": 100, "encoder_gflops": 1.0, "mean_wer": 5.0, "rtfx": 10.0,
             "encoder_latency_ms": {"1": 40.0}, "datasets": {"a": {"wer": 5.0, "num_utterances": 1, "audio_seconds": 1}}},
            {"name": "faster-whisper int8", "kind": "faster-whisper", "model": "/m/ct2", "model_type": "faster-whisper",
             "encoder_params": 100, "encoder_gflops": 1.0, "mean_wer": 5.5, "rtfx": 20.0,
             "encoder_latency_ms": {"1": 30.0}, "datasets": {"a": {"wer": 5.5, "num_utterances": 1, "audio_seconds": 1}}},
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    results = load_results([path])
    assert [r.model_type for r in results] == ["whisper", "faster-whisper"]
    assert results[0].encoder_latency_ms == 40.0 and results[1].rtfx == 20.0


def test_pareto_front_keeps_points_nothing_beats():
    points = [(10, 5.0), (8, 6.0), (9, 7.0), (6, 9.0), (7, 8.5)]
    assert pareto_front(points) == [(6, 9.0), (7, 8.5), (8, 6.0), (10, 5.0)]


def test_card_cli(family, capsys):
    from lite_whisper_convert.cli import main

    results = [str(path) for path in family["results"]]
    assert main(["card", str(family["fast"]), "--results", *results, "--base-model", "openai/whisper-tiny"]) == 0
    card = ModelCard.load(family["fast"] / "README.md")
    assert card.data.eval_results and card.data.model_name == "lite-whisper-tiny-fast"
    assert "**fast (this model)**" in card.text
    assert main(["card", str(family["fast"]), "--results", results[0], "--base-model", "x/y"]) == 2  # no traceback
    assert "no results for" in capsys.readouterr().err


def test_frontier_reports_add_recipe_only_and_recovered_curves(tmp_path):
    """compress_presets reports (one per recovery setting) become the Pareto plot's size/WER curves; other
    policies and frames (ablations) stay out of them."""
    from lite_whisper_convert.cards import frontier_series

    def report(recovery, runs):
        path = tmp_path / f"{recovery}.json"
        path.write_text(json.dumps({"model": "tiny.en", "recovery": recovery, "stock": {"wer": 15.0},
                                    "runs": runs}))
        return path

    run = lambda params, wer, **extra: {"encoder_params": params, "wer": wer, "policy": "sensitivity",
                                        "frames": "real", **extra}
    series = frontier_series([
        report("none", [run(7.0e6, 15.5), run(5.3e6, 30.0), run(7.0e6, 40.0, policy="threshold")]),
        report("refit", [run(5.3e6, 20.0)]),
    ])
    assert series == {"decomposition only": [(5.3e6, 30.0), (7.0e6, 15.5)], "recovered (refit)": [(5.3e6, 20.0)]}
    with pytest.raises(CardError, match="not a benchmarks/compress_presets.py report"):
        frontier_series([write_results({"model": "m", "datasets": {}}, tmp_path / "eval.json")])


def test_card_says_in_words_whether_and_how_the_encoder_was_recovered():
    from lite_whisper_convert.cards import recipe_items

    distilled = {"frames": "real", "extra": {"recovery": {
        "method": "least-squares refit + 200 distillation steps", "train_clips": 68, "holdout_clips": 32,
        "holdout_relative_error": {"before": 0.0817, "after_refit": 0.006, "after": 0.0043}}}}
    items = dict(recipe_items(distilled))
    assert items["recovery"].startswith("least-squares refit + 200 distillation steps towards the stock encoder")
    assert "0.0817 -> 0.0043" in items["recovery"] and "extra" not in items
    recipe_only = dict(recipe_items({"frames": "real", "extra": {"recovery": {"method": "none"}, "note": "x"}}))
    assert recipe_only["recovery"] == "none (LiteASR recipe only)" and recipe_only["extra"] == '{"note": "x"}'


def test_card_states_the_conversion_cost_in_words():
    from lite_whisper_convert.cards import recipe_items

    stage = lambda name, seconds, gb: {"stage": name, "seconds": seconds, "peak_rss_gb": gb, "peak_gpu_gb": None}
    recipe = {"frames": "real", "stages": [stage("load model", 0.2, 0.9), stage("spectra", 6.1, 3.1)],
              "extra": {"stats_file_costs": {"calibration statistics": stage("calibration statistics", 93.1, 1.6),
                                             "sensitivity": stage("sensitivity", 104.4, 4.5)}}}
    items = dict(recipe_items(recipe))
    assert items["statistics file cost"] == "calibration statistics 93 s, sensitivity 104 s; 198 s in all, peak memory 4.5 GB"
    assert items["conversion cost"] == "spectra 6 s; 6 s in all, peak memory 3.1 GB"  # under a second: counted, not listed
    assert "stages" not in items and "extra" not in items


def test_a_model_evaluated_one_set_per_file_gets_every_set(family, tmp_path):
    """`lite-whisper eval` run once per set: the card shows every set, with their mean."""
    outcome = json.loads(family["results"][1].read_text())  # acc, evaluated on one set
    (name, data), = outcome["datasets"].items()
    other = dict(outcome, datasets={"second-set": dict(data, error_rate=data["error_rate"] + 10.0)})
    second = write_results(other, tmp_path / "acc-second-set.json")
    results = {result.name: result for result in load_results(family["results"] + [second])}
    acc = results["lite-whisper-tiny-acc"]
    assert list(acc.datasets) == [name, "second-set"]
    assert acc.mean_wer == pytest.approx(data["error_rate"] + 5.0)
    text = render_card(family["acc"], family["results"] + [second], base_model="openai/whisper-tiny", write=False).text
    assert "second-set" in text

