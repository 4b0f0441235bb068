"""Up-front checks: every argument, path, model folder and stats file, before any audio is read or model runs.

Each check raises `InputError` (a ValueError, so the CLI prints it as one line) naming the problem and the fix.
The stages re-check what they use; these functions exist so that a mistake costs a second, not a calibration run.

    check_count("--num-samples", -8)                     # InputError: --num-samples -8: must be at least 1
    config = check_base_model("whisper-tiny.en")         # a stock Whisper folder or Hub id, with every file export copies
    check_output_folder("out", overwrite=True, inputs={"MODEL": "whisper-tiny.en"})
    check_stats_request("tiny.stats", calibration="clips/", num_samples=100, reuse=False)
    check_lite_whisper_folder("lite-whisper-tiny.en-acc")  # config and weights agree exactly, all finite
"""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .export import FEATURE_EXTRACTOR_FILES, TOKENIZER_FILES

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class InputError(ValueError):
    """An argument, path, model folder or stats file cannot be used; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------- arguments


def check_count(option: str, value: Optional[int], minimum: int = 1) -> None:
    """A whole-number option (`--num-samples`, `--batch-size`, `--limit`, ...) is at least `minimum`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InputError(f"{option} {value}: must be a whole number of at least {minimum}")


def check_recovery_request(recovery: str, recover_steps: Optional[int]) -> None:
    """`--recover-steps` is 0 or more, and does not contradict `--recovery`."""
    check_count("--recover-steps", recover_steps, minimum=0)
    if recover_steps and recovery in ("none", "refit"):
        raise InputError(f"--recovery {recovery} runs no distillation, but --recover-steps {recover_steps} asks for "
                         f"{recover_steps} steps: drop --recover-steps, or use --recovery distill")


def check_size_target(text) -> None:
    """`--target-encoder-params` is a ratio in (0, 1] or a parameter count, never something in between."""
    if text is None:
        return
    value_text = str(text).strip()
    try:
        value = float(value_text.rstrip("mMkK"))
    except ValueError:
        raise InputError(f"--target-encoder-params {text!r}: give a ratio like 0.85 or a count like 6.48M") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--target-encoder-params {text!r}: must be a ratio in (0, 1] or a positive count")
    if value_text[-1:] not in "mMkK" and 1 < value < 1000:
        raise InputError(f"--target-encoder-params {text!r} is ambiguous: neither a ratio of the stock encoder "
                         f"(0 < x <= 1, e.g. 0.85) nor a plausible parameter count; did you mean {value_text}M?")


def check_device(device: Optional[str]) -> None:
    """`--device` names a device this machine has."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r}: not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__}); "
                             "use --device cpu, or install a CUDA build of torch")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 ...)")
    elif parsed.type not in ("cpu", "mps", "xpu"):
        raise InputError(f"--device {device}: unsupported device type {parsed.type!r}; use cpu or cuda")


# ------------------------------------------------------------------------------------------------- paths


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_folder(out_dir, overwrite: bool = False, inputs: Optional[Dict[str, object]] = None) -> Path:
    """`out_dir` may be written (its parent is writable) and replacing it destroys none of `inputs`.

    `inputs` maps a name for the message ("MODEL", "--stats", "SOURCE") to a path the run reads; a Hub id or
    any name that is not an existing path is ignored.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder; choose another --out")
    if out_dir.exists() and not overwrite and (out_dir.is_file() or any(out_dir.iterdir())):
        raise InputError(f"--out {out_dir}: exists; choose another --out or pass --overwrite")
    for name, value in (inputs or {}).items():
        if value is None or str(value).startswith("hf://") or (name == "MODEL" and not Path(str(value)).exists()):
            continue  # a Hub id or dataset: nothing local to destroy
        path = Path(str(value))
        if _inside(path, out_dir):  # replacing out_dir would take the input with it
            raise InputError(f"--out {out_dir} overlaps {name} {path}: writing there would "
                             f"{'delete' if overwrite else 'mix into'} the input; choose another --out")
    parent = out_dir.resolve().parent
    existing = next(folder for folder in [parent, *parent.parents] if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: cannot write in {existing} (permission denied); choose a writable --out")
    if existing == parent:  # try for real: read-only mounts and full disks pass os.access
        try:
            tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.check-", dir=parent).cleanup()
        except OSError as error:
            raise InputError(f"--out {out_dir}: cannot write in {parent} ({error.strerror}); choose another --out") from None
    return out_dir


def check_writable_file(option: str, path) -> None:
    """A file the run will write (`--json`, `--stats`) can be created where it is asked for."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    parent = path.resolve().parent
    existing = next(folder for folder in [parent, *parent.parents] if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {existing} (permission denied)")


# ------------------------------------------------------------------------------------------------- models


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{what} {path} is not readable JSON ({error}); restore it from the original model") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} is not a JSON object; restore it from the original model")
    return data


def _hub_file(model: str, name: str, required: bool = False) -> Optional[Path]:
    """A file of a Hub model (downloaded or cached), None when the repo lacks it; InputError when the repo cannot
    be read (offline, not found, no access) or, if `required`, lacks the file."""
    from transformers.utils import cached_file

    try:
        found = cached_file(model, name, _raise_exceptions_for_missing_entries=required,
                            _raise_exceptions_for_connection_errors=required)
    except Exception as error:  # huggingface_hub/transformers raise OSError, offline and HTTP errors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"MODEL {model}: not a local folder, and the Hub repo could not be read ({first_line}); "
                         "check the id and your connection, or give a local folder") from None
    return Path(found) if found else None


def model_files(model) -> Dict[str, Optional[Path]]:
    """{file name: path or None} for the files a Whisper model folder or Hub id may hold."""
    names = ("config.json", "generation_config.json") + FEATURE_EXTRACTOR_FILES + TOKENIZER_FILES + (
        "merges.txt", "tokenizer_config.json") + WEIGHT_FILES
    local = Path(str(model))
    if local.is_dir():
        return {name: (local / name if (local / name).is_file() else None) for name in names}
    if local.exists():
        raise InputError(f"MODEL {model}: is a file; give the model's folder or a Hub id")
    text = str(model)
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or os.sep in text.strip("/").split("/", 1)[-1]:
        raise InputError(f"MODEL {model}: no such folder (and not a Hub id ORG/NAME)")
    files = {"config.json": _hub_file(text, "config.json", required=True)}
    files.update({name: _hub_file(text, name) for name in names if name != "config.json"})
    return files


def _check_weights_readable(path: Path) -> None:
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError, OSError: a truncated or garbled file
        raise InputError(f"weights {path} are not a readable safetensors file ({error}); "
                         "re-download or re-import the model") from None


def check_base_model(model) -> dict:
    """`model` is a stock Whisper (folder or Hub id) with weights, tokenizer, feature extractor and generation
    config; returns its config.json as a dict. A LiteWhisper, another architecture or a garbled file is refused."""
    files = model_files(model)
    if files["config.json"] is None:
        raise InputError(f"MODEL {model}: no config.json; give a transformers Whisper folder "
                         "(lite-whisper import-ct2 converts faster-whisper models)")
    config = _read_json(files["config.json"], f"MODEL {model}: config")
    model_type = config.get("model_type")
    if model_type == "lite-whisper":
        recipe = Path(str(model)) / "compression_recipe.json"
        base = (_read_json(recipe, "recipe").get("base_model") if recipe.is_file() else None) or \
            "the stock model it was made from"
        raise InputError(f"MODEL {model} is already a LiteWhisper; compress the stock Whisper instead ({base})")
    if model_type != "whisper":
        raise InputError(f"MODEL {model}: config.json has model_type {model_type!r}, not a Whisper model")
    weights = [files[name] for name in WEIGHT_FILES if files[name] is not None]
    if not weights:
        raise InputError(f"MODEL {model}: no weights ({' or '.join(WEIGHT_FILES)}); the folder is incomplete")
    _check_weights_readable(weights[0])
    missing = [what for what, names in (("a feature extractor config (preprocessor_config.json)", FEATURE_EXTRACTOR_FILES),
                                        ("a tokenizer (tokenizer.json or vocab.json)", TOKENIZER_FILES),
                                        ("generation_config.json", ("generation_config.json",)))
               if not any(files[name] is not None for name in names)]
    if missing:
        raise InputError(f"MODEL {model} lacks {' and '.join(missing)}, which a LiteWhisper repo needs; "
                         "copy them from the original model (or re-run lite-whisper import-ct2)")
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if files.get(name) is not None:
            _read_json(files[name], f"MODEL {model}:")
    return config


def check_whisper_config(config: dict, model) -> "object":
    """A WhisperConfig from `config` (a dict), or InputError when its fields cannot build one."""
    from transformers import WhisperConfig

    try:
        return WhisperConfig(**{key: value for key, value in config.items() if key != "model_type"})
    except Exception as error:
        raise InputError(f"MODEL {model}: config.json does not describe a Whisper model ({error})") from None


def expected_lite_whisper_state(config) -> Dict[str, tuple]:
    """{parameter name: shape} that a LiteWhisper checkpoint of `config` must hold (built on the meta device)."""
    import torch

    from modeling_lite_whisper import LiteWhisperForConditionalGeneration

    with torch.device("meta"):
        model = LiteWhisperForConditionalGeneration(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("proj_out.weight", None)
    return shapes


def check_lite_whisper_folder(folder) -> None:
    """A LiteWhisper folder's config and weights agree exactly (names and shapes) and every weight is finite,
    checked with this package's model code (the folder's own copy may be older)."""
    from safetensors import safe_open

    from configuration_lite_whisper import LiteWhisperConfig, LowRankConfigError

    folder = Path(folder)
    raw = _read_json(folder / "config.json", "config")
    try:
        config = LiteWhisperConfig(**{key: value for key, value in raw.items() if key != "model_type"})
    except LowRankConfigError as error:
        raise InputError(f"{folder}: config.json: {error}") from None
    expected = expected_lite_whisper_state(config)
    index = folder / "model.safetensors.index.json"
    shards = (sorted(set(_read_json(index, "weights index").get("weight_map", {}).values())) if index.is_file()
              else ["model.safetensors"])
    found, nonfinite = {}, []
    import torch

    for shard in shards:
        _check_weights_readable(folder / shard)
        with safe_open(str(folder / shard), "pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                found[name] = tuple(tensor.shape)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    nonfinite.append(name)
    missing = sorted(set(expected) - set(found) - {"model.encoder.embed_positions.weight"})
    unexpected = sorted(set(found) - set(expected) - {"proj_out.weight"})
    mis_shaped = sorted(name for name in set(expected) & set(found) if expected[name] != found[name])
    problems = [f"{label}: {', '.join(names[:4])}" + (f" and {len(names) - 4} more" if len(names) > 4 else "")
                for label, names in (("missing from the weights", missing), ("not expected by the config", unexpected),
                                     ("with a shape other than the config's", mis_shaped),
                                     ("holding NaN or infinite values", nonfinite)) if names]
    if problems:
        raise InputError(f"{folder}: config.json and the weights do not agree ({'; '.join(problems)}); re-export "
                         "the folder with lite-whisper compress")


# ------------------------------------------------------------------------------------------------- data


def check_data_source(option: str, source: str, needed: Optional[int] = None) -> Optional[int]:
    """A local audio folder exists and lists its clips (metadata.csv readable), with at least `needed` of them;
    returns the clip count (None for an hf:// dataset, counted only while streaming)."""
    from .audio import AudioDataError, folder_entries

    if str(source).startswith("hf://"):
        from .audio import parse_hub_spec

        try:
            parse_hub_spec(str(source))
        except AudioDataError as error:
            raise InputError(f"{option}: {error}") from None
        return None
    try:
        count = len(folder_entries(Path(source)))
    except AudioDataError as error:
        raise InputError(f"{option} {source}: {error}") from None
    if needed is not None and count < needed:
        raise InputError(f"{option} {source} holds {count} clips but {needed} were asked for (--num-samples); "
                         f"pass --num-samples {count} or fewer, or add clips")
    return count


def check_stats_request(stats_path, calibration: Optional[str], num_samples: Optional[int], frames: Optional[str],
                        reuse: bool = False) -> Optional[dict]:
    """An existing stats file is complete and sane, and was made from the calibration asked for.

    `calibration`/`num_samples`/`frames` None: not asked for explicitly, so the file's are taken. `reuse=True`
    (--reuse-stats) takes the file whatever was asked. Returns the file's header (None when it does not exist yet).
    """
    from .audio import source_name
    from .calibration import CalibrationError, StatsMismatchError, read_stats_header

    if stats_path is None:
        return None
    path = Path(stats_path)
    if not path.exists():
        check_writable_file("--stats", path)
        return None
    try:
        header = read_stats_header(path)
    except CalibrationError as error:
        raise InputError(f"--stats: {error}") from None
    if reuse:
        return header
    disagree = []
    if calibration is not None and source_name(calibration) != header["calibration"]:
        disagree.append(f"calibration {header['calibration']!r} but {source_name(calibration)!r} was asked for")
    if num_samples is not None and num_samples != header["utterances"]:
        disagree.append(f"{header['utterances']} clips but {num_samples} were asked for")
    if frames is not None and frames != header["frames"]:
        disagree.append(f"{header['frames']!r} frames but {frames!r} was asked for")
    if disagree:
        raise StatsMismatchError(f"--stats {path} holds statistics over {'; '.join(disagree)}: pass --reuse-stats to "
                                 "use it anyway, drop the options that disagree, or give another --stats file")
    return header


# ------------------------------------------------------------------------------------------------- publishing

# Never uploaded without --include-unusual-files: calibration statistics (large, and not part of a model) and
# anything that looks like a credential.
SECRET_NAME_PARTS = ("token", "secret", "password", "credential", "id_rsa", "id_ed25519", ".pem", ".key", ".p12",
                     ".env", ".netrc", "api_key", "apikey")


def unusual_upload_files(folder, files: Iterable[str]) -> List[str]:
    """Files of a repo folder that should not be published unasked: stats files and likely secrets."""
    flagged = []
    for name in files:
        lower = Path(name).name.lower()
        if lower.startswith("tokenizer") or lower in ("special_tokens_map.json", "added_tokens.json"):
            continue  # a tokenizer's files mention "token" and are meant to be published
        if any(part in lower for part in SECRET_NAME_PARTS):
            flagged.append(f"{name} (looks like a credential)")
        elif lower.endswith((".stats", ".safetensors")) and _is_stats_file(Path(folder) / name):
            flagged.append(f"{name} (calibration statistics)")
    return flagged


def _is_stats_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return "lite_whisper" in (handle.metadata() or {})
    except Exception:
        return False
