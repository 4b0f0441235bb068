"""Push a LiteWhisper repo folder to the Hugging Face Hub, after checking that it works on its own.

    files = validate_folder("lite-whisper-tiny.en-acc")       # static checks + load in a fresh process
    push_folder("lite-whisper-tiny.en-acc", "ORG/lite-whisper-tiny.en-acc", private=True)

Validation, before anything leaves the machine: the card (README.md), the two code files named by the config's
`auto_map`, the config, the weights, the processor (feature extractor and tokenizer) and the generation config
must be present; then a fresh Python process, offline, with an empty remote-code cache and a working directory
outside this repository, loads the folder with `trust_remote_code=True` and decodes one second of audio. The
push itself is one commit: `create_repo(exist_ok=True)` (+ `create_branch` for a revision) and `upload_folder`.
A dry run does the validation and lists every file that would be uploaded; it needs no network and no token.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

# Never uploaded: hidden files and folders (.git, .cache, staging folders), Python caches.
IGNORE_PATTERNS = [".*", "*/.*", "**/.*/**", "__pycache__", "*/__pycache__/*", "**/__pycache__/**", "*.pyc"]
CODE_FILES = ("configuration_lite_whisper.py", "modeling_lite_whisper.py")
LOGIN_HINT = "log in with `huggingface-cli login` (`hf auth login` in recent huggingface_hub) or set HF_TOKEN"
VALIDATION_TIMEOUT_S = 600

_LOAD_CHECK = r"""
import json, sys
import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

path = sys.argv[1]
# exactly as a user of a stock Whisper repo would: default dtype, float features from the processor
model = AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
audio = (0.01 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
with torch.inference_mode():
    tokens = model.generate(features, max_new_tokens=3)
print("LOADED " + json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "config": type(model.config).__name__, "tokens": int(tokens.shape[-1])}))
"""


class PushError(ValueError):
    """The folder is not a complete, loadable LiteWhisper repo, or the Hub cannot be reached as asked."""


def upload_files(folder) -> List[str]:
    """Every file `upload_folder` would send, as repo paths, sorted (hidden files and caches left out)."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def missing_files(folder) -> List[str]:
    """What a complete LiteWhisper repo folder lacks, one readable item each (empty when complete)."""
    folder = Path(folder)
    files = set(upload_files(folder)) if folder.is_dir() else set()
    problems = []
    if "README.md" not in files:
        problems.append("model card README.md (lite-whisper card DIR --results FILE)")
    if "config.json" not in files:
        problems.append("config.json")
        config = {}
    else:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PushError(f"{folder / 'config.json'} is not readable JSON ({error}); re-export the folder") from None
        if config.get("model_type") != "lite-whisper":
            problems.append(f"a LiteWhisper config (config.json has model_type {config.get('model_type')!r})")
        auto_map = config.get("auto_map") or {}
        if "AutoModelForSpeechSeq2Seq" not in auto_map or "AutoConfig" not in auto_map:
            problems.append("auto_map for AutoConfig and AutoModelForSpeechSeq2Seq in config.json")
    for name in CODE_FILES:
        if name not in files:
            problems.append(f"code file {name}")
    if not ({"model.safetensors", "model.safetensors.index.json"} & files):
        problems.append("weights model.safetensors (or model.safetensors.index.json)")
    if "generation_config.json" not in files:
        problems.append("generation_config.json")
    if "preprocessor_config.json" not in files:
        # transformers 5 may fold it into processor_config.json, which transformers 4.x cannot read.
        problems.append("feature extractor preprocessor_config.json (processor.feature_extractor.save_pretrained(DIR))")
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
        problems.append("tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if "tokenizer_config.json" not in files:
        problems.append("tokenizer_config.json")
    return problems


def load_in_fresh_process(folder, timeout: float = VALIDATION_TIMEOUT_S) -> dict:
    """Load the folder with trust_remote_code in a new, offline Python process; what it loaded, or PushError."""
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="lite-whisper-validate-") as scratch:
        environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                           HF_MODULES_CACHE=str(Path(scratch) / "modules"))
        try:
            completed = subprocess.run(  # no stdin: a prompt must fail, never wait or print into the JSON
                [sys.executable, "-c", _LOAD_CHECK, str(folder)], cwd=scratch, env=environment,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise PushError(f"{folder}: loading it in a fresh process took over {timeout:.0f} s") from None
    if completed.returncode != 0:
        last_lines = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise PushError(f"{folder} does not load with trust_remote_code in a fresh process:\n{last_lines}")
    _, marker, answer = completed.stdout.rpartition("LOADED ")
    if not marker:
        raise PushError(f"{folder}: the fresh-process load printed no result: {completed.stdout.strip()[-300:]!r}")
    loaded = json.loads(answer.splitlines()[0])
    if not loaded["module"].startswith("transformers_modules"):
        raise PushError(
            f"{folder}: {loaded['class']} came from {loaded['module']}, not from the folder's own code "
            "(the repo would not work for users without lite-whisper installed)"
        )
    return loaded


def validate_folder(folder, load: bool = True, include_unusual_files: bool = False) -> List[str]:
    """Check a LiteWhisper repo folder is complete, its config and weights agree exactly and are finite, it holds
    no stats file or likely credential (unless `include_unusual_files`) and it loads on its own; returns the files
    to upload."""
    from .checks import InputError, check_lite_whisper_folder, unusual_upload_files

    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"{folder}: no such folder")
    problems = missing_files(folder)
    if problems:
        raise PushError(f"{folder} is not a complete LiteWhisper repo; missing: " + "; ".join(problems))
    files = upload_files(folder)
    unusual = unusual_upload_files(folder, files)
    if unusual and not include_unusual_files:
        raise PushError(f"{folder} holds files that should not be published: {', '.join(unusual)}; move them out of "
                        "the folder, or pass --include-unusual-files to upload them anyway")
    try:
        check_lite_whisper_folder(folder)
    except InputError as error:
        raise PushError(str(error)) from None
    if load:
        load_in_fresh_process(folder)
    return files


def require_token(token: Optional[str] = None) -> str:
    """The Hugging Face token to push with (argument, HF_TOKEN or the saved login), or a PushError saying how."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PushError(f"pushing to the Hugging Face Hub needs a token with write access: {LOGIN_HINT}")
    return token


def push_folder(
    folder,
    repo_id: str,
    private: bool = False,
    revision: Optional[str] = None,
    dry_run: bool = False,
    commit_message: Optional[str] = None,
    token: Optional[str] = None,
    validate: bool = True,
    log=print,
    include_unusual_files: bool = False,
) -> Optional[str]:
    """Validate `folder`, then upload it to `repo_id` in one commit; returns the commit URL (None on a dry run).

    `revision`: a branch to push to (created from main when absent). `dry_run`: validate and list every file
    that would be uploaded, with no network access and no token. `validate=False` skips only the
    fresh-process load; the completeness checks always run.
    """
    folder = Path(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo-id must be ORG/NAME, got {repo_id!r}")
    if not dry_run:
        token = require_token(token)  # fail before the slow validation
    files = validate_folder(folder, load=validate, include_unusual_files=include_unusual_files)
    target = f"{repo_id}" + (f"@{revision}" if revision else "") + (" (private)" if private else "")
    total = sum((folder / name).stat().st_size for name in files)
    if dry_run:
        log(f"dry run: would upload {len(files)} files ({total / 1e6:.1f} MB) from {folder} to {target}:")
        for name in files:
            log(f"  {name}  ({(folder / name).stat().st_size / 1e6:.2f} MB)")
        return None

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    log(f"uploading {len(files)} files ({total / 1e6:.1f} MB) to {target}")
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
        commit_message=commit_message or f"Upload {folder.name} (LiteWhisper)", ignore_patterns=IGNORE_PATTERNS,
    )
    url = getattr(commit, "commit_url", None) or str(commit)
    log(f"pushed: {url}")
    return url
