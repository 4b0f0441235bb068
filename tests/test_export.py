"""Export: a complete, self-contained repo written atomically, its recipe, and the fresh-process smoke test."""

import json

import pytest
import torch
from compress_fixtures import clips, tiny_feature_extractor, write_tiny_base

from lite_whisper_convert.calibration import collect_stats
from lite_whisper_convert.decomposition import decompose, spectra
from lite_whisper_convert.export import (
    ExportError,
    OutputExistsError,
    Recipe,
    SmokeTestError,
    copy_base_files,
    export,
    rank_table,
    smoke_test,
)

RANKS = [{"q_proj": 16, "fc1": 32}, {"k_proj": 16, "fc2": 32}]


@pytest.fixture(scope="module")
def base_and_lite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stock") / "tiny-random-whisper"
    model = write_tiny_base(folder)
    stats = collect_stats(model, tiny_feature_extractor(), clips(4), progress=False)
    return folder, model, decompose(model, spectra(stats), RANKS)


def recipe(folder):
    return Recipe(base_model=str(folder), calibration="clips", num_utterances=4, frames="real",
                  rank_policy={"policy": "threshold", "thresholds": {"attention": 0.9, "mlp": 0.95}})


def test_export_writes_a_complete_repo_and_nothing_else(base_and_lite, tmp_path):
    folder, model, lite = base_and_lite
    out, smoke = export(lite, tmp_path / "lite", str(folder), recipe(folder), base_config=model.config)
    assert smoke is None and sorted(p.name for p in tmp_path.iterdir()) == ["lite"]
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_lite_whisper.py", "modeling_lite_whisper.py",
            "generation_config.json", "preprocessor_config.json", "tokenizer.json", "README.md",
            "compression_recipe.json"} <= files
    assert (out / "generation_config.json").read_bytes() == (folder / "generation_config.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["low_rank_config"] == RANKS and config["model_type"] == "lite-whisper"
    summary = json.loads((out / "compression_recipe.json").read_text())
    assert summary["low_rank_config"] == RANKS and summary["factored_linears"] == 4 and summary["dense_linears"] == 8
    assert summary["encoder_params"] < summary["stock_encoder_params"]
    readme = (out / "README.md").read_text()
    for expected in ("4 clips of `clips`", "frames: `real`", '"mlp": 0.95', "| 0 | 16 | — | — | — | 32 | — |",
                     "made with lite-whisper"):
        assert expected in readme
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("model.encoder.layers.0.fc1.weight1").dtype == torch.float16


def test_an_existing_output_is_refused_or_replaced_whole(base_and_lite, tmp_path):
    folder, model, lite = base_and_lite
    (tmp_path / "lite").mkdir()
    (tmp_path / "lite" / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export(lite, tmp_path / "lite", str(folder), recipe(folder))
    export(lite, tmp_path / "lite", str(folder), recipe(folder), overwrite=True)
    assert not (tmp_path / "lite" / "old.txt").exists() and (tmp_path / "lite" / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite"]


def test_a_base_without_tokenizer_leaves_no_output(base_and_lite, tmp_path):
    folder, model, lite = base_and_lite
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ExportError, match="lacks a tokenizer"):
        export(lite, tmp_path / "lite", str(bare), recipe(bare))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="lacks a feature extractor config and a tokenizer and generation_config"):
        copy_base_files(str(tmp_path / "empty"), tmp_path / "empty")


def test_smoke_test_reloads_in_a_fresh_process_and_failure_leaves_no_output(base_and_lite, tmp_path, monkeypatch):
    folder, model, lite = base_and_lite
    clip = clips(1)[0]
    out, smoke = export(lite, tmp_path / "lite", str(folder), recipe(folder), smoke_clip=clip)
    assert smoke.clip == clip.name and smoke.stock_text  # the random model still emits tokens
    (out / "modeling_lite_whisper.py").write_text("raise ImportError('broken model code')\n")
    with pytest.raises(SmokeTestError, match="broken model code"):
        smoke_test(out, str(folder), clip.audio)

    def failing_smoke_test(staging, *args, **kwargs):
        assert staging.name.startswith(".other.partial-")  # it runs on the staging folder, before the rename
        raise SmokeTestError("smoke test: failed")

    monkeypatch.setattr("lite_whisper_convert.export.smoke_test", failing_smoke_test)
    with pytest.raises(SmokeTestError):
        export(lite, tmp_path / "other", str(folder), recipe(folder), smoke_clip=clip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite"]


def test_rank_table_marks_dense_slots():
    table = rank_table([{"q_proj": 64}, {}], 2).splitlines()
    assert table[0] == "| layer | q_proj | k_proj | v_proj | out_proj | fc1 | fc2 |"
    assert table[2] == "| 0 | 64 | — | — | — | — | — |" and table[3] == "| 1 | — | — | — | — | — | — |"
