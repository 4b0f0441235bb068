"""Wall time of calibration in 1 process and under `accelerate launch` with N processes, side by side.

    python benchmarks/distributed_calibration.py --model /tmp/tiny.en \\
        --calibration ../shared/data/librispeech-train-clean-100-calib --num-samples 64 --processes 1 2

Each configuration runs `calibrate` below in fresh processes: load the model, then time calibration statistics
(the float64 sums, all-reduced across processes) over the same clips. One process uses every core through torch
threads; under a launcher accelerate gives each process cores / N threads (OMP_NUM_THREADS). The sums must
agree across configurations (checked). Prints a markdown table with the machine and writes JSON to
benchmarks/results/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def calibrate(model: str, calibration: str, num_samples: int, batch_size: int, report: str) -> None:
    """One process of the job: time the statistics over its shard, all-reduced; the main process reports."""
    import torch

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.calibration import collect_stats, reduce_stats
    from lite_whisper_convert.compress import load_base
    from lite_whisper_convert.distributed import Processes

    with Processes() as processes:
        base, feature_extractor = load_base(model)
        processes.wait()
        start = time.perf_counter()
        clips = iter_utterances(calibration, limit=num_samples, shard=processes.shard)
        stats = collect_stats(base, feature_extractor, clips, batch_size=batch_size, progress=False)
        reduce_stats(stats, processes.sum_in_place)
        processes.wait()
        seconds = time.perf_counter() - start
        if processes.is_main:
            checksum = float(sum(slot.total.sum() for slot in stats.slots.values()))
            Path(report).write_text(json.dumps({"seconds": seconds, "utterances": stats.utterances,
                                                "checksum": checksum, "threads": torch.get_num_threads()}))


def launch(processes: int, args, report: Path) -> dict:
    worker = [__file__, "--worker", "--model", args.model, "--calibration", args.calibration,
              "--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size), "--report", str(report)]
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *worker]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the table shows the median")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/distributed_calibration_<model>.json)")
    args = parser.parse_args()
    if args.worker:
        calibrate(args.model, args.calibration, args.num_samples, args.batch_size, args.report)
        return 0

    from statistics import median

    from lite_whisper_convert.evaluation import machine_info

    runs = {count: [] for count in args.processes}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for count in args.processes:
                runs[count].append(launch(count, args, Path(scratch) / f"{count}-{repeat}.json"))
    checksums = {run["checksum"] for results in runs.values() for run in results}
    spread = (max(checksums) - min(checksums)) / max(abs(min(checksums)), 1e-30)
    if spread > 1e-9:
        raise RuntimeError(f"the statistics differ between configurations (relative spread {spread:.2e})")
    machine = machine_info()
    single = median(run["seconds"] for run in runs[args.processes[0]])
    lines = [
        f"Calibration of {Path(args.model).name} on {args.num_samples} clips of {Path(args.calibration).name} "
        f"(batch {args.batch_size}); {machine['cpu']}, {os.cpu_count()} cores, torch {machine['torch']}; median of "
        f"{args.repeats} interleaved runs; load average {os.getloadavg()[0]:.1f}",
        "",
        "| processes | threads each | seconds | speed-up |",
        "|---|---|---|---|",
    ]
    for count, results in runs.items():
        seconds = median(run["seconds"] for run in results)
        lines.append(f"| {count} | {results[0]['threads']} | {seconds:.1f} | {single / seconds:.2f}× |")
    print("\n".join(lines))
    out = Path(args.out) if args.out else RESULTS / f"distributed_calibration_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": Path(args.model).name, "num_samples": args.num_samples,
                               "batch_size": args.batch_size, "machine": machine, "cores": os.cpu_count(),
                               "runs": {str(count): results for count, results in runs.items()},
                               "statistics_relative_spread": spread}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
