"""What `lite-whisper compress` really writes, from the real tiny.en weights and real speech, used as the README
promises: `push --dry-run` validates it, the README's snippets run on it in a fresh process exactly as printed
(float32 on CPU by default, no interactive prompt), and `transcribe` never asks "run the custom code? [y/N]".

One cheap compression serves the module (threshold policy, so no sensitivity probe; 8 calibration clips; no
recovery), with the smoke test on held-out clips.
"""

import json
import os
import subprocess
import sys

import jiwer
import pytest
from conftest import REPO_ROOT, speech_set

from lite_whisper_convert import cli

PROMPT = "Do you wish to run the custom code"
CLIP = "1089-134691-0000.flac"
CLIP_TEXT = "he could wait no longer"


@pytest.fixture(scope="module")
def compressed(tiny_en_dir, tmp_path_factory):
    """(repo folder, the compress command's stdout)."""
    out = tmp_path_factory.mktemp("real") / "lite-whisper-tiny.en-0.9"
    calibration = speech_set("librispeech-train-clean-100-calib")
    argv = ["compress", str(tiny_en_dir), "--out", str(out), "--calibration", str(calibration), "--num-samples", "8",
            "--target-encoder-params", "0.9", "--policy", "threshold", "--recovery", "none", "--no-progress"]
    completed = subprocess.run([sys.executable, "-m", "lite_whisper_convert.cli", *argv], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed.stdout


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def test_compress_reports_its_calibration_and_smoke_tests_on_held_out_clips(compressed):
    _, stdout = compressed
    assert "calibration: 8 clips," in stdout and "s of audio (calibrated)" in stdout
    assert "smoke test on held-out clips" in stdout
    stock = stdout.split("  stock: ", 1)[1].split("\n", 1)[0].split(" | ")
    lite = stdout.split("  lite:  ", 1)[1].split("\n", 1)[0].split(" | ")
    assert len(stock) == len(lite) == 3
    assert jiwer.wer([words(text) for text in stock], [words(text) for text in lite]) < 0.2


def test_push_dry_run_validates_a_real_compress_output(compressed, capsys, monkeypatch):
    folder, _ = compressed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["push", str(folder), "--repo-id", "org/lite-whisper-tiny.en", "--dry-run"]) == 0
    output = capsys.readouterr()
    assert "dry run: would upload" in output.out and "model.safetensors" in output.out, output.err
    assert PROMPT not in output.out + output.err


def readme_snippets() -> list:
    """The README's Python snippets of "Using a LiteWhisper model", as printed."""
    section = (REPO_ROOT / "README.md").read_text().split("## Using a LiteWhisper model", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


@pytest.mark.parametrize("index", [0, 1], ids=["pipeline", "model classes"])
def test_readme_snippets_run_unchanged_in_a_fresh_process(compressed, tmp_path, index):
    folder, _ = compressed
    snippets = readme_snippets()
    assert len(snippets) == 2
    hub_id = '"efficient-speech/lite-whisper-large-v3-turbo-acc"'
    assert hub_id in snippets[index] and '"audio.flac"' in snippets[index]
    clip = speech_set("librispeech-test-clean-mini") / CLIP
    code = snippets[index].replace(hub_id, repr(str(folder))).replace('"audio.flac"', repr(str(clip)))
    # stdin stays open and silent, like a terminal nobody types into: a prompt would wait 15 s and print itself
    completed = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               stdin=subprocess.PIPE, timeout=600,
                               env=dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules")))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert PROMPT not in completed.stdout + completed.stderr
    assert words(completed.stdout.strip().splitlines()[-1]) == CLIP_TEXT


def test_saved_config_asks_for_float32(compressed):
    folder, _ = compressed
    config = json.loads((folder / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"


def test_transcribe_of_a_lite_whisper_never_prompts(compressed):
    folder, _ = compressed
    clip = speech_set("librispeech-test-clean-mini") / CLIP
    completed = subprocess.run([sys.executable, "-m", "lite_whisper_convert.cli", "transcribe", str(folder), str(clip)],
                               capture_output=True, text=True, stdin=subprocess.PIPE, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert PROMPT not in completed.stdout + completed.stderr
    assert words(completed.stdout.split("\t", 1)[1]) == CLIP_TEXT
