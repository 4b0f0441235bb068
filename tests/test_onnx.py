"""ONNX export and runtimes: `lite-whisper export-onnx`, ONNX Runtime decoding (`--runtime onnx`) and transformers.js in
Node, on a LiteWhisper repo built from the real tiny.en weights and real LibriSpeech clips."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile
import torch
from compress_fixtures import write_tiny_base
from conftest import REPO_ROOT, speech_set
from test_pipeline import build_lite_repo

from lite_whisper_convert import onnx_export
from lite_whisper_convert.audio import iter_audio_folder
from lite_whisper_convert.cli import main
from lite_whisper_convert.evaluation import generation_kwargs, load_model, word_error_rate
from lite_whisper_convert.onnx_export import OnnxExportError, OnnxMismatchError, export_onnx
from lite_whisper_convert.onnx_runtime import OnnxRuntimeError, load_onnx_model

JS_CLIENT = REPO_ROOT / "tests" / "js"
ATTENTION_RANK, MLP_RANK = 256, 320


@pytest.fixture(scope="module")
def clips():
    return list(iter_audio_folder(speech_set("librispeech-test-clean-mini")))


@pytest.fixture(scope="module")
def exported(tiny_en_dir, clips, tmp_path_factory):
    """A LiteWhisper repo (SVD cuts of real tiny.en) with its fp32 and q8 ONNX files, exported once."""
    folder = build_lite_repo(tiny_en_dir, tmp_path_factory.mktemp("lite-onnx") / "lite-tiny.en",
                             attention_rank=ATTENTION_RANK, mlp_rank=MLP_RANK)
    check = speech_set("librispeech-test-clean-mini") / clips[0].name
    report = export_onnx(folder, dtypes=("fp32", "q8"), check_audio=check, log=lambda *_: None)
    return folder, report


def _generated(tokens, end):
    tokens = list(tokens)
    return tokens[: tokens.index(end)] if end in tokens else tokens


def test_export_writes_the_files_transformers_js_reads(exported):
    folder, report = exported
    names = sorted(path.name for path in (folder / "onnx").iterdir())
    assert names == ["decoder_model_merged.onnx", "decoder_model_merged_quantized.onnx", "encoder_model.onnx",
                     "encoder_model_quantized.onnx"]
    assert report.errors["fp32"]["encoder"] < 1e-4 and report.errors["fp32"]["decoder"] < 1e-4
    assert (folder / "preprocessor_config.json").is_file() and (folder / "tokenizer.json").is_file()

    decoder = onnx.load(str(folder / "onnx" / "decoder_model_merged.onnx"), load_external_data=False)
    inputs = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in decoder.graph.input}
    assert list(inputs)[:2] == ["input_ids", "encoder_hidden_states"] and "use_cache_branch" in inputs
    # transformers.js builds the first step's empty past from these shapes: batch_size named, heads and head_dim fixed
    assert inputs["past_key_values.3.decoder.key"][0] == "batch_size"
    assert inputs["past_key_values.3.decoder.key"][1:2] == [6] and inputs["past_key_values.3.encoder.value"][3] == 64
    outputs = [value.name for value in decoder.graph.output]
    assert outputs[0] == "logits" and "present.0.encoder.key" in outputs and "present.3.decoder.value" in outputs
    assert [node.op_type for node in decoder.graph.node] == ["If"]


def test_decoder_steps_with_past_return_no_copy_of_the_cross_attention_cache(exported, clips):
    """After the first step the merged decoder returns empty cross-attention keys/values (callers keep the first
    step's, as transformers.js does) instead of copying every layer's [1, 6, 1500, 64] tensors at each step."""
    folder, _ = exported
    decoder = onnx_export.session(folder / "onnx" / "decoder_model_merged.onnx")
    model, processor = load_model(folder, device="cpu")
    features = processor.feature_extractor(clips[0].audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        states = model.get_encoder()(features).last_hidden_state.numpy()
    names = [value.name for value in decoder.get_outputs()]
    prompt = np.array([onnx_export.decoder_prompt(model)])
    first = dict(zip(names, decoder.run(names, {"input_ids": prompt, "encoder_hidden_states": states,
                                                "use_cache_branch": np.array([False]),
                                                **onnx_export.empty_past(decoder, 1)})))
    assert first["present.0.encoder.key"].shape == (1, 6, 1500, 64)
    past = onnx_export.next_past(first, None)
    second = dict(zip(names, decoder.run(names, {"input_ids": first["logits"][:, -1:].argmax(-1),
                                                 "encoder_hidden_states": states,
                                                 "use_cache_branch": np.array([True]), **past})))
    assert second["present.3.encoder.value"].shape == (1, 6, 0, 64)
    assert second["present.3.decoder.value"].shape == (1, 6, prompt.shape[1] + 1, 64)
    assert onnx_export.next_past(second, past)["past_key_values.3.encoder.value"] is past[
        "past_key_values.3.encoder.value"]


def test_the_q8_decoder_quantizes_its_logits_projection(exported):
    """The logits projection (tied to the token embedding, vocab x d) is the decoder's largest matrix: in the q8
    file it is int8 as [d, vocab], and the float copy that remains is the embedding table the lookup reads."""
    folder, _ = exported
    decoder = onnx.load(str(folder / "onnx" / "decoder_model_merged_quantized.onnx"))
    shapes = {(tuple(tensor.dims), tensor.data_type) for tensor in decoder.graph.initializer}
    d, vocab = 384, 51864
    assert ((d, vocab), onnx.TensorProto.INT8) in shapes
    assert ((d, vocab), onnx.TensorProto.FLOAT) not in shapes and ((vocab, d), onnx.TensorProto.FLOAT) in shapes


def test_smoothing_the_logits_projection_keeps_the_logits_and_evens_its_input():
    """`smooth_logits` moves per-channel scales from the final layer norm's output into the projection's weight: the
    logits stay the same, and the projection's input no longer has a few channels far above the rest (what one
    int8 scale per token cannot carry)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    d, vocab = 16, 40
    gamma = np.ones(d, np.float32)
    gamma[:2] = 30.0  # two outlying channels, as in Whisper's final hidden state
    weight = rng.standard_normal((d, vocab)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
         helper.make_node("MatMul", ["h", "embed.T"], ["logits"])], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, vocab]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, d])],
        initializer=[numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
                     numpy_helper.from_array(weight, "embed.T")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((8, d)).astype(np.float32)

    def run(proto):
        import onnxruntime

        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["logits", "h"], {"x": x})

    logits, hidden = run(model)
    largest = np.abs(hidden).max(0)
    onnx_export.smooth_logits(model, np.sqrt(largest / np.abs(weight).max(1)))
    smoothed_logits, smoothed_hidden = run(model)
    np.testing.assert_allclose(smoothed_logits, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    spread = lambda h: np.abs(h).max(0).max() / np.median(np.abs(h).max(0))
    assert spread(hidden) > 10 and spread(smoothed_hidden) < spread(hidden) / 3


def test_low_rank_slots_stay_two_matmuls(exported):
    folder, _ = exported
    encoder = onnx.load(str(folder / "onnx" / "encoder_model.onnx"))
    shapes = [tuple(tensor.dims) for tensor in encoder.graph.initializer]
    d, ffn, layers = 384, 1536, 4
    for first, second in [((d, ATTENTION_RANK), (ATTENTION_RANK, d)), ((d, MLP_RANK), (MLP_RANK, ffn)),
                          ((ffn, MLP_RANK), (MLP_RANK, d))]:
        assert shapes.count(first) + shapes.count(first[::-1]) >= layers, first
        assert shapes.count(second) + shapes.count(second[::-1]) >= layers, second
    assert (d, d) not in shapes and (d, ffn) not in shapes and (ffn, d) not in shapes  # no dense slot left


def test_q8_quantizes_the_balanced_factors_and_keeps_fc2_float(exported):
    """In the q8 encoder both factors of the attention projections and fc1 are int8 (the second factors after
    their rank channels are balanced), and fc2's first factor, which reads GELU's output, stays float32."""
    folder, _ = exported
    encoder = onnx.load(str(folder / "onnx" / "encoder_model_quantized.onnx"))
    kinds = {onnx.TensorProto.FLOAT: [], onnx.TensorProto.INT8: []}
    for tensor in encoder.graph.initializer:
        kinds.get(tensor.data_type, []).append(tuple(tensor.dims))
    d, ffn, layers = 384, 1536, 4
    for shape in [(d, ATTENTION_RANK), (ATTENTION_RANK, d), (d, MLP_RANK), (MLP_RANK, ffn), (MLP_RANK, d)]:
        assert kinds[onnx.TensorProto.INT8].count(shape) >= layers, shape
    assert kinds[onnx.TensorProto.FLOAT].count((ffn, MLP_RANK)) == layers
    assert (ffn, MLP_RANK) not in kinds[onnx.TensorProto.INT8]


def test_balancing_the_factors_keeps_the_function_and_evens_the_rank_channels(tiny_en_dir, clips, tmp_path):
    """`balance_low_rank_factors` rescales each slot's rank channels: the encoder computes the same output, and
    x @ weight1 has equal RMS in every channel on the clip it was balanced on (before: principal components whose
    scales span orders of magnitude, which one int8 scale cannot carry)."""
    folder = build_lite_repo(tiny_en_dir, tmp_path / "lite", attention_rank=ATTENTION_RANK, mlp_rank=MLP_RANK)
    model, processor = onnx_export._load_for_export(folder)  # as export_onnx loads it: factors, no merged layout
    features = processor.feature_extractor(clips[0].audio, sampling_rate=16000, return_tensors="pt").input_features
    encoder = model.get_encoder()
    slot = encoder.layers[1].fc1
    channel_rms = []

    def record(module, args):
        channel_rms.append((args[0] @ module.weight1).pow(2).mean((0, 1)).sqrt())

    hook = slot.register_forward_pre_hook(record)
    with torch.inference_mode():
        before = encoder(features).last_hidden_state
        assert onnx_export.balance_low_rank_factors(model, features) == 4 * 6
        after = encoder(features).last_hidden_state
    hook.remove()
    spread_before = (channel_rms[0].max() / channel_rms[0].min()).item()
    spread_after = (channel_rms[-1].max() / channel_rms[-1].min()).item()
    assert spread_before > 10 and spread_after < 1.01
    assert torch.allclose(after, before, atol=1e-3 * before.abs().max().item())


def test_the_q8_encoder_is_judged_by_its_rms_error_and_float_files_by_their_largest_element():
    """int8 noise with one outlying element (what the q8 encoder of the real tiny.en fast preset gives: RMS 0.03, one
    element 0.77 of the largest value, greedy WER +0.63) passes the q8 check; the same outlier fails an fp32 or fp16
    file, and noise of 30 % everywhere (a wrong graph) fails q8 too."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 1500, 384))
    noisy = reference + 0.03 * rng.standard_normal(reference.shape)
    noisy[0, 7, 11] += 0.8 * np.abs(reference).max()

    def passes(value, dtype):
        measure, tolerance = onnx_export.CHECKS[dtype]["encoder"]
        return onnx_export.relative_error(reference, value, measure) <= tolerance

    assert passes(noisy, "q8")
    assert not passes(noisy, "fp32") and not passes(noisy, "fp16")
    assert not passes(reference + 0.3 * rng.standard_normal(reference.shape), "q8")


def test_onnx_runtime_decodes_token_for_token_like_generate(exported, clips):
    folder, _ = exported
    model, processor = load_model(folder, device="cpu")
    onnx_model, _ = load_onnx_model(folder)
    features = processor.feature_extractor([clip.audio for clip in clips], sampling_rate=16000,
                                           return_tensors="pt").input_features
    kwargs = generation_kwargs(model, "en")
    with torch.inference_mode():
        reference = model.generate(features, **kwargs)
    tokens = onnx_model.generate(features, **kwargs)
    end = model.generation_config.eos_token_id
    for expected, got in zip(reference.tolist(), tokens.tolist()):
        assert len(_generated(expected, end)) > 5
        assert _generated(got, end) == _generated(expected, end)


def test_eval_with_runtime_onnx_reports_the_same_wer(exported, tmp_path, capsys):
    folder, _ = exported
    data = str(speech_set("librispeech-test-clean-mini"))
    for runtime, dtype in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "q8")):
        assert main(["eval", str(folder), "--data", data, "--runtime", runtime, "--onnx-dtype", dtype,
                     "--no-progress", "--json", str(tmp_path / f"{runtime}-{dtype}.json")]) == 0
    torch_result, fp32, q8 = (json.loads((tmp_path / name).read_text())
                              for name in ("torch-fp32.json", "onnx-fp32.json", "onnx-q8.json"))
    assert fp32["runtime"] == {"name": "onnxruntime", "onnx_dtype": "fp32"} and "runtime" not in torch_result
    assert fp32["mean_wer"] == pytest.approx(torch_result["mean_wer"])
    assert fp32["encoder_params"] == torch_result["encoder_params"]
    assert fp32["decoder_params"] == torch_result["decoder_params"]
    assert q8["mean_wer"] <= torch_result["mean_wer"] + 10.0  # 4 clips, ~80 words: one word is 1.2 points


def test_transcribe_command_with_runtime_onnx(exported, clips, capsys):
    folder, _ = exported
    clip = speech_set("librispeech-test-clean-mini") / clips[1].name
    assert main(["transcribe", str(folder), str(clip), "--runtime", "onnx"]) == 0
    name, text = capsys.readouterr().out.strip().split("\t")
    assert Path(name).name == clip.name and word_error_rate([clips[1].text], [text]) < 30


def test_onnx_runtime_names_what_it_cannot_do(exported, tmp_path):
    folder, _ = exported
    with pytest.raises(OnnxRuntimeError, match="export-onnx"):
        load_onnx_model(folder, dtype="fp16")  # not exported in the fixture
    model, processor = load_onnx_model(folder)
    features = torch.zeros(1, 80, 3000)
    with pytest.raises(OnnxRuntimeError, match="num_beams"):
        model.generate(features, num_beams=4)
    with pytest.raises(OnnxRuntimeError, match="long-form"):
        model.generate(torch.zeros(1, 80, 6000))
    # a 30 s window with the mask `evaluation` passes for a batch decodes as without it
    mask = torch.ones(1, 3000, dtype=torch.long)
    assert torch.equal(model.generate(features, attention_mask=mask), model.generate(features))
    assert main(["transcribe", str(tmp_path), "x.wav", "--runtime", "onnx"]) == 2


# ----------------------------------------------------------------------------------------------- transformers.js


def _node_transcripts(folder, clips, tmp_path, dtype):
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the transformers.js client cannot run (install Node.js 18+)")
    if not (JS_CLIENT / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.fail(f"transformers.js is not installed: run `npm ci --ignore-scripts` in {JS_CLIENT}")
    files = []
    for clip in clips:
        path = tmp_path / Path(clip.name).with_suffix(".wav").name
        soundfile.write(path, clip.audio, 16000, subtype="FLOAT")
        files.append(str(path))
    completed = subprocess.run(["node", "transcribe.mjs", str(folder), "--dtype", dtype, *files], cwd=JS_CLIENT,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return [result["text"] for result in json.loads(completed.stdout.strip().splitlines()[-1])["results"]]


@pytest.mark.parametrize("dtype", ["fp32", "q8"])
def test_transformers_js_transcribes_like_pytorch(exported, clips, tmp_path, dtype):
    folder, _ = exported
    model, processor = load_model(folder, device="cpu")
    features = processor.feature_extractor([clip.audio for clip in clips], sampling_rate=16000,
                                           return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = model.generate(features, **generation_kwargs(model, "en"))
    expected = [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    texts = _node_transcripts(folder, clips, tmp_path, dtype)
    references = [clip.text for clip in clips]
    if dtype == "fp32":
        assert texts == expected  # same greedy tokens, same text
    else:
        assert word_error_rate(references, texts) <= word_error_rate(references, expected) + 10.0


def _readme_js_snippet() -> str:
    """The README's transformers.js example, as printed (the ```js block that builds a pipeline)."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```js\n")[1:]]
    snippets = [block for block in blocks if "pipeline(" in block]
    assert len(snippets) == 1, "README.md should hold one ```js block with the transformers.js pipeline"
    return snippets[0]


def test_readme_transformers_js_snippet_runs_as_printed(exported, clips, tmp_path):
    """The README's snippet, unchanged, transcribes a real clip with an exported repo: a preamble only points
    transformers.js at a local folder named like the snippet's repo id and defines `audio`."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the transformers.js client cannot run (install Node.js 18+)")
    if not (JS_CLIENT / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.fail(f"transformers.js is not installed: run `npm ci --ignore-scripts` in {JS_CLIENT}")
    folder, _ = exported
    snippet = _readme_js_snippet()
    repo_id = snippet.split('"automatic-speech-recognition", "', 1)[1].split('"', 1)[0]  # e.g. ORG/NAME
    models = tmp_path / "models"
    (models / repo_id).parent.mkdir(parents=True)
    (models / repo_id).symlink_to(folder, target_is_directory=True)
    (tmp_path / "node_modules").symlink_to(JS_CLIENT / "node_modules", target_is_directory=True)
    clip = clips[0]
    samples = tmp_path / "clip.f32"
    np.asarray(clip.audio, dtype="<f4").tofile(samples)
    preamble = (
        'import { env } from "@huggingface/transformers";\n'
        'import { readFileSync } from "node:fs";\n'
        "env.allowRemoteModels = false;\n"
        f"env.localModelPath = {json.dumps(str(models) + '/')};\n"
        f"const audio = new Float32Array(new Uint8Array(readFileSync({json.dumps(str(samples))})).buffer);\n"
    )
    script = tmp_path / "snippet.mjs"
    script.write_text(preamble + snippet + "console.log(JSON.stringify({ text }));\n")
    completed = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    text = json.loads(completed.stdout.strip().splitlines()[-1])["text"].strip()
    model, processor = load_model(folder, device="cpu")
    features = processor.feature_extractor([clip.audio], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = model.generate(features, **generation_kwargs(model, "en"))
    expected = processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()
    # the snippet asks for the q8 files: the same rule as the q8 client test above, on this clip
    assert word_error_rate([clip.text], [text]) <= word_error_rate([clip.text], [expected]) + 10.0


# ----------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny_base(tmp_path):
    folder = tmp_path / "tiny-whisper"
    write_tiny_base(folder)
    return folder


@pytest.fixture
def speech_clip(clips):
    return speech_set("librispeech-test-clean-mini") / clips[0].name


def test_a_wrong_graph_is_a_named_error_and_nothing_is_written(tiny_base, speech_clip, monkeypatch):
    real_export = onnx_export.export_encoder

    def export_a_different_encoder(model, features):  # as if the exporter mistranslated one weight
        with torch.no_grad():
            model.get_encoder().layer_norm.weight.mul_(2.0)
            try:
                return real_export(model, features)
            finally:
                model.get_encoder().layer_norm.weight.div_(2.0)

    monkeypatch.setattr(onnx_export, "export_encoder", export_a_different_encoder)
    with pytest.raises(OnnxMismatchError, match="encoder_model.onnx"):
        export_onnx(tiny_base, dtypes=("fp32",), check_audio=speech_clip, log=lambda *_: None)
    assert not (tiny_base / "onnx").exists()
    assert not [path for path in tiny_base.iterdir() if path.name.startswith(".onnx")]


def test_export_command_rejects_bad_input(tiny_base, tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path / "missing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["export-onnx", str(tiny_base), "--check-audio", str(tmp_path / "none.flac")]) == 2
    assert "--check-audio" in capsys.readouterr().err
    with pytest.raises(OnnxExportError, match="unknown dtype"):
        export_onnx(tiny_base, dtypes=("int3",))


def test_stock_whisper_exports_and_decodes(tiny_base, speech_clip, tmp_path):
    out = tmp_path / "repo"
    report = export_onnx(tiny_base, out_dir=out, dtypes=("fp32", "fp16"), check_audio=speech_clip,
                         log=lambda *_: None)
    assert set(report.files) == {"onnx/encoder_model.onnx", "onnx/decoder_model_merged.onnx",
                                 "onnx/encoder_model_fp16.onnx", "onnx/decoder_model_merged_fp16.onnx"}
    assert (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file()
    assert report.errors["fp16"]["decoder"] < onnx_export.CHECKS["fp16"]["decoder"][1]
    model, processor = load_onnx_model(out, dtype="fp16")
    features = processor.feature_extractor(np.zeros(8000, dtype=np.float32), sampling_rate=16000,
                                           return_tensors="pt").input_features
    assert model.generate(features).shape[0] == 1


# ----------------------------------------------------------------------------------------------- card and push


def test_card_lists_the_onnx_runtimes_and_tags(exported, tiny_en_dir, tmp_path):
    from huggingface_hub import ModelCard

    from lite_whisper_convert.cards import render_card
    from lite_whisper_convert.evaluation import evaluate, write_results

    folder, _ = exported
    data = str(speech_set("librispeech-test-clean-mini"))
    results = [write_results(evaluate(str(path), [data], limit=1, progress=False), tmp_path / f"{index}.json")
               for index, path in enumerate((tiny_en_dir, folder))]
    render_card(folder, results, base_model="openai/whisper-tiny.en", repo_id="someone/lite-tiny.en-onnx",
                write=True)
    card = ModelCard.load(folder / "README.md")
    assert {"onnx", "transformers.js"} <= set(card.data.tags)
    assert 'pipeline("automatic-speech-recognition", "someone/lite-tiny.en-onnx", { dtype: "q8" })' in card.text
    assert "variants: fp32, q8" in card.text and "--runtime onnx --onnx-dtype q8" in card.text


def test_push_uploads_onnx_files_and_wants_them_in_pairs(exported, tmp_path):
    from lite_whisper_convert.hub import missing_files, upload_files

    folder, _ = exported
    assert {"onnx/encoder_model.onnx", "onnx/decoder_model_merged_quantized.onnx"} <= set(upload_files(folder))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "onnx" / "decoder_model_merged_quantized.onnx").unlink()
    assert any("onnx/decoder_model_merged_quantized.onnx" in problem for problem in missing_files(copy))
