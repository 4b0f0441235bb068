"""Every Whisper workflow on a saved LiteWhisper repo built from the real tiny.en / base weights:
the ASR pipeline in Whisper mode (timestamps, chunking, language/task), sequential long-form generate,
and a fresh process that sees only the saved folder."""

import subprocess
import sys
import textwrap

import jiwer
import numpy as np
import pytest
import torch
from conftest import dtype_argument, factorise_exactly, speech_set
from transformers import (
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    pipeline,
)

from lite_whisper_convert.audio import iter_audio_folder


def build_lite_repo(dense_dir, out_dir, attention_rank, mlp_rank):
    """A complete LiteWhisper repo (weights, code, processor) whose factors are SVD cuts of a real model."""
    dense = WhisperForConditionalGeneration.from_pretrained(dense_dir, **dtype_argument(torch.float32)).eval()
    ranks = {"q_proj": attention_rank, "k_proj": attention_rank, "v_proj": attention_rank,
             "out_proj": attention_rank, "fc1": mlp_rank, "fc2": mlp_rank}
    lite = factorise_exactly(dense, [ranks] * dense.config.encoder_layers)
    lite.save_pretrained(out_dir, dtype=torch.float32)
    WhisperProcessor.from_pretrained(dense_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def clips():
    return list(iter_audio_folder(speech_set("librispeech-test-clean-mini")))


@pytest.fixture(scope="module")
def tiny_lite_dir(tiny_en_dir, tmp_path_factory):
    return build_lite_repo(tiny_en_dir, tmp_path_factory.mktemp("lite-tiny.en"), attention_rank=256, mlp_rank=320)


def normalised_wer(references, hypotheses):
    clean = lambda text: " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())
    return jiwer.wer([clean(r) for r in references], [clean(h) for h in hypotheses])


def test_pipeline_runs_in_whisper_mode_and_transcribes(tiny_lite_dir, clips):
    asr = pipeline("automatic-speech-recognition", model=str(tiny_lite_dir), trust_remote_code=True)
    assert asr.type == "seq2seq_whisper"
    outputs = asr([clip.audio for clip in clips], batch_size=2)
    assert normalised_wer([c.text for c in clips], [o["text"] for o in outputs]) < 0.15


def test_pipeline_returns_timestamps_and_chunks_long_audio(tiny_lite_dir, clips):
    asr = pipeline("automatic-speech-recognition", model=str(tiny_lite_dir), trust_remote_code=True)
    long_audio = np.concatenate([clip.audio for clip in clips] * 2)  # about 42 s
    result = asr(long_audio, return_timestamps=True, chunk_length_s=30, batch_size=2)
    starts = [chunk["timestamp"][0] for chunk in result["chunks"]]
    assert len(starts) >= 4 and starts == sorted(starts) and starts[-1] > 30.0
    reference = " ".join(clip.text for clip in clips * 2)
    assert normalised_wer([reference], [result["text"]]) < 0.15


def test_sequential_long_form_generate_with_timestamps(tiny_lite_dir, clips):
    # Like the model, the processor is loaded with trust_remote_code: transformers reads config.json for it too.
    processor = AutoProcessor.from_pretrained(tiny_lite_dir, trust_remote_code=True)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(tiny_lite_dir, trust_remote_code=True, **dtype_argument(torch.float32))
    long_audio = np.concatenate([clip.audio for clip in clips] * 2)
    inputs = processor(long_audio, sampling_rate=16_000, return_tensors="pt", truncation=False,
                       padding="longest", return_attention_mask=True)
    assert inputs.input_features.shape[-1] > 3000  # longer than one 30 s window
    tokens = model.generate(**inputs, return_timestamps=True)
    text = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    assert normalised_wer([" ".join(clip.text for clip in clips * 2)], [text]) < 0.15


def test_multilingual_generate_takes_language_and_task(base_dir, clips, tmp_path):
    lite_dir = build_lite_repo(base_dir, tmp_path / "lite-base", attention_rank=384, mlp_rank=448)
    asr = pipeline("automatic-speech-recognition", model=str(lite_dir), trust_remote_code=True)
    english = asr(clips[0].audio, generate_kwargs={"language": "english", "task": "transcribe"})["text"]
    assert normalised_wer([clips[0].text], [english]) < 0.15
    # Forcing another language changes the decoder prompt, so the output changes (base then writes French).
    french = asr(clips[0].audio, generate_kwargs={"language": "french", "task": "transcribe", "max_new_tokens": 40})
    french = french["text"]
    assert french.strip() and normalised_wer([english], [french]) > 0.5


def test_fresh_process_pipeline_matches_in_process(tiny_lite_dir, clips, tmp_path):
    np.save(tmp_path / "clip.npy", clips[0].audio)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from transformers import pipeline
        asr = pipeline("automatic-speech-recognition", model={str(tiny_lite_dir)!r}, trust_remote_code=True)
        print(asr(np.load({str(tmp_path / "clip.npy")!r}))["text"])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    asr = pipeline("automatic-speech-recognition", model=str(tiny_lite_dir), trust_remote_code=True)
    assert result.stdout.strip() == asr(clips[0].audio)["text"].strip()


def test_pipeline_without_trust_remote_code_fails_loudly(tiny_lite_dir, tmp_path):
    # In a fresh process, as a user meets it (a process that already loaded LiteWhisper with trust_remote_code has
    # its classes registered with the Auto classes, and transformers then uses them, still strictly loaded).
    script = f"from transformers import pipeline\npipeline('automatic-speech-recognition', model={str(tiny_lite_dir)!r})"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "trust_remote_code=True" in result.stderr


def test_transcribe_command_prints_one_line_per_file(tiny_lite_dir, capsys):
    from lite_whisper_convert.cli import main

    folder = speech_set("librispeech-test-clean-mini")
    assert main(["transcribe", str(tiny_lite_dir), str(folder / "1089-134691-0000.flac")]) == 0
    name, text = capsys.readouterr().out.strip().split("\t")
    assert name.endswith("1089-134691-0000.flac") and normalised_wer(["HE COULD WAIT NO LONGER"], [text]) == 0


def test_the_readme_usage_snippet_runs(tiny_lite_dir, monkeypatch, capsys):
    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    snippet = readme.split("## Using a LiteWhisper model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    clip = speech_set("librispeech-test-clean-mini") / "1089-134691-0000.flac"
    snippet = snippet.replace('"efficient-speech/lite-whisper-large-v3-turbo-acc"', repr(str(tiny_lite_dir)))
    exec(compile(snippet.replace('"audio.flac"', repr(str(clip))), "README.md", "exec"), {})
    assert normalised_wer(["HE COULD WAIT NO LONGER"], [capsys.readouterr().out]) == 0


def test_reduced_attention_on_real_weights_transcribes_as_per_head_attention(tiny_en_dir, clips, tmp_path):
    from modeling_lite_whisper import LiteWhisperForConditionalGeneration, set_inference_layout

    # q/k/v/out_proj at rank 48, below tiny's head_dim of 64: every layer runs ReducedAttention once loaded
    repo = build_lite_repo(tiny_en_dir, tmp_path / "lite-rank-48", attention_rank=48, mlp_rank=320)
    model = LiteWhisperForConditionalGeneration.from_pretrained(repo, **dtype_argument(torch.float32))
    half = LiteWhisperForConditionalGeneration.from_pretrained(repo, **dtype_argument(torch.float16))
    assert all(layer.self_attn.reduced_attention is not None for layer in model.model.encoder.layers)
    processor = WhisperProcessor.from_pretrained(tiny_en_dir)
    features = processor([clip.audio for clip in clips[:2]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        reduced = model.model.encoder(features).last_hidden_state
        reduced_half = half.model.encoder(features.half()).last_hidden_state.float()
        reduced_tokens = model.generate(features, max_new_tokens=40)
        set_inference_layout(model, False)
        set_inference_layout(half, False)
        per_head = model.model.encoder(features).last_hidden_state
        per_head_half = half.model.encoder(features.half()).last_hidden_state.float()
        per_head_tokens = model.generate(features, max_new_tokens=40)
    assert torch.equal(reduced_tokens, per_head_tokens)
    torch.testing.assert_close(reduced, per_head, atol=1e-3, rtol=1e-3)
    # in fp16 the reduced form strays from fp32 no more than the per-head form does
    assert (reduced_half - per_head).abs().max() <= 1.5 * (per_head_half - per_head).abs().max()
