"""LiteWhisper modeling: exact low-rank algebra, no dense allocation, every Whisper forward path."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, TINY_WHISPER, factorise_exactly
from safetensors.torch import save_file
from transformers import AutoModel, WhisperConfig, WhisperForConditionalGeneration

from configuration_lite_whisper import LiteWhisperConfig
import modeling_lite_whisper
from modeling_lite_whisper import (
    LiteWhisperEncoder,
    LiteWhisperForConditionalGeneration,
    LowRankLinear,
    set_inference_layout,
    uses_reduced_attention,
)

RANKS = [{"q_proj": 16, "k_proj": 16, "v_proj": 24, "out_proj": 24, "fc1": 32, "fc2": 32}, {"k_proj": 8, "fc2": 48}]


@pytest.fixture
def dense_and_lite():
    torch.manual_seed(0)
    dense = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER)).eval()
    return dense, factorise_exactly(dense, RANKS)


def features(batch=2, config=TINY_WHISPER, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    frames = 2 * config["max_source_positions"]
    return torch.randn(batch, config["num_mel_bins"], frames, generator=generator).to(dtype)


def logits(model, input_features):
    decoder_input_ids = torch.tensor([[3, 5, 7, 9]] * input_features.shape[0])
    with torch.no_grad():
        return model(input_features=input_features, decoder_input_ids=decoder_input_ids).logits


def test_low_rank_linear_computes_its_factor_product():
    torch.manual_seed(0)
    weight1, weight2, bias = torch.randn(12, 3), torch.randn(3, 7), torch.randn(7)
    layer = LowRankLinear.from_factors(weight1, weight2, bias)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(layer(x), x @ weight1 @ weight2 + bias)
    assert "in_features=12, out_features=7, rank=3" in repr(layer)
    assert [name for name, _ in layer.named_parameters()] == ["weight1", "weight2", "bias"]


def test_low_rank_linear_rejects_factors_that_do_not_chain():
    with pytest.raises(ValueError, match="factors do not chain"):
        LowRankLinear.from_factors(torch.randn(12, 3), torch.randn(4, 7))
    with pytest.raises(ValueError, match="does not match out_features=7"):
        LowRankLinear.from_factors(torch.randn(12, 3), torch.randn(3, 7), torch.randn(6))


def test_projection_onto_a_full_basis_reproduces_the_dense_layer():
    torch.manual_seed(0)
    dense = torch.nn.Linear(10, 6)
    basis, _ = torch.linalg.qr(torch.randn(6, 6))  # orthonormal, full rank
    layer = LowRankLinear.from_linear(dense, basis, mean=torch.randn(6))
    x = torch.randn(4, 10)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)


def test_exact_factorisation_reproduces_the_dense_model(dense_and_lite):
    dense, lite = dense_and_lite
    x = features()
    torch.testing.assert_close(logits(lite, x), logits(dense, x), atol=1e-4, rtol=1e-4)
    layer = lite.model.encoder.layers[1]
    assert isinstance(layer.self_attn.k_proj, LowRankLinear) and isinstance(layer.fc2, LowRankLinear)
    assert isinstance(layer.self_attn.q_proj, torch.nn.Linear) and isinstance(layer.fc1, torch.nn.Linear)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(dense_and_lite, attn_implementation):
    dense, lite = dense_and_lite
    if hasattr(lite, "set_attn_implementation"):
        lite.set_attn_implementation(attn_implementation)
    else:  # transformers 4.x
        lite.config._attn_implementation = attn_implementation
    x = features()
    torch.testing.assert_close(logits(lite, x), logits(dense, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_tracks_float32(dense_and_lite, dtype):
    _, lite = dense_and_lite
    x = features()
    reference = logits(lite, x)
    half = logits(lite.to(dtype), x.to(dtype)).float()
    assert torch.isfinite(half).all()
    assert (half - reference).abs().max() < 0.05 * reference.abs().max()


def test_generate_runs_in_batches(dense_and_lite):
    dense, lite = dense_and_lite
    for model in (dense, lite):
        model.generation_config.forced_decoder_ids = None
    x = features(batch=3)
    kwargs = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(lite.generate(x, **kwargs), dense.generate(x, **kwargs))


def test_encoder_compiles_with_fullgraph(dense_and_lite):
    _, lite = dense_and_lite
    x = features()
    with torch.no_grad():
        eager = lite.model.encoder(x).last_hidden_state
        compiled = torch.compile(lite.model.encoder, fullgraph=True)(x).last_hidden_state
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_save_writes_a_complete_fp16_repo_atomically(dense_and_lite, tmp_path):
    _, lite = dense_and_lite
    target = tmp_path / "repo"
    lite.save_pretrained(target)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["repo"], "no staging folder may be left behind"
    files = {path.name for path in target.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert {"configuration_lite_whisper.py", "modeling_lite_whisper.py"} <= files
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "lite-whisper"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSpeechSeq2Seq"}
    assert config.get("dtype", config.get("torch_dtype")) == "float32"  # the dtype to load in; weights stay fp16
    from safetensors import safe_open

    with safe_open(target / "model.safetensors", "pt") as weights:
        assert "proj_out.weight" not in weights.keys()
        assert weights.get_tensor("model.encoder.layers.0.fc1.weight1").dtype == torch.float16


def test_save_into_an_existing_folder_keeps_other_files(dense_and_lite, tmp_path):
    _, lite = dense_and_lite
    (tmp_path / "preprocessor_config.json").write_text("{}")
    lite.save_pretrained(tmp_path, dtype=torch.float32)
    assert (tmp_path / "preprocessor_config.json").read_text() == "{}"
    reloaded = LiteWhisperForConditionalGeneration.from_pretrained(tmp_path)  # saved in float32
    x = features()
    torch.testing.assert_close(logits(reloaded, x), logits(lite, x))


def test_reload_in_a_fresh_process_through_auto_classes(dense_and_lite, tmp_path):
    _, lite = dense_and_lite
    lite.save_pretrained(tmp_path / "repo", dtype=torch.float32)
    x = features()
    torch.save(x, tmp_path / "features.pt")
    expected = logits(lite, x)
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForSpeechSeq2Seq
        x = torch.load({str(tmp_path / "features.pt")!r})
        ids = torch.tensor([[3, 5, 7, 9]] * x.shape[0])
        model = AutoModelForSpeechSeq2Seq.from_pretrained({str(tmp_path / "repo")!r}, trust_remote_code=True)
        with torch.no_grad():
            torch.save(model(input_features=x, decoder_input_ids=ids).logits, {str(tmp_path / "logits.pt")!r})
        base = AutoModel.from_pretrained({str(tmp_path / "repo")!r}, trust_remote_code=True)
        print(type(model).__name__, type(base).__name__)
        """
    )
    # A fresh interpreter, started in an unrelated folder: transformers loads the code saved in the repo folder.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["LiteWhisperForConditionalGeneration", "LiteWhisperModel"]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def test_loading_without_trust_remote_code_fails_and_says_what_to_pass(dense_and_lite, tmp_path):
    _, lite = dense_and_lite
    lite.save_pretrained(tmp_path / "repo")
    # In a fresh process, as a user meets it: a process that already loaded a LiteWhisper with trust_remote_code
    # has its classes registered with the Auto classes, and transformers then uses them (still strictly loaded).
    for auto_class in ("AutoModelForSpeechSeq2Seq", "AutoModel"):
        script = f"import transformers\ntransformers.{auto_class}.from_pretrained({str(tmp_path / 'repo')!r})"
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        assert result.returncode != 0 and "trust_remote_code=True" in result.stderr, result.stderr[-2000:]


def test_an_official_format_folder_loads_and_matches_its_dense_equivalent(tmp_path):
    """The efficient-speech/lite-whisper-* layout: 'lite-whisper' type, AutoConfig/AutoModel only, fp32,
    some slots absent, k_proj low rank with a bias, no proj_out.weight, no processor files."""
    torch.manual_seed(0)
    dense = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER)).eval()
    ranks = [{"k_proj": 8, "fc1": 16}, {"q_proj": 12, "v_proj": 12, "out_proj": 12, "fc2": 20}]
    state = {name: tensor.clone() for name, tensor in dense.state_dict().items() if name != "proj_out.weight"}
    with torch.no_grad():
        for layer_index, layer_ranks in enumerate(ranks):
            for slot, rank in layer_ranks.items():
                prefix = f"model.encoder.layers.{layer_index}." + ("self_attn." if "proj" in slot else "")
                dense_layer = dense.get_submodule(prefix + slot)
                weight1 = torch.randn(dense_layer.in_features, rank) / dense_layer.in_features**0.5
                weight2 = torch.randn(rank, dense_layer.out_features) / rank**0.5
                bias = torch.randn(dense_layer.out_features) * 0.1
                dense_layer.weight.copy_((weight1 @ weight2).T)  # the dense equivalent of the factors
                if dense_layer.bias is None:  # k_proj: Whisper has no bias, the published factors do
                    dense_layer.bias = torch.nn.Parameter(bias.clone())
                else:
                    dense_layer.bias.copy_(bias)
                state.pop(prefix + slot + ".weight")
                state.pop(prefix + slot + ".bias", None)
                state.update({prefix + slot + ".weight1": weight1, prefix + slot + ".weight2": weight2})
                state[prefix + slot + ".bias"] = bias
    config = {**WhisperConfig(**TINY_WHISPER).to_dict(), "model_type": "lite-whisper", "low_rank_config": ranks}
    config["architectures"] = ["LiteWhisperForConditionalGeneration"]
    config["auto_map"] = {
        "AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
        "AutoModel": "modeling_lite_whisper.LiteWhisperForConditionalGeneration",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, tmp_path / "model.safetensors")
    for name in ("configuration_lite_whisper.py", "modeling_lite_whisper.py"):
        shutil.copyfile(REPO_ROOT / name, tmp_path / name)

    x = features()
    expected = logits(dense, x)
    ours = LiteWhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(ours, x), expected, atol=1e-4, rtol=1e-4)
    remote = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    torch.testing.assert_close(logits(remote, x), expected, atol=1e-4, rtol=1e-4)


LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128)


def test_large_v3_on_the_meta_device_has_no_dense_encoder_projections():
    ranks = [{slot: 64 for slot in ("q_proj", "k_proj", "v_proj", "out_proj")} | {"fc1": 128, "fc2": 128}] * 32
    config = LiteWhisperConfig(low_rank_config=ranks, **LARGE_V3, decoder_layers=32, decoder_attention_heads=20,
                               decoder_ffn_dim=5120, vocab_size=51866)
    with torch.device("meta"):
        model = LiteWhisperForConditionalGeneration(config)
    encoder_names = [name for name, _ in model.model.encoder.named_parameters()]
    assert not [name for name in encoder_names if name.endswith(("proj.weight", "fc1.weight", "fc2.weight"))]
    assert sum(name.endswith("weight1") for name in encoder_names) == 32 * 6


def test_building_a_large_v3_encoder_allocates_only_what_it_keeps():
    """Peak memory of building a large-v3-sized LiteWhisper encoder stays far below its dense size (2.5 GB)."""
    script = textwrap.dedent(
        f"""
        import resource, torch
        from configuration_lite_whisper import LiteWhisperConfig
        from modeling_lite_whisper import LiteWhisperEncoder
        ranks = [dict(q_proj=64, k_proj=64, v_proj=64, out_proj=64, fc1=128, fc2=128)] * 32
        config = LiteWhisperConfig(low_rank_config=ranks, **{LARGE_V3!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        encoder = LiteWhisperEncoder(config)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(sum(p.numel() for p in encoder.parameters()), (after - before) * 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    parameters, grown_bytes = map(int, result.stdout.split())
    dense_projection_bytes = 32 * (4 * 1280 * 1280 + 2 * 1280 * 5120) * 4
    assert parameters < 100_000_000
    assert grown_bytes < parameters * 4 + 200_000_000 < dense_projection_bytes / 2


def test_inference_layout_merges_only_where_dense_is_cheaper_and_never_changes_results():
    torch.manual_seed(0)
    # rank 30 of 64x64: 0.94 of the dense FLOPs, above every device's merge threshold
    near_break_even = LowRankLinear.from_factors(torch.randn(64, 30), torch.randn(30, 64), torch.randn(64))
    thin = LowRankLinear.from_factors(torch.randn(64, 8), torch.randn(8, 64), torch.randn(64))
    x = torch.randn(3, 64)
    factored = near_break_even(x)
    near_break_even.eval(), thin.eval()
    assert near_break_even.merged_weight is not None and thin.merged_weight is None
    with torch.no_grad():
        torch.testing.assert_close(near_break_even(x), factored, atol=1e-4, rtol=1e-4)
    assert "merged_weight" not in near_break_even.state_dict()
    near_break_even.train()
    assert near_break_even.merged_weight is None


def test_factored_q_k_v_share_one_first_factor_gemm_without_changing_results(dense_and_lite, monkeypatch):
    _, lite = dense_and_lite
    monkeypatch.setitem(modeling_lite_whisper.REDUCED_ATTENTION_BELOW_FLOP_RATIO, "cpu", 0.0)  # per-head only
    lite.eval()
    attention = lite.model.encoder.layers[0].self_attn  # q, k, v all factored
    slots = [attention.q_proj, attention.k_proj, attention.v_proj]
    groups = {id(slot.shared_first_factor[0]) for slot in slots}
    assert len(groups) == 1 and slots[0].shared_first_factor[0].weight.shape == (16 + 16 + 24, 64)
    assert lite.model.encoder.layers[1].self_attn.k_proj.shared_first_factor is None  # alone in its layer
    x, other = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    with torch.no_grad():
        fused = [slot(x) for slot in slots]
        assert slots[0].shared_first_factor[0]._latest is None  # the product is not held once all took theirs
        mixed = [slots[0](x), slots[1](other), slots[2](x)]  # a caller feeding different inputs is still exact
        lite.train()
        assert all(slot.shared_first_factor is None for slot in slots)
        separate = [slot(x) for slot in slots]
        separate_other = slots[1](other)
    for got, expected in zip(fused, separate):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], separate_other, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[2], separate[2], atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_factors_even_in_eval_mode():
    torch.manual_seed(0)
    layer = LowRankLinear.from_factors(torch.randn(64, 28), torch.randn(28, 64), torch.randn(64)).eval()
    layer(torch.randn(3, 64)).sum().backward()
    assert layer.weight1.grad is not None and layer.weight2.grad is not None


def test_loaded_models_use_the_merged_layout_and_reloading_weights_refreshes_it(dense_and_lite, tmp_path):
    _, lite = dense_and_lite
    lite.save_pretrained(tmp_path, dtype=torch.float32)
    reloaded = LiteWhisperForConditionalGeneration.from_pretrained(tmp_path)  # saved in float32
    v_proj = reloaded.model.encoder.layers[0].self_attn.v_proj  # rank 24 of 64: 0.75 of dense FLOPs on CPU
    fc2 = reloaded.model.encoder.layers[1].fc2  # rank 48 of 64/128: dense is cheaper
    assert v_proj.merged_weight is None and fc2.merged_weight is not None
    x = features()
    torch.testing.assert_close(logits(reloaded, x), logits(lite, x), atol=1e-4, rtol=1e-4)
    state = reloaded.state_dict()
    state["model.encoder.layers.1.fc2.weight1"] = 2 * state["model.encoder.layers.1.fc2.weight1"]
    reloaded.load_state_dict(state)
    torch.testing.assert_close(fc2.merged_weight, fc2.dense_weight())
    assert torch.allclose(fc2.merged_weight, 2 * (lite.model.encoder.layers[1].fc2.dense_weight()))


def test_a_newly_built_model_is_initialised_like_whisper():
    torch.manual_seed(0)
    model = LiteWhisperForConditionalGeneration(LiteWhisperConfig(low_rank_config=RANKS, **TINY_WHISPER))
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
    encoder = model.model.encoder
    assert 0 < encoder.conv1.weight.std() < 1 and 0 < encoder.layers[1].fc1.weight.std() < 1
    assert torch.equal(encoder.layers[0].self_attn_layer_norm.weight, torch.ones(64))
    assert torch.equal(encoder.layers[0].self_attn.q_proj.bias, torch.zeros(64))


# head_dim 16: layers 0 and 1 run reduced attention (in 6 and 8 dimensions: r_k < r_v, r_v < r_k), layer 2
# cannot (v is dense); positions: 30
REDUCED_RANKS = [
    {"q_proj": 8, "k_proj": 4, "v_proj": 6, "out_proj": 24, "fc1": 32},
    {"q_proj": 12, "k_proj": 8, "v_proj": 4},
    {"q_proj": 8, "k_proj": 8},
]


def reduced_encoder(dtype=torch.float32):
    torch.manual_seed(0)
    config = LiteWhisperConfig(low_rank_config=REDUCED_RANKS, **{**TINY_WHISPER, "encoder_layers": 3})
    encoder = LiteWhisperEncoder(config)
    with torch.no_grad():
        for attention in (layer.self_attn for layer in encoder.layers):
            for slot in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                if slot.bias is not None:
                    slot.bias.normal_()  # biases matter to the folds: q's moves every score, v's the output
    return encoder.to(dtype).eval()


def per_head(encoder, monkeypatch):
    """The same encoder with attention in the per-head form everywhere (the plain factored forward)."""
    monkeypatch.setitem(modeling_lite_whisper.REDUCED_ATTENTION_BELOW_FLOP_RATIO, "cpu", 0.0)
    encoder.eval()
    monkeypatch.undo()


def test_reduced_attention_is_chosen_where_key_and_value_ranks_are_below_the_head_dimension():
    tiny = dict(d_model=384, num_heads=6, positions=1500, threshold=0.9)  # head_dim 64
    assert uses_reduced_attention({"q_proj": 96, "k_proj": 32, "v_proj": 48}, **tiny)
    assert uses_reduced_attention({"q_proj": 16, "k_proj": 16, "v_proj": 16, "out_proj": 64}, **tiny)
    assert not uses_reduced_attention({"q_proj": 48, "k_proj": 80, "v_proj": 32}, **tiny)  # keys need 80 dims
    assert not uses_reduced_attention({"q_proj": 32, "k_proj": 32}, **tiny)  # v dense: nothing to share
    assert not uses_reduced_attention({"q_proj": 128, "k_proj": 128, "v_proj": 128, "out_proj": 128}, **tiny)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reduced_attention_matches_per_head_attention(dtype, monkeypatch):
    encoder = reduced_encoder()
    assert [layer.self_attn.reduced_attention is not None for layer in encoder.layers] == [True, True, False]
    x = features(batch=2)
    with torch.no_grad():
        reduced = encoder(x).last_hidden_state
        per_head(encoder, monkeypatch)
        assert all(layer.self_attn.reduced_attention is None for layer in encoder.layers)
        plain = encoder(x).last_hidden_state
        torch.testing.assert_close(reduced, plain, atol=1e-4, rtol=1e-4)
        if dtype == torch.float16:
            reduced_half = reduced_encoder(dtype)(x.to(dtype)).last_hidden_state.float()
            assert torch.isfinite(reduced_half).all()
            torch.testing.assert_close(reduced_half, plain, atol=2e-2, rtol=2e-2)


def test_reduced_attention_is_inference_only_and_never_saved(monkeypatch):
    encoder = reduced_encoder()
    saved_names = set(encoder.state_dict())
    x = features(batch=1)
    with torch.no_grad():
        reduced = encoder(x).last_hidden_state
    # gradients must reach the factors: with grad enabled the inherited per-head forward runs
    encoder(x).last_hidden_state.sum().backward()
    assert encoder.layers[0].self_attn.q_proj.weight1.grad is not None
    # attention weights are what the reduced form never forms: asking for them takes the per-head forward
    encoder.config._attn_implementation = "eager"  # the implementation that returns attention weights
    with torch.no_grad():
        outputs = encoder(x, output_attentions=True)
    assert all(weights is not None and weights.shape == (1, 4, 30, 30) for weights in outputs.attentions)
    torch.testing.assert_close(outputs.last_hidden_state, reduced, atol=1e-4, rtol=1e-4)
    encoder.train()
    assert all(layer.self_attn.reduced_attention is None for layer in encoder.layers)
    encoder.eval()
    assert [layer.self_attn.reduced_attention is not None for layer in encoder.layers] == [True, True, False]
    assert set(encoder.state_dict()) == saved_names


def test_reduced_attention_compiles_with_fullgraph():
    encoder = reduced_encoder()
    x = features(batch=1)
    with torch.no_grad():
        eager = encoder(x).last_hidden_state
        compiled = torch.compile(encoder, fullgraph=True)(x).last_hidden_state
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_switching_the_inference_layout_off_runs_the_factors_as_they_are_edited(monkeypatch):
    encoder = reduced_encoder()
    x = features(batch=1)
    set_inference_layout(encoder, False)
    assert encoder.layers[0].self_attn.reduced_attention is None and not encoder.training
    with torch.no_grad():
        for layer in encoder.layers:  # an in-place edit of every factor, as recovery makes
            for slot in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                slot.weight2.mul_(1.5)
        edited = encoder(x).last_hidden_state
        set_inference_layout(encoder, True)
        assert encoder.layers[0].self_attn.reduced_attention is not None
        rebuilt = encoder(x).last_hidden_state
        per_head(encoder, monkeypatch)
        plain = encoder(x).last_hidden_state
    torch.testing.assert_close(edited, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rebuilt, plain, atol=1e-4, rtol=1e-4)
