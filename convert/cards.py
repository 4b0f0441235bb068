"""Model cards: render a LiteWhisper repo's README.md from eval results, with a WER-vs-size Pareto plot.

    render_card("lite-whisper-tiny.en-acc", ["results/tiny.en.json", "results/lite-tiny.en-*.json"],
                base_model="openai/whisper-tiny.en", repo_id="ORG/lite-whisper-tiny.en-acc")

The card is the template `model_cards/template.md` (Jinja, rendered through huggingface_hub's
`ModelCard.from_template`) under YAML metadata built with `ModelCardData`: library_name, pipeline_tag,
base_model, license, language, tags, datasets and a model-index with one `EvalResult` (WER, percent) per data
set and split. Results come from `lite-whisper eval --json` files or `benchmarks/speed_and_wer.py` reports:
the entry whose model is this folder is the card's model, a stock Whisper entry is the base it is compared
against, and every other LiteWhisper entry is another preset; all of them go into the table and the plot.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .audio import parse_hub_spec
from .evaluation import metric_for, normalizer_name
from .export import recovery_line

TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "template.md"
PLOT_NAME = "pareto.png"
# Written by the export stage next to the weights (see export.Recipe): base model, calibration, rank policy...
RECIPE_FILE = "compression_recipe.json"
# Recipe keys shown elsewhere in the card (sizes, ranks) or not about how the model was made.
RECIPE_HIDDEN = {"low_rank_config", "encoder_params", "stock_encoder_params", "encoder_gflops", "stock_encoder_gflops",
                 "repo_id", "datasets", "preset"}
PRESET_SUFFIX = re.compile(r"-(acc|balanced|fast)$")
TAGS = ["audio", "automatic-speech-recognition", "whisper", "lite-whisper", "low-rank", "compression"]
ONNX_TAGS = ["onnx", "transformers.js"]  # where the Hub lists repos that run in ONNX Runtime / transformers.js
SLOTS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

# The shared local evaluation sets: which Hub dataset and split they are drawn from, for the model-index.
KNOWN_SETS = {
    "librispeech-test-other-60": ("openslr/librispeech_asr", "other", "test", "LibriSpeech test-other"),
    "librispeech-test-clean-mini": ("openslr/librispeech_asr", "clean", "test", "LibriSpeech test-clean"),
}
# Hub datasets whose split names follow a convention we can state in words.
HUB_NAMES = {
    "openslr/librispeech_asr": "LibriSpeech",
    "hf-audio/esb-datasets-test-only-sorted": "ESB (Open ASR leaderboard)",
}

CITATION = """@article{kamahori2025liteasr,
  title   = {LiteASR: Efficient Automatic Speech Recognition with Low-Rank Approximation},
  author  = {Kamahori, Keisuke and Kasai, Jungo and Kojima, Noriyuki and Kasikci, Baris},
  journal = {arXiv preprint arXiv:2502.20583},
  year    = {2025}
}"""


class CardError(ValueError):
    """A card cannot be rendered from what was given (no results for the model, no base model...)."""


@dataclass
class ModelResult:
    """One model's evaluation, from an eval results file or one row of a benchmark report."""

    name: str
    model: str
    model_type: str  # "whisper", "lite-whisper" or "faster-whisper"
    encoder_params: int
    encoder_gflops: float
    mean_wer: float
    datasets: Dict[str, dict]
    machine: dict = field(default_factory=dict)
    rtfx: Optional[float] = None
    encoder_latency_ms: Optional[float] = None  # batch 1, from benchmark reports
    source_file: str = ""


def _overall_rtfx(datasets: Dict[str, dict]) -> Optional[float]:
    audio = sum(result.get("audio_seconds", 0.0) for result in datasets.values())
    wall = sum(result["audio_seconds"] / result["rtfx"] for result in datasets.values() if result.get("rtfx"))
    return audio / wall if wall else None


def load_results(paths: Sequence) -> List[ModelResult]:
    """Every model result in the given eval results files and benchmark reports, in order."""
    results = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CardError(f"{path}: not JSON ({error})") from None
        if "models" in data:  # a benchmark report: one entry per model, same machine for all
            for entry in data["models"]:
                if entry.get("mean_wer") is None:
                    continue
                results.append(ModelResult(
                    name=entry["name"], model=entry["model"], model_type=entry.get("model_type", entry["kind"]),
                    encoder_params=entry["encoder_params"], encoder_gflops=entry["encoder_gflops"],
                    mean_wer=entry["mean_wer"], datasets=entry["datasets"], machine=data.get("machine", {}),
                    rtfx=entry.get("rtfx"), encoder_latency_ms=entry.get("encoder_latency_ms", {}).get("1"),
                    source_file=str(path),
                ))
        elif "datasets" in data and "model" in data:
            results.append(ModelResult(
                name=Path(data["model"]).name, model=data["model"], model_type=data.get("model_type", "whisper"),
                encoder_params=data["encoder_params"], encoder_gflops=data["encoder_gflops"],
                mean_wer=data["mean_wer"], datasets=data["datasets"], machine=data.get("machine", {}),
                rtfx=_overall_rtfx(data["datasets"]), source_file=str(path),
            ))
        else:
            raise CardError(f"{path}: neither a `lite-whisper eval --json` file nor a benchmark report")
    return _one_per_model(results)


def _one_per_model(results: List[ModelResult]) -> List[ModelResult]:
    """A model evaluated in several files (e.g. one `lite-whisper eval` per set) becomes one result with every
    set (the first file's result of a set wins) and their unweighted mean; its speed figures stay those of the
    first file, since speed compares only within one run."""
    merged: Dict[tuple, ModelResult] = {}
    for result in results:
        path = Path(result.model)
        key = (result.model_type, result.name, str(path.resolve()) if path.exists() else result.model)
        if key not in merged:
            merged[key] = result
            continue
        kept = merged[key]
        kept.datasets.update({name: data for name, data in result.datasets.items() if name not in kept.datasets})
        kept.mean_wer = sum(set_error_rate(data) for data in kept.datasets.values()) / len(kept.datasets)
    return list(merged.values())


def _is_model(result: ModelResult, model_dir: Path) -> bool:
    candidate = Path(result.model)
    if candidate.exists():
        return candidate.resolve() == model_dir.resolve()
    return result.model.rstrip("/").split("/")[-1] == model_dir.name  # a Hub id or a path on another machine


def select_results(results: List[ModelResult], model_dir: Path):
    """(this model, the stock base, the other LiteWhisper presets) among the results."""
    mine = [result for result in results if result.model_type == "lite-whisper" and _is_model(result, model_dir)]
    if not mine:
        raise CardError(
            f"no results for {model_dir} in the results files; run `lite-whisper eval {model_dir} --data DATA "
            "--json FILE` and pass FILE with --results"
        )
    this = mine[0]
    stock = [result for result in results if result.model_type == "whisper"]
    if not stock:
        raise CardError("no results for the stock (base) Whisper model; evaluate it too and pass its results file")
    base = stock[0]
    others, seen = [], {this.name, base.name}
    for result in results:
        if result.model_type == "lite-whisper" and result.name not in seen and not _is_model(result, model_dir):
            others.append(result)
            seen.add(result.name)
    return this, base, others


# ----------------------------------------------------------------------------------------------- metadata


def dataset_metadata(name: str, result: dict) -> dict:
    """EvalResult dataset fields for one evaluated set: a known shared set, a Hub dataset or a local folder.

    The name says how many utterances were scored, so a subset is never mistaken for the full split.
    """
    count = result.get("num_utterances")
    if name in KNOWN_SETS:
        path, config, split, label = KNOWN_SETS[name]
        return dict(dataset_type=path, dataset_config=config, dataset_split=split,
                    dataset_name=f"{label} ({count}-utterance subset)")
    source = result.get("source", "")
    if source.startswith("hf://"):
        path, config, split = parse_hub_spec(source)
        label = HUB_NAMES.get(path, path.split("/")[-1])
        return dict(dataset_type=path, dataset_config=config, dataset_split=split,
                    dataset_name=f"{label} {config + ' ' if config else ''}{split} ({count} utterances)")
    return dict(dataset_type=name, dataset_name=f"{name} ({count} utterances)", dataset_split="test")


def set_language(data: dict) -> str:
    """A set's language ('en' in results written before sets had one)."""
    return data.get("language") or "en"


def set_metric(data: dict) -> str:
    """'wer' or 'cer': the metric a set was scored by."""
    return data.get("metric") or metric_for(set_language(data))


def set_error_rate(data: dict) -> float:
    """A set's error rate in its metric (results written before CER existed hold only 'wer')."""
    return float(data["error_rate"] if "error_rate" in data else data["wer"])


def eval_results(result: ModelResult):
    """One model-index result per evaluated set, each naming its language and metric (WER or CER)."""
    from huggingface_hub import EvalResult

    results = []
    for name, data in result.datasets.items():
        metadata = dataset_metadata(name, data)
        if name not in KNOWN_SETS and not data.get("source", "").startswith("hf://"):
            metadata["dataset_config"] = set_language(data)  # a local set: its language, as Common Voice's configs
        metric = set_metric(data)
        results.append(EvalResult(
            task_type="automatic-speech-recognition", task_name="Automatic Speech Recognition",
            metric_type=metric, metric_name=f"{metric.upper()} (%)", metric_value=round(set_error_rate(data), 2),
            dataset_args={"language": set_language(data)}, **metadata,
        ))
    return results


def _languages(model_dir: Path) -> List[str]:
    generation = model_dir / "generation_config.json"
    config = json.loads(generation.read_text()) if generation.is_file() else {}
    languages = [token.strip("<|>") for token in (config.get("lang_to_id") or {})]
    return languages if config.get("is_multilingual") and languages else ["en"]


def read_recipe(model_dir: Path, recipe: Optional[dict] = None) -> dict:
    """The compression recipe: the given dict, else `compression_recipe.json` in the folder, else {}."""
    if recipe is not None:
        return dict(recipe)
    path = model_dir / RECIPE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _is_local_path(value) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "./", "../", "~")) or Path(value).exists())


def _public(value):
    """A recipe value fit for a public card: local paths shortened to their last component."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return Path(value).name if _is_local_path(value) else value


def recipe_items(recipe: dict) -> List[tuple]:
    """(key, value) lines of the recipe for the card, without sizes/ranks shown elsewhere or empty extras.

    Recovery (in `extra`) gets its own line in words, as in the repo's export README."""
    recipe = dict(recipe)
    extra = dict(recipe.pop("extra", None) or {})
    if "recovery" in extra:
        recipe["recovery"] = recovery_line(extra.pop("recovery"))
    if "calibration_mix" in extra:  # clips per language and per source, and how they were interleaved
        mix = extra.pop("calibration_mix")
        recipe["calibration languages"] = counts_line(mix.get("languages", {})) + f" (balance: {mix.get('balance')})"
        recipe["calibration sources"] = counts_line(mix.get("sources", {}))
    probe = extra.pop("sensitivity_probe", None)
    if probe and probe.get("languages"):
        recipe["sensitivity probe"] = (f"{probe.get('clips')} clips, each transcribed in its language: "
                                       + counts_line(probe["languages"])
                                       + f" ({probe.get('detected_languages', 0)} detected)")
    made_earlier = list((extra.pop("stats_file_costs", None) or {}).values())
    if made_earlier:  # calibration came from a statistics file that an earlier run made
        recipe["statistics file cost"] = costs_line(made_earlier)
    if recipe.get("stages"):
        recipe["conversion cost"] = costs_line(recipe.pop("stages"))
    recipe["extra"] = extra
    return [
        (key, json.dumps(_public(value)) if isinstance(value, (dict, list)) else _public(value))
        for key, value in recipe.items()
        if key not in RECIPE_HIDDEN and value not in ({}, [], None, "")
    ]


def costs_line(stages: List[dict]) -> str:
    """StageCosts records -> one line, "calibration statistics 93 s, sensitivity 104 s, ...; 201 s in all, peak
    memory 4.5 GB"; stages under a second are left out of the list, not of the total."""
    seconds = sum(stage["seconds"] for stage in stages)
    listed = ", ".join(f"{stage['stage']} {stage['seconds']:.0f} s" for stage in stages if stage["seconds"] >= 1)
    peaks = [stage.get("peak_gpu_gb") or stage.get("peak_rss_gb") for stage in stages]
    peak = max((value for value in peaks if value is not None), default=None)
    return f"{listed}; {seconds:.0f} s in all" + (f", peak memory {peak:.1f} GB" if peak is not None else "")


def counts_line(counts: dict) -> str:
    """{"de": 18, "es": 18} -> "de 18, es 18"."""
    return ", ".join(f"{_public(name)} {count}" for name, count in counts.items())


def recipe_preset(recipe: dict) -> Optional[str]:
    policy = recipe.get("rank_policy")
    return recipe.get("preset") or (policy.get("preset") if isinstance(policy, dict) else None)


def recipe_datasets(recipe: dict) -> List[str]:
    """Hub ids of the calibration data, when the recipe names an hf:// source."""
    calibration = recipe.get("calibration")
    if isinstance(calibration, str) and calibration.startswith("hf://"):
        return [parse_hub_spec(calibration)[0]]
    return list(recipe.get("datasets") or [])


def onnx_dtypes(model_dir: Path) -> List[str]:
    """transformers.js dtypes the folder's onnx/ holds complete (encoder and merged decoder), e.g. ["fp32", "q8"]."""
    from .onnx_export import DECODER, ENCODER, ONNX_FOLDER, SUFFIXES, file_name

    folder = Path(model_dir) / ONNX_FOLDER
    return [dtype for dtype in SUFFIXES
            if all((folder / file_name(part, dtype)).is_file() for part in (ENCODER, DECODER))]


def ranks_table(model_dir: Path) -> List[dict]:
    """One row per encoder layer: the rank of each slot, or 'dense'."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    low_rank = config.get("low_rank_config") or [{}] * config["encoder_layers"]
    return [
        {"layer": index, "ranks": [str(ranks[slot]) if slot in ranks else "dense" for slot in SLOTS]}
        for index, ranks in enumerate(low_rank)
    ]


# ----------------------------------------------------------------------------------------------- the plot


def pareto_front(points: List[tuple]) -> List[tuple]:
    """The (params, wer) points no other point beats on both axes, sorted by size."""
    front, best = [], float("inf")
    for params, wer in sorted(points):
        if wer < best:
            front.append((params, wer))
            best = wer
    return front


def frontier_series(paths: Sequence) -> Dict[str, List[tuple]]:
    """{"decomposition only" | "recovered (…)": [(encoder params, WER), ...]} from `benchmarks/compress_presets.py`
    reports: the same model compressed to several sizes without and with recovery."""
    series: Dict[str, List[tuple]] = {}
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if "runs" not in report or "stock" not in report:
            raise CardError(f"{path}: not a benchmarks/compress_presets.py report")
        recovery = report.get("recovery", "none")
        label = "decomposition only" if recovery == "none" else f"recovered ({recovery})"
        points = series.setdefault(label, [])
        points += [(run["encoder_params"], run["wer"]) for run in report["runs"]
                   if run.get("policy", "sensitivity") == "sensitivity" and run.get("frames", "real") == "real"]
    return {label: sorted(set(points)) for label, points in series.items()}


def wer_axis_for_loops(axes, series: Optional[Dict[str, list]], stock_wer: float) -> bool:
    """Switch the WER axis to a log scale when a curve reaches repetition loops (over 3x the stock WER), which would
    flatten every other point; ticks read 20, 50, 100 rather than 2x10^1. Returns whether it did."""
    from matplotlib import ticker

    log = any(wer > 3 * stock_wer for points in (series or {}).values() for _, wer in points)
    if log:
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    return log


def pareto_plot(this: ModelResult, base: ModelResult, others: List[ModelResult], path: Path,
                base_label: str, series: Optional[Dict[str, List[tuple]]] = None) -> Path:
    """WER (mean over sets) vs encoder parameters for the stock model and every preset; this one highlighted.
    `series` (frontier_series) adds the WER-vs-size curves of the same model without and with recovery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    presets = sorted([this] + others, key=lambda result: result.encoder_params)
    front = pareto_front([(r.encoder_params / 1e6, r.mean_wer) for r in presets + [base]])
    axes.plot(*zip(*front), color="0.75", linestyle="--", linewidth=1, zorder=1, label="Pareto front")
    axes.scatter([base.encoder_params / 1e6], [base.mean_wer], marker="*", s=180, color="black", zorder=3,
                 label=f"{base_label} (stock)")
    for (label, points), style in zip((series or {}).items(), ("o:", "s-", "^-.", "v--")):
        axes.plot([params / 1e6 for params, _ in points], [wer for _, wer in points], style, color="0.45",
                  markersize=4, linewidth=1, zorder=2, label=label)
    for result in presets:
        mine = result is this
        axes.scatter([result.encoder_params / 1e6], [result.mean_wer], s=70 if mine else 40, zorder=4,
                     color="tab:red" if mine else "tab:blue", edgecolor="black" if mine else "none",
                     label="this model" if mine else None)
        axes.annotate(result.name, (result.encoder_params / 1e6, result.mean_wer), textcoords="offset points",
                      xytext=(6, 4), fontsize=8)
    axes.set_xlabel("encoder parameters (millions)")
    sets = list(this.datasets)
    log = wer_axis_for_loops(axes, series, base.mean_wer)
    axes.set_ylabel((f"WER (%), mean over {len(sets)} sets" if len(sets) > 1 else f"WER (%), {sets[0]}")
                    + (", log scale" if log else ""))
    axes.set_title(f"LiteWhisper presets of {base_label}: WER vs encoder size", fontsize=10)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    axes.legend(handles, labels, fontsize=8, loc="best")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------- the card


def _row(result: ModelResult, base: ModelResult, set_names: List[str], label: str, show_rtfx: bool) -> dict:
    return {
        "label": label,
        "encoder_params": f"{result.encoder_params / 1e6:.2f}M",
        "size": f"{100 * result.encoder_params / base.encoder_params:.0f}%",
        "gflops": f"{result.encoder_gflops:.1f}",
        "wers": [f"{set_error_rate(result.datasets[name]):.2f}" if name in result.datasets else "–" for name in set_names],
        "mean_wer": f"{result.mean_wer:.2f}",
        "rtfx": f"{result.rtfx:.1f}" if show_rtfx and result.rtfx else "–",
        "latency": f"{result.encoder_latency_ms:.0f}" if show_rtfx and result.encoder_latency_ms else "–",
    }


def _machine_line(machine: dict) -> str:
    if not machine:
        return "unknown machine"
    device = machine.get("gpu") or f"{machine.get('cpu', '?')}, {machine.get('threads', '?')} threads"
    return f"{device}; torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}"


def render_card(
    model_dir,
    results_files: Sequence,
    base_model: Optional[str] = None,
    repo_id: Optional[str] = None,
    license: str = "apache-2.0",
    datasets: Optional[Sequence[str]] = None,
    recipe: Optional[dict] = None,
    template=None,
    write: bool = True,
    frontier: Sequence = (),
):
    """Render `model_dir/README.md` (and `pareto.png`) from eval results; returns the `ModelCard`.

    `base_model`: the stock model's Hub id (default: the recipe's `base_model`). `repo_id`: the id the usage
    snippet loads (default: the recipe's `repo_id`, else ORG/<folder name>). `datasets`: Hub ids of the
    calibration data for the metadata (default: the recipe's). `recipe`: how the model was made (default: the
    folder's compression_recipe.json, written by export); shown in the card, local paths shortened.
    `frontier`: `benchmarks/compress_presets.py` reports whose WER-vs-size curves (recipe only, recovered) the
    Pareto plot adds.
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CardError(f"{model_dir}: not a model folder (no config.json)")
    recipe = read_recipe(model_dir, recipe)
    if not base_model and not _is_local_path(recipe.get("base_model")):
        base_model = recipe.get("base_model")
    if not base_model:
        raise CardError(
            "the base model's Hub id is unknown (the recipe names "
            f"{recipe.get('base_model', 'none')!r}): pass --base-model, e.g. openai/whisper-tiny.en"
        )
    name = model_dir.name
    repo_id = repo_id or recipe.get("repo_id") or f"ORG/{name}"
    datasets = list(datasets or recipe_datasets(recipe))
    match = PRESET_SUFFIX.search(name)
    preset = recipe_preset(recipe) or (match.group(1) if match else None)

    onnx_variants = onnx_dtypes(model_dir)
    this, base, others = select_results(load_results(results_files), model_dir)
    this.name = preset or this.name
    for result in others:  # "lite-whisper-tiny.en-fast" -> "fast"
        match = PRESET_SUFFIX.search(result.name)
        result.name = match.group(1) if match else result.name
    base_label = base_model.split("/")[-1]
    set_names = list(this.datasets)
    # Speed is only comparable when measured side by side: in one benchmark report (interleaved, one machine).
    compared = [this, base] + others
    same_run = len({result.source_file for result in compared}) == 1
    rows = [_row(base, base, set_names, f"{base_label} (stock)", same_run)]
    for result in sorted([this] + others, key=lambda result: -result.encoder_params):
        label = f"**{result.name} (this model)**" if result is this else result.name
        rows.append(_row(result, base, set_names, label, same_run))

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        base_model=base_model,
        license=license,
        language=_languages(model_dir),
        tags=TAGS + ([f"preset-{preset}"] if preset else []) + (ONNX_TAGS if onnx_variants else []),
        datasets=datasets or None,
        metrics=sorted({set_metric(data) for data in this.datasets.values()}, reverse=True),
        model_name=name,
        eval_results=eval_results(this),
    )
    template = Path(template) if template else TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"card template not found: {template} (model_cards/template.md in the repository)")
    if write:
        pareto_plot(this, base, others, model_dir / PLOT_NAME, base_label, frontier_series(frontier))
    sets = [
        {"name": dataset_metadata(set_name, this.datasets[set_name])["dataset_name"],
         "num_utterances": this.datasets[set_name]["num_utterances"],
         "minutes": f"{this.datasets[set_name]['audio_seconds'] / 60:.1f}",
         "language": set_language(this.datasets[set_name]), "metric": set_metric(this.datasets[set_name]).upper()}
        for set_name in set_names
    ]
    languages = list(dict.fromkeys(item["language"] for item in sets))
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=name,
        repo_id=repo_id,
        base_model=base_model,
        base_label=base_label,
        preset=preset,
        encoder_params=f"{this.encoder_params / 1e6:.2f}M",
        base_encoder_params=f"{base.encoder_params / 1e6:.2f}M",
        size_percent=f"{100 * this.encoder_params / base.encoder_params:.0f}",
        gflops=f"{this.encoder_gflops:.1f}",
        base_gflops=f"{base.encoder_gflops:.1f}",
        flops_percent=f"{100 * this.encoder_gflops / base.encoder_gflops:.0f}",
        set_names=[item["name"] for item in sets],
        set_columns=[f"{item['metric']} {item['name']} ({item['language']})" for item in sets],
        eval_languages=languages,
        normalizers=list(dict.fromkeys(normalizer_name(language) for language in languages)),
        sets=sets,
        rows=rows,
        show_rtfx=any(row["rtfx"] != "–" for row in rows),
        show_latency=any(row["latency"] != "–" for row in rows),
        machine=_machine_line(this.machine),
        date=(this.machine.get("date") or "")[:10],
        plot=PLOT_NAME,
        recipe=recipe_items(recipe),
        ranks=ranks_table(model_dir),
        slots=SLOTS,
        multilingual=_languages(model_dir) != ["en"],
        onnx_variants=onnx_variants,
        citation=CITATION,
    )
    if write:
        card.save(model_dir / "README.md")
    return card
