"""Data parallelism on accelerate: two CPU processes (gloo) sum float64 tensors exactly, gather in order, a
failure on one rank stops every rank with a message that names it, and `lite-whisper compress` / `eval` under
`accelerate launch` give what one process gives."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import speech_set

from lite_whisper_convert.distributed import Processes

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lite_whisper_convert.distributed import Processes, RankFailedError
    with Processes() as processes:
        total = processes.sum(torch.full((3,), 0.1 * (processes.index + 1), dtype=torch.float64))
        names = processes.gather([f"utt{i}" for i in range(processes.index, 5, processes.count)])
        def step():
            if processes.index == int(sys.argv[1]):
                raise ValueError("bad clip")
            return "ok"
        try:
            outcome = processes.run(step, "calibration")
        except RankFailedError as error:
            outcome = str(error)
    with open(f"{sys.argv[2]}/rank{processes.index}.txt", "w") as result:
        result.write(f"{total.dtype} {total.tolist()} {names} {outcome}")
    """
)


def launch(tmp_path, failing_rank):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
               str(failing_rank), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    # Each rank writes its own file: two processes printing to one pipe may interleave their lines.
    return [path.read_text() for path in sorted(tmp_path.glob("rank*.txt"))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the CPU (gloo) process group")
def test_two_cpu_processes_sum_gather_and_share_failures(tmp_path):
    lines = launch(tmp_path, failing_rank=1)
    assert len(lines) == 2
    for line in lines:
        assert "torch.float64 [0.30000000000000004, 0.30000000000000004, 0.30000000000000004]" in line
        assert "['utt0', 'utt2', 'utt4', 'utt1', 'utt3']" in line
        assert "calibration failed on 1 of 2 processes: rank 1: ValueError('bad clip')" in line


def test_a_single_process_needs_no_launcher():
    processes = Processes()
    assert processes.shard == (0, 1) and processes.is_main
    tensor = torch.arange(3, dtype=torch.float64)
    assert processes.sum(tensor) is tensor
    assert processes.gather([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="bad"):
        processes.run(lambda: (_ for _ in ()).throw(ValueError("bad")), "step")


def lite_whisper(*arguments, processes=1):
    """Run `lite-whisper ARGUMENTS` in one process, or under `accelerate launch` with `processes` CPU processes
    (gloo). One torch thread per process either way (accelerate's choice under a launcher): float rounding then
    depends on nothing but the data each matmul sees."""
    command = [sys.executable, "-m", "lite_whisper_convert.cli"]
    if processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                   "lite_whisper_convert.cli"]
    result = subprocess.run(command + list(map(str, arguments)), capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the CPU (gloo) process group")
def test_two_processes_compress_and_evaluate_exactly_as_one(tiny_en_dir, tmp_path):
    """Real tiny.en, sensitivity policy, least-squares recovery: calibration, probe and refit split across two
    processes give the statistics, ranks and weights of one process; eval gives the same WER and transcripts."""
    from safetensors.torch import load_file

    from lite_whisper_convert.calibration import load_stats

    calibration = speech_set("librispeech-train-clean-100-calib")
    evaluation = speech_set("librispeech-test-clean-mini")
    for processes, name in ((1, "one"), (2, "two")):
        # Batches of 2 on one process and on each of two: every matmul has the same shape either way, so greedy
        # decoding (the probe's stock transcripts, eval) cannot flip a near-tie token through float rounding.
        launched = lite_whisper(
            "compress", tiny_en_dir, "--out", tmp_path / name, "--calibration", calibration, "--stats",
            tmp_path / f"{name}.stats", "--preset", "fast", "--num-samples", 8, "--batch-size", 2, "--probe-clips", 4,
            "--recovery", "refit", "--no-progress", processes=processes,
        )
        assert launched.stdout.count("wrote ") == 1  # the main process alone reports (and writes)
        assert "smoke test on" in launched.stdout
    for processes, name in ((1, "one"), (2, "two")):  # the same model, evaluated by one and by two processes
        lite_whisper("eval", tmp_path / "two", "--data", evaluation, "--batch-size", 2, "--transcripts",
                     "--json", tmp_path / f"eval-{name}.json", "--no-progress", processes=processes)

    stats_one, stats_two = load_stats(tmp_path / "one.stats"), load_stats(tmp_path / "two.stats")
    assert stats_two.utterances == stats_one.utterances == 8
    for key, sums in stats_one.slots.items():
        assert stats_two.slots[key].count == sums.count
        torch.testing.assert_close(stats_two.slots[key].total, sums.total, rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(stats_two.slots[key].outer, sums.outer, rtol=1e-10, atol=1e-8)
    assert stats_two.sensitivity_probe == stats_one.sensitivity_probe
    for key, value in stats_one.sensitivity.items():
        assert stats_two.sensitivity[key] == pytest.approx(value, rel=1e-4, abs=1e-9)

    config_one, config_two = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("one", "two"))
    assert config_two["low_rank_config"] == config_one["low_rank_config"]
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    assert weights_two.keys() == weights_one.keys()
    for name, tensor in weights_one.items():  # float16 on disk: equal up to one rounding step
        torch.testing.assert_close(weights_two[name].float(), tensor.float(), rtol=2e-3, atol=2e-4, msg=name)

    single, two = (json.loads((tmp_path / f"eval-{name}.json").read_text()) for name in ("one", "two"))
    (name,) = single["datasets"]
    assert two["processes"] == 2 and single["processes"] == 1
    assert two["datasets"][name]["transcripts"] == single["datasets"][name]["transcripts"]
    assert two["datasets"][name]["wer"] == single["datasets"][name]["wer"]
    assert two["datasets"][name]["num_utterances"] == single["datasets"][name]["num_utterances"] == 4
