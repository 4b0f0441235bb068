"""Pushing to the Hub: validation rejects incomplete or broken folders, a dry run lists the whole repo with no
token or network, a missing token is a clear error, and a real push is one create_repo + one upload_folder."""

import shutil

import pytest
import torch

from conftest import factorise_exactly
from lite_whisper_convert import hub
from lite_whisper_convert.hub import PushError, missing_files, push_folder, upload_files, validate_folder
from test_evaluation import TINY_RANKS, tiny_dense_model, tiny_processor

EXPECTED = {
    "README.md", "config.json", "configuration_lite_whisper.py", "generation_config.json", "model.safetensors",
    "modeling_lite_whisper.py", "preprocessor_config.json", "pareto.png", "processor_config.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A complete LiteWhisper repo folder (tiny random weights, processor, card, plot) plus stray files."""
    folder = tmp_path_factory.mktemp("push") / "lite-whisper-tiny-acc"
    factorise_exactly(tiny_dense_model(), TINY_RANKS).save_pretrained(folder, dtype=torch.float32)
    processor = tiny_processor()
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)  # for transformers 4.x users
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (folder / "pareto.png").write_bytes(b"\x89PNG fake")
    (folder / ".DS_Store").write_text("junk")  # never uploaded
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_lite_whisper.cpython-311.pyc").write_bytes(b"junk")
    return folder


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no saved login."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def copy_without(repo, tmp_path, *names):
    copy = tmp_path / repo.name
    shutil.copytree(repo, copy)
    for name in names:
        (copy / name).unlink()
    return copy


def test_complete_folder_lists_every_file_but_hidden_ones_and_caches(repo):
    files = upload_files(repo)
    assert EXPECTED <= set(files)
    assert "tokenizer.json" in files or {"vocab.json", "merges.txt"} <= set(files)
    assert not [name for name in files if name.startswith(".") or "__pycache__" in name]
    assert missing_files(repo) == []


@pytest.mark.parametrize("removed, reason", [
    ("README.md", "model card README.md"),
    ("modeling_lite_whisper.py", "code file modeling_lite_whisper.py"),
    ("preprocessor_config.json", "feature extractor"),
    ("generation_config.json", "generation_config.json"),
    ("model.safetensors", "weights"),
])
def test_validation_rejects_an_incomplete_folder(repo, tmp_path, removed, reason):
    incomplete = copy_without(repo, tmp_path, removed)
    with pytest.raises(PushError, match="not a complete LiteWhisper repo") as error:
        validate_folder(incomplete, load=False)
    assert reason in str(error.value)


def test_validation_rejects_a_stock_whisper_folder(tmp_path):
    folder = tmp_path / "whisper"
    tiny_dense_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    (folder / "README.md").write_text("# card\n")
    problems = " ".join(missing_files(folder))
    assert "model_type 'whisper'" in problems and "code file configuration_lite_whisper.py" in problems


def test_validation_loads_in_a_fresh_process_and_catches_broken_code(repo, tmp_path):
    loaded = hub.load_in_fresh_process(repo)
    assert loaded["class"] == "LiteWhisperForConditionalGeneration"
    assert loaded["module"].startswith("transformers_modules")  # the folder's own code, not the installed one
    broken = copy_without(repo, tmp_path)
    modeling = broken / "modeling_lite_whisper.py"
    modeling.write_text(modeling.read_text().replace("class LowRankLinear(nn.Module):", "class LowRankLinear(nn.Module)"))
    with pytest.raises(PushError, match="does not load with trust_remote_code") as error:
        validate_folder(broken)
    assert "SyntaxError" in str(error.value)


def test_dry_run_lists_the_full_repo_without_token_or_network(repo, no_token, capsys):
    from lite_whisper_convert.cli import main

    assert main(["push", str(repo), "--repo-id", "someone/lite-whisper-tiny-acc", "--dry-run", "--private"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "someone/lite-whisper-tiny-acc (private)" in out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == set(upload_files(repo)) and EXPECTED <= listed


def test_push_without_token_names_the_way_to_log_in(repo, no_token, capsys):
    from lite_whisper_convert.cli import main

    with pytest.raises(PushError, match="huggingface-cli login.*HF_TOKEN"):
        push_folder(repo, "someone/x", validate=False)
    assert main(["push", str(repo), "--repo-id", "someone/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err


def test_push_is_one_commit(repo, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def create_branch(self, repo_id, **kwargs):
            calls.append(("create_branch", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://huggingface.co/someone/x/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_folder(repo, "someone/x", private=True, revision="v1", token="hf_test", validate=False, log=lambda *_: None)
    assert url.endswith("/commit/abc")
    assert [call[0] for call in calls] == ["token", "create_repo", "create_branch", "upload_folder"]
    assert calls[0][1] == "hf_test"
    assert calls[1][2]["private"] is True and calls[1][2]["exist_ok"] is True
    assert calls[2][2]["branch"] == "v1"
    upload = calls[3][1]
    assert upload["repo_id"] == "someone/x" and upload["revision"] == "v1" and upload["folder_path"] == str(repo)
    assert upload["ignore_patterns"] == hub.IGNORE_PATTERNS


def test_repo_id_must_be_org_slash_name(repo):
    with pytest.raises(PushError, match="ORG/NAME"):
        push_folder(repo, "just-a-name", dry_run=True, validate=False)
