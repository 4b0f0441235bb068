"""Run an exported (Lite)Whisper folder with ONNX Runtime: greedy decoding over `onnx/` (see `onnx_export`).

    model, processor = load_onnx_model("lite-whisper-tiny.en-fast", dtype="q8")
    texts = transcribe(model, processor, utterances)          # lite_whisper_convert.evaluation, unchanged

No maintained runner works with the transformers we run (optimum-onnx's ORTModelForSpeechSeq2Seq requires
transformers < 4.58), so `OnnxWhisper` is a minimal greedy decoder with the interface `evaluation` uses:
`generate(input_features, **kwargs)` returns token ids as `WhisperForConditionalGeneration.generate` does for
greedy decoding without timestamps (the same prompt, `suppress_tokens` and `begin_suppress_tokens`, language
detection for multilingual models without a language), so WER, RTFx and the results JSON of `lite-whisper eval`
mean the same for both runtimes. Audio over 30 s (long-form decoding), beam search, sampling and timestamps are
not supported and raise `OnnxRuntimeError`.
"""

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .onnx_export import DECODER, ENCODER, ONNX_FOLDER, SUFFIXES, empty_past, file_name, next_past, session


class OnnxRuntimeError(ValueError):
    """The exported folder cannot run as asked (files missing, an unsupported decoding option)."""


class OnnxWhisper:
    """ONNX Runtime sessions over one exported folder, with the attributes `evaluation` reads from a model."""

    device = torch.device("cpu")
    dtype = torch.float32  # of the features fed to the encoder, whatever the weights' variant

    def __init__(self, folder, dtype: str = "fp32", threads: Optional[int] = None):
        from transformers import AutoConfig, GenerationConfig

        folder = Path(folder)
        if dtype not in SUFFIXES:
            raise OnnxRuntimeError(f"unknown ONNX dtype {dtype!r}; choose from {', '.join(SUFFIXES)}")
        paths = [folder / ONNX_FOLDER / file_name(part, dtype) for part in (ENCODER, DECODER)]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise OnnxRuntimeError(f"{', '.join(missing)} not found: run `lite-whisper export-onnx {folder}` first"
                                   + (f" (with --dtype {dtype})" if dtype != "fp32" else ""))
        self.folder, self.onnx_dtype = folder, dtype
        self.config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
        self.generation_config = GenerationConfig.from_pretrained(str(folder))
        self.encoder, self.decoder = (session(path, threads) for path in paths)
        self.outputs = [value.name for value in self.decoder.get_outputs()]

    def get_decoder(self) -> torch.nn.Module:
        """The decoder's PyTorch architecture on the meta device (no memory): for parameter counts."""
        from transformers.models.whisper.modeling_whisper import WhisperDecoder

        with torch.device("meta"):
            return WhisperDecoder(self.config)

    # ------------------------------------------------------------------------------------------- decoding

    def _step(self, tokens: np.ndarray, states: np.ndarray, past: Optional[dict]) -> tuple:
        """Logits of the last position [B, vocab] and the new past, for `tokens` [B, S] after `past` (None: none)."""
        feeds = {"input_ids": tokens.astype(np.int64), "encoder_hidden_states": states,
                 "use_cache_branch": np.array([past is not None])}
        feeds.update(past if past is not None else empty_past(self.decoder, tokens.shape[0]))
        outputs = dict(zip(self.outputs, self.decoder.run(self.outputs, feeds)))
        return outputs["logits"][:, -1, :], next_past(outputs, past)

    def _language_tokens(self, states: np.ndarray, language: Optional[str]) -> np.ndarray:
        """<|xx|> per utterance: the given language, or the most likely one after <|startoftranscript|>."""
        lang_to_id = self.generation_config.lang_to_id
        batch = states.shape[0]
        if language:
            code = language if language.startswith("<|") else f"<|{language}|>"
            if code not in lang_to_id:
                raise OnnxRuntimeError(f"language {language!r} is not one of the model's ({len(lang_to_id)} codes)")
            return np.full(batch, lang_to_id[code])
        start = np.full((batch, 1), self.config.decoder_start_token_id)
        logits, _ = self._step(start, states, None)
        ids = np.array(sorted(lang_to_id.values()))
        return ids[logits[:, ids].argmax(-1)]

    def generate(self, input_features: torch.Tensor, language: Optional[str] = None, task: Optional[str] = None,
                 num_beams: int = 1, do_sample: bool = False, attention_mask=None, **unsupported) -> torch.Tensor:
        """Greedy token ids [B, L] after the prompt (finished rows padded with end-of-text), as `generate` gives."""
        # `attention_mask` marks the real audio inside the padded 30 s window; Whisper's encoder reads the whole
        # window, so one window needs no mask. Long-form input is wider than one window.
        long_form = input_features.shape[-1] > self.config.max_source_positions * 2
        unsupported = {key: value for key, value in unsupported.items() if value not in (None, False)}
        if num_beams != 1 or do_sample or long_form or unsupported:
            asked = dict(unsupported, **({"num_beams": num_beams} if num_beams != 1 else {}),
                         **({"do_sample": True} if do_sample else {}),
                         **({"long-form audio (over 30 s)": True} if long_form else {}))
            raise OnnxRuntimeError(f"the ONNX runtime decodes greedily without timestamps, one 30 s window; not "
                                   f"supported: {', '.join(asked)}")
        generation = self.generation_config
        states = self.encoder.run(["last_hidden_state"], {"input_features": input_features.float().numpy()})[0]
        batch = states.shape[0]
        columns = [np.full(batch, self.config.decoder_start_token_id)]
        if getattr(generation, "is_multilingual", False):
            columns.append(self._language_tokens(states, language))
            columns.append(np.full(batch, generation.task_to_id[task or "transcribe"]))
        if getattr(generation, "no_timestamps_token_id", None) is not None:
            columns.append(np.full(batch, generation.no_timestamps_token_id))
        tokens = np.stack(columns, axis=1)
        suppress = list(generation.suppress_tokens or [])
        begin_suppress = list(generation.begin_suppress_tokens or [])
        end = generation.eos_token_id
        max_length = generation.max_length or self.config.max_target_positions
        finished = np.zeros(batch, dtype=bool)
        past, step_tokens = None, tokens
        while tokens.shape[1] < max_length and not finished.all():
            logits, past = self._step(step_tokens, states, past)
            logits[:, suppress] = -np.inf
            if tokens.shape[1] == len(columns):  # the first generated token
                logits[:, begin_suppress] = -np.inf
            next_tokens = np.where(finished, end, logits.argmax(-1))
            finished |= next_tokens == end
            step_tokens = next_tokens[:, None]
            tokens = np.concatenate([tokens, step_tokens], axis=1)
        return torch.from_numpy(tokens[:, len(columns):])  # transformers >= 5 returns the generated part only


def load_onnx_model(folder, dtype: str = "fp32", threads: Optional[int] = None):
    """(OnnxWhisper, processor) for an exported folder or Hub repo: what `evaluation.load_model` returns for PyTorch."""
    from transformers import AutoProcessor

    import configuration_lite_whisper  # noqa: F401  registers "lite-whisper": AutoProcessor then never prompts

    if not Path(folder).exists() and str(folder).count("/") == 1:  # a Hub repo id: fetch what this dtype needs
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(folder), allow_patterns=["*.json", "*.txt", "*.py"] + [
            f"{ONNX_FOLDER}/{file_name(part, dtype)}" for part in (ENCODER, DECODER)])
    model = OnnxWhisper(folder, dtype, threads)
    return model, AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
