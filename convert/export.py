"""Export: write a LiteWhisper model as a complete, self-contained repo folder, then smoke-test it.

The folder holds everything `from_pretrained(..., trust_remote_code=True)` and the ASR pipeline need:

    config.json, model.safetensors (fp16)       LiteWhisperForConditionalGeneration.save_pretrained
    configuration_lite_whisper.py,              the model code, copied by save_pretrained
    modeling_lite_whisper.py
    generation_config.json                      the base model's, copied whole (forced ids, timestamps, ...)
    preprocessor_config.json, tokenizer files   the base model's, copied whole
    README.md, compression_recipe.json          how it was made (`Recipe`)

Everything is written into a hidden staging folder beside `out_dir`, smoke-tested there (a fresh Python process
reloads it with trust_remote_code and transcribes one clip next to the stock model), and renamed to `out_dir`
only when all of that succeeded: a failed export leaves no output folder.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from configuration_lite_whisper import LOW_RANK_SLOTS
from modeling_lite_whisper import apply_umask

from . import __version__
from .measures import encoder_flops, encoder_parameters
from .stages import StageCosts, format_stage_table

# Files copied verbatim from the base model when it has them: preprocessing, tokenizer, generation settings.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
)
# The feature extractor's settings live in preprocessor_config.json, or inside processor_config.json (transformers 5).
FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
SMOKE_TEST_MAX_LENGTH = 96
SMOKE_TEST_TIMEOUT_S = 1800


class ExportError(ValueError):
    """The repo cannot be written: the output exists, the base model lacks files, or the smoke test failed."""


class OutputExistsError(ExportError):
    """The output folder exists and overwriting was not asked for."""


class SmokeTestError(ExportError):
    """The exported folder did not reload and transcribe in a fresh process."""


@dataclass
class Recipe:
    """How a LiteWhisper model was made; written to README.md and compression_recipe.json."""

    base_model: str
    calibration: str
    num_utterances: int
    frames: str
    rank_policy: dict  # e.g. {"preset": "balanced", "thresholds": {"attention": .., "mlp": ..}}
    seed: int = 0
    calibration_dtype: str = "float32"
    project_version: str = __version__
    extra: dict = field(default_factory=dict)


@dataclass
class SmokeResult:
    clip: str  # the clip names, comma-separated
    lite_text: str  # one transcript per clip, " | "-separated
    stock_text: str
    held_out: bool = True  # False where the source had no clip left after the calibration clips


# ------------------------------------------------------------------------------------------------ README


def rank_table(low_rank_config: List[dict], num_layers: int) -> str:
    """Markdown table of ranks per encoder layer and slot ('—' where the layer stays dense)."""
    lines = ["| layer | " + " | ".join(LOW_RANK_SLOTS) + " |", "|---" * (len(LOW_RANK_SLOTS) + 1) + "|"]
    for layer_index in range(num_layers):
        ranks = low_rank_config[layer_index] if low_rank_config else {}
        cells = [str(ranks[slot]) if slot in ranks else "—" for slot in LOW_RANK_SLOTS]
        lines.append(f"| {layer_index} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipe_summary(config, base_config, recipe: Recipe) -> dict:
    """The recipe plus the sizes it produced: what compression_recipe.json holds."""
    low_rank_config = config.low_rank_config or []
    factored = sum(len(ranks) for ranks in low_rank_config)
    return {
        **asdict(recipe),
        "encoder_params": encoder_parameters(config),
        "stock_encoder_params": encoder_parameters(base_config),
        "encoder_gflops": encoder_flops(config) / 1e9,
        "stock_encoder_gflops": encoder_flops(base_config) / 1e9,
        "factored_linears": factored,
        "dense_linears": 6 * config.encoder_layers - factored,
        "low_rank_config": low_rank_config,
    }


def recovery_line(recovery: Optional[dict]) -> str:
    """One README line saying whether and how the compressed encoder was recovered (recovery.recovery_recipe)."""
    if not recovery or recovery.get("method", "none") == "none":
        return "none (LiteASR recipe only)"
    errors = recovery.get("holdout_relative_error", {})
    before, after = errors.get("before"), errors.get("after")
    measured = (f"; held-out relative error of the final encoder states {before:.4f} -> {after:.4f}"
                if before is not None and after is not None else "")
    return (f"{recovery['method']} towards the stock encoder on {recovery.get('train_clips')} unlabelled calibration "
            f"clips ({recovery.get('holdout_clips')} held out), no transcripts{measured}")


def readme_text(summary: dict, num_layers: int) -> str:
    """A short README recording how the model was made."""
    policy = summary["rank_policy"]
    policy_text = ", ".join(f"{key}: {json.dumps(value)}" for key, value in policy.items())
    name = summary["base_model"]
    return textwrap.dedent(
        f"""\
        ---
        base_model: {name}
        library_name: transformers
        pipeline_tag: automatic-speech-recognition
        tags:
        - lite-whisper
        - whisper
        ---

        # LiteWhisper from {name}

        The encoder's linear layers of `{name}` factored into low rank with the LiteASR recipe
        (arXiv 2502.20583): calibration audio runs through the stock model, each encoder linear's outputs are
        decomposed by PCA, and a linear that keeps rank k becomes y = (x·W1)·W2 + b'. The decoder is unchanged.
        Load with `trust_remote_code=True`.

        ## Recipe

        - base model: `{name}`
        - calibration: {summary['num_utterances']} clips of `{summary['calibration']}`, frames: `{summary['frames']}`
        - rank policy: {policy_text}
        - recovery: {recovery_line(summary.get('extra', {}).get('recovery'))}
        - calibration dtype: {summary['calibration_dtype']}, seed: {summary['seed']}
        - made with lite-whisper {summary['project_version']}

        ## Size

        | | stock | LiteWhisper |
        |---|---|---|
        | encoder parameters (no position table) | {summary['stock_encoder_params'] / 1e6:.2f}M | {summary['encoder_params'] / 1e6:.2f}M |
        | encoder GFLOPs per 30 s window | {summary['stock_encoder_gflops']:.1f} | {summary['encoder_gflops']:.1f} |

        {summary['factored_linears']} of {6 * num_layers} encoder linears are low rank; ranks per layer:

        """
    ) + rank_table(summary["low_rank_config"], num_layers) + "\n" + cost_text(summary)


def cost_text(summary: dict) -> str:
    """The README's record of what the conversion cost, stage by stage (empty when not recorded)."""
    stages = summary.get("stages")
    if not stages:
        return ""
    made_earlier = summary.get("extra", {}).get("stats_file_costs")
    note = (" Calibration came from a statistics file made earlier; its stages then took: "
            + ", ".join(f"{stage} {record['seconds']:.0f} s" for stage, record in made_earlier.items()) + "."
            if made_earlier else "")
    return ("\n## Conversion cost\n\nWall time and peak memory of each stage of this conversion." + note
            + "\n\n```\n" + format_stage_table(stages) + "\n```\n")


# ------------------------------------------------------------------------------------------------ files


def copy_base_files(base_model: str, folder: Path) -> List[str]:
    """Copy the base model's processor, tokenizer and generation config into `folder` (local folder or Hub id)."""
    from transformers.utils import cached_file

    copied = []
    for name in PROCESSOR_FILES + ("generation_config.json",):
        try:
            source = cached_file(str(base_model), name, _raise_exceptions_for_missing_entries=False)
        except OSError as error:
            raise ExportError(f"cannot read {name} from the base model {base_model}: {error}") from None
        if source is not None:
            shutil.copyfile(source, folder / name)
            copied.append(name)
    missing = [
        what
        for what, names in (("a feature extractor config", FEATURE_EXTRACTOR_FILES), ("a tokenizer", TOKENIZER_FILES),
                            ("generation_config.json", ("generation_config.json",)))
        if not set(names) & set(copied)
    ]
    if missing:
        raise ExportError(
            f"the base model {base_model} lacks {' and '.join(missing)}: a LiteWhisper repo needs the base model's "
            "feature extractor, tokenizer and generation config"
        )
    return copied


def _staging_folder(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the complete staging folder to `out_dir`; an old `out_dir` is removed only after that."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    if not overwrite:
        raise OutputExistsError(f"{out_dir} exists; choose another --out or pass --overwrite")
    retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def check_output(out_dir, overwrite: bool = False) -> Path:
    """Fail early (before any expensive stage) when `out_dir` exists and may not be replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; choose another --out or pass --overwrite")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    return out_dir


# ------------------------------------------------------------------------------------------------ smoke test

_SMOKE_SCRIPT = """
import json, sys
import numpy as np, torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
folder, base, clips, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
audios = list(np.load(clips).values())
texts = {}
for key, path, remote in (("lite", folder, True), ("stock", base, False)):
    model = AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=remote).float().eval()
    if key == "lite":
        assert type(model).__name__ == "LiteWhisperForConditionalGeneration", type(model).__name__
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
    # max_length, not max_new_tokens: every Whisper generation config carries a max_length, and both warn
    kwargs = dict(max_length=min(max_length, model.config.max_target_positions // 2), num_beams=1, do_sample=False)
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs["task"] = "transcribe"
    inputs = processor(audios, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    with torch.inference_mode():  # all clips in one batch: each is one 30 s window
        ids = model.generate(inputs.input_features, attention_mask=inputs.attention_mask, **kwargs)
    texts[key] = [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
    del model
print("SMOKE " + json.dumps(texts))
"""
# The smoke test fails when the lite model's transcripts of the held-out clips differ from the stock model's by more
# than this word error rate (stock as reference), or loop where the stock model's do not.
SMOKE_MAX_WER = 0.5
LOOP_COMPRESSION_RATIO = 2.4  # Whisper's threshold for repetitive text (zlib compression ratio of the transcript)


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)): high for text that repeats itself (a decoding loop)."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def transcript_distance(references: List[str], hypotheses: List[str]) -> float:
    """Word error rate of `hypotheses` against `references` (lower-cased words, punctuation ignored)."""
    import re

    import jiwer

    def words(text):
        return " ".join(re.findall(r"[\w']+", text.lower()))

    pairs = [(words(r), words(h)) for r, h in zip(references, hypotheses) if words(r)]
    if not pairs:
        return 0.0
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


def check_smoke_transcripts(stock: List[str], lite: List[str], clip_names: List[str]) -> None:
    """Raise SmokeTestError when the lite model collapsed: empty or looping where stock is not, or far from stock."""
    for name, stock_text, lite_text in zip(clip_names, stock, lite):
        if stock_text and not lite_text:
            raise SmokeTestError(f"smoke test: the LiteWhisper model transcribed {name} as empty text "
                                 f"(stock: {stock_text!r}); the compression is too aggressive or calibration failed")
        if compression_ratio(lite_text) > LOOP_COMPRESSION_RATIO >= compression_ratio(stock_text):
            raise SmokeTestError(f"smoke test: the LiteWhisper model loops on {name} ({lite_text[:80]!r}...; stock: "
                                 f"{stock_text!r}); choose a larger size or another recovery")
    distance = transcript_distance(stock, lite)
    if distance > SMOKE_MAX_WER:
        raise SmokeTestError(f"smoke test: the LiteWhisper transcripts of {len(stock)} held-out clips differ from the "
                             f"stock model's by {100 * distance:.0f} % WER (limit {100 * SMOKE_MAX_WER:.0f} %), e.g. "
                             f"{lite[0]!r} vs {stock[0]!r}; the compressed model has collapsed: choose a larger size, "
                             "more calibration audio or recovery")


def smoke_test(folder, base_model: str, audio, clip_name="clip", timeout: float = SMOKE_TEST_TIMEOUT_S) -> SmokeResult:
    """Reload `folder` with trust_remote_code in a fresh process (an isolated interpreter started elsewhere, so
    the model code comes from the folder) and transcribe `audio` (one array, or a list of them named by the list
    `clip_name`) with it and with the stock `base_model`; SmokeTestError when the lite model collapsed."""
    audios = audio if isinstance(audio, (list, tuple)) else [audio]
    names = list(clip_name) if isinstance(clip_name, (list, tuple)) else [clip_name]
    folder = Path(folder).resolve()
    base = str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
    with tempfile.TemporaryDirectory(prefix="lite-whisper-smoke-") as scratch:
        clips = Path(scratch) / "clips.npz"
        np.savez(clips, *[np.asarray(one, dtype=np.float32) for one in audios])
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        command = [sys.executable, "-I", "-c", _SMOKE_SCRIPT, str(folder), base, str(clips), str(SMOKE_TEST_MAX_LENGTH)]
        # No stdin: under a launcher stdin may be a terminal, and a prompt must never wait for an answer. `run`
        # kills the child on any exception here, the KeyboardInterrupt a signal raises included.
        try:
            result = subprocess.run(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SmokeTestError(f"smoke test: reloading and transcribing took over {timeout:.0f} s") from None
    _, marker, answer = result.stdout.rpartition("SMOKE ")  # libraries may print before it on the same line
    if result.returncode != 0 or not marker:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SmokeTestError(f"smoke test: the exported folder did not reload and transcribe in a fresh process "
                             f"(exit status {result.returncode}: {last})")
    texts = json.loads(answer.splitlines()[0])
    check_smoke_transcripts(texts["stock"], texts["lite"], names)
    return SmokeResult(clip=", ".join(names), lite_text=" | ".join(texts["lite"]), stock_text=" | ".join(texts["stock"]))


# ------------------------------------------------------------------------------------------------ export


def _write_recipe(folder: Path, summary: dict, num_layers: int) -> None:
    (folder / "compression_recipe.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(readme_text(summary, num_layers))


def export(
    lite_model,
    out_dir,
    base_model: str,
    recipe: Recipe,
    base_config=None,
    dtype: torch.dtype = torch.float16,
    smoke_clip=None,
    overwrite: bool = False,
    stages=None,
) -> tuple:
    """Write `lite_model` (a LiteWhisperForConditionalGeneration) as a complete repo at `out_dir`.

    `base_model`: the stock model's folder or Hub id, source of the processor, tokenizer and generation config.
    `base_config`: its config (for the README's stock sizes; default: the lite config without ranks).
    `smoke_clip`: audio.Utterance(s) to smoke-test the folder with before it is moved into place (None: skip): an
    Utterance, a list of them, or (list, held_out) as compress.held_out_clips returns it.
    `stages` (a stages.StageCosts): times writing and the smoke test, and the recipe records every stage's cost.
    Returns (out_dir, SmokeResult or None).
    """
    out_dir = check_output(out_dir, overwrite)
    if base_config is None:
        from transformers import WhisperConfig

        base_config = WhisperConfig(**{k: v for k, v in lite_model.config.to_dict().items() if k != "low_rank_config"})
    staging = _staging_folder(out_dir)
    stages = stages or StageCosts()
    try:
        with stages.stage("export"):
            lite_model.save_pretrained(staging, dtype=dtype)
            copy_base_files(base_model, staging)
            summary = recipe_summary(lite_model.config, base_config, recipe)
            _write_recipe(staging, summary, lite_model.config.encoder_layers)
        smoke = None
        if smoke_clip is not None:
            clips, held_out = smoke_clip if isinstance(smoke_clip, tuple) else (smoke_clip, True)
            clips = clips if isinstance(clips, list) else [clips]
            with stages.stage("smoke test"):
                smoke = smoke_test(staging, base_model, [clip.audio for clip in clips], [clip.name for clip in clips])
            smoke.held_out = held_out
        summary["stages"] = stages.as_list()
        _write_recipe(staging, summary, lite_model.config.encoder_layers)
        apply_umask(staging)
        _move_into_place(staging, out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, smoke
