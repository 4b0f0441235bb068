"""examples/browser in a real headless Chromium: the page loads an exported LiteWhisper repo served on 127.0.0.1
through transformers.js (ONNX Runtime Web, wasm) and transcribes a LibriSpeech clip chosen in its file input.

Slow (a minute or more on 2 cores) and needs Debian's chromium, so it runs with `-m slow`:

    apt-get install -y chromium && (cd tests/js && npm ci --ignore-scripts)
    python -m pytest -q -m slow tests/test_browser.py
"""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, speech_set
from test_pipeline import build_lite_repo

from lite_whisper_convert.evaluation import word_error_rate
from lite_whisper_convert.onnx_export import export_onnx

JS_CLIENT = REPO_ROOT / "tests" / "js"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.slow


def _serve_module():
    spec = importlib.util.spec_from_file_location("serve", REPO_ROOT / "examples" / "browser" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_page_transcribes_a_chosen_file(tiny_en_dir, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed: playwright-core cannot drive the browser")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    if not (JS_CLIENT / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed: run `npm ci --ignore-scripts` in {JS_CLIENT}")
    data = speech_set("librispeech-test-clean-mini")
    folder = build_lite_repo(tiny_en_dir, tmp_path / "lite-tiny.en", attention_rank=256, mlp_rank=320)
    clip = data / "1089-134686-0000.flac"
    export_onnx(folder, dtypes=("fp32", "q8"), check_audio=clip, log=lambda *_: None)

    serve = _serve_module()
    server = serve.serve_in_thread([folder])
    try:
        url = serve.page_url(server, folder, dtype="q8")
        completed = subprocess.run(["node", "browser.mjs", url, str(clip), str(tmp_path / "page.png")],
                                   cwd=JS_CLIENT, capture_output=True, text=True, timeout=900)
    finally:
        server.shutdown()
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    reference = next(line.split(",", 1)[1] for line in (data / "metadata.csv").read_text().splitlines()
                     if line.startswith(clip.name))
    assert word_error_rate([reference], [result["transcript"]]) < 25, result
    assert (tmp_path / "page.png").stat().st_size > 0
