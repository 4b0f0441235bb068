"""Is one model's WER really lower than another's? Paired bootstrap over utterances.

On a small test set a WER difference of a few words is noise. This transcribes the same utterances with a
reference model (first) and each other model (greedy, as `lite-whisper eval`, in the set's language), counts
errors per utterance as the set's metric does (words, or characters for languages written without spaces; after
the language's normaliser), and resamples the utterances with replacement to give, for each
model, its WER minus the reference's with a 95 % interval and how often it came out lower.

    python benchmarks/paired_wer.py --data ../shared/data/librispeech-test-other-60 \
        --models runs/tiny.en-balanced runs/tiny.en-balanced-refit runs/tiny.en-balanced-distill

Transcripts are cached in --cache (one JSON per model folder), so adding a model re-runs only that model.
"""

import argparse
import json
from pathlib import Path

import jiwer
import numpy as np

from lite_whisper_convert.audio import iter_utterances
from lite_whisper_convert.evaluation import dataset_language, load_model, machine_info, metric_for, normalize, transcribe

RESULTS = Path(__file__).resolve().parent / "results"


def transcripts(model_dir: str, utterances: list, cache: Path, batch_size: int, language: str = "en") -> list:
    path = cache / (Path(model_dir).resolve().name + ("" if language == "en" else f"-{language}") + ".json")
    names = [utterance.name for utterance in utterances]
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["model"] == str(Path(model_dir).resolve()) and cached["names"] == names:
            return cached["texts"]
    model, processor = load_model(model_dir, device="cpu")
    texts = transcribe(model, processor, utterances, batch_size=batch_size, language=language)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": str(Path(model_dir).resolve()), "names": names, "texts": texts}))
    return texts


def error_counts(references: list, hypotheses: list, language: str = "en") -> np.ndarray:
    """Per utterance: (errors = substitutions + deletions + insertions, reference units) after the language's
    normaliser; units are words, or characters (spaces removed) for languages written without spaces."""
    by_character = metric_for(language) == "cer"
    counts = []
    for reference, hypothesis in zip(references, hypotheses):
        reference, hypothesis = normalize(reference, language), normalize(hypothesis, language)
        units = len(reference.replace(" ", "")) if by_character else len(reference.split())
        if hypothesis:
            if by_character:
                alignment = jiwer.process_characters(reference.replace(" ", ""), hypothesis.replace(" ", ""))
            else:
                alignment = jiwer.process_words(reference, hypothesis)
            errors = alignment.substitutions + alignment.deletions + alignment.insertions
        else:  # nothing transcribed: every reference unit deleted
            errors = units
        counts.append((errors, units))
    return np.array(counts, dtype=np.float64)


def paired_bootstrap(reference: np.ndarray, other: np.ndarray, resamples: int, seed: int) -> dict:
    """WER(other) - WER(reference) in points, with a 95 % bootstrap interval over utterances."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(reference), size=(resamples, len(reference)))
    words = reference[index, 1].sum(axis=1)
    deltas = 100.0 * (other[index, 0].sum(axis=1) - reference[index, 0].sum(axis=1)) / words
    return {
        "delta": 100.0 * (other[:, 0].sum() - reference[:, 0].sum()) / reference[:, 1].sum(),
        "interval": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))],
        "lower_fraction": float((deltas < 0).mean()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="audiofolder with references")
    parser.add_argument("--models", nargs="+", required=True, help="model folders; the first is the reference")
    parser.add_argument("--language", help="decode and score in this language (default: the set's own, else en)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="paired-wer-cache", help="folder for cached transcripts")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("give a reference model and at least one other")

    language = args.language or dataset_language(args.data) or "en"
    utterances = [utterance for utterance in iter_utterances(args.data) if normalize(utterance.text, language)]
    references = [utterance.text for utterance in utterances]
    counts = {model: error_counts(references, transcripts(model, utterances, Path(args.cache), args.batch_size,
                                                          language), language)
              for model in args.models}
    reference_model = args.models[0]
    base = counts[reference_model]
    unit = "characters" if metric_for(language) == "cer" else "words"
    print(f"Paired bootstrap over {len(utterances)} utterances ({int(base[:, 1].sum())} {unit}, language {language}) "
          f"of {args.data}, "
          f"{args.resamples} resamples; reference {Path(reference_model).name} "
          f"(WER {100 * base[:, 0].sum() / base[:, 1].sum():.2f})\n")
    print("| model | WER | Δ vs reference | 95 % interval | resamples with lower WER |\n|---|---|---|---|---|")
    rows = []
    for model in args.models[1:]:
        comparison = paired_bootstrap(base, counts[model], args.resamples, args.seed)
        wer = 100 * counts[model][:, 0].sum() / counts[model][:, 1].sum()
        rows.append({"model": model, "wer": wer, **comparison})
        low, high = comparison["interval"]
        print(f"| {Path(model).name} | {wer:.2f} | {comparison['delta']:+.2f} | [{low:+.2f}, {high:+.2f}] | "
              f"{100 * comparison['lower_fraction']:.0f} % |")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine_info(), "data": args.data, "language": language,
                                   "metric": metric_for(language), "reference": reference_model,
                                   "utterances": len(utterances), "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
