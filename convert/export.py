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
SMOKE_TEST_MAX_NEW_TOKENS = 96
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
    clip: str
    lite_text: str
    stock_text: str


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
folder, base, clip, max_new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
audio = np.load(clip)
texts = {}
for key, path, remote in (("lite", folder, True), ("stock", base, False)):
    model = AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=remote).float().eval()
    if key == "lite":
        assert type(model).__name__ == "LiteWhisperForConditionalGeneration", type(model).__name__
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    kwargs = dict(max_new_tokens=min(max_new_tokens, model.config.max_target_positions // 2), num_beams=1, do_sample=False)
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs["task"] = "transcribe"
    with torch.inference_mode():
        ids = model.generate(features, **kwargs)
    texts[key] = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    del model
print("SMOKE " + json.dumps(texts))
"""


def smoke_test(folder, base_model: str, audio: np.ndarray, clip_name: str = "clip",
               timeout: float = SMOKE_TEST_TIMEOUT_S) -> SmokeResult:
    """Reload `folder` with trust_remote_code in a fresh process (an isolated interpreter started elsewhere, so
    the model code comes from the folder) and transcribe `audio` with it and with the stock `base_model`."""
    folder = Path(folder).resolve()
    base = str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
    with tempfile.TemporaryDirectory(prefix="lite-whisper-smoke-") as scratch:
        clip = Path(scratch) / "clip.npy"
        np.save(clip, np.asarray(audio, dtype=np.float32))
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        command = [sys.executable, "-I", "-c", _SMOKE_SCRIPT, str(folder), base, str(clip), str(SMOKE_TEST_MAX_NEW_TOKENS)]
        try:
            # No stdin: under a launcher stdin may be a terminal, and a prompt must never wait for an answer.
            result = subprocess.run(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SmokeTestError(f"smoke test: reloading and transcribing took over {timeout:.0f} s") from None
    _, marker, answer = result.stdout.rpartition("SMOKE ")  # libraries may print before it on the same line
    if result.returncode != 0 or not marker:
        raise SmokeTestError(f"smoke test: the exported folder did not reload and transcribe (exit status "
                             f"{result.returncode}):\n{result.stderr[-3000:]}\nstdout: {result.stdout[-1000:]}")
    texts = json.loads(answer.splitlines()[0])
    if texts["stock"] and not texts["lite"]:
        raise SmokeTestError(f"smoke test: the LiteWhisper model transcribed {clip_name} as empty text "
                             f"(stock: {texts['stock']!r})")
    return SmokeResult(clip=clip_name, lite_text=texts["lite"], stock_text=texts["stock"])


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
    `smoke_clip`: an audio.Utterance to smoke-test the folder with before it is moved into place (None: skip).
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
            with stages.stage("smoke test"):
                smoke = smoke_test(staging, base_model, smoke_clip.audio, smoke_clip.name)
        summary["stages"] = stages.as_list()
        _write_recipe(staging, summary, lite_model.config.encoder_layers)
        _move_into_place(staging, out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, smoke
