"""Shared fixtures: where the real speech data lives, and tiny random Whisper configs."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real LibriSpeech sets (see ../shared/data/README.md); CI has them, other machines may not.
DATA_ROOT = Path(os.environ.get("LITE_WHISPER_DATA", REPO_ROOT.parent / "shared" / "data"))


def speech_set(name: str) -> Path:
    """Path of one of the shared speech sets, or skip the test with the reason when it is absent."""
    path = DATA_ROOT / name
    if not (path / "metadata.csv").is_file():
        pytest.skip(f"speech set {name!r} not found under {DATA_ROOT} (set LITE_WHISPER_DATA to its parent)")
    return path
