"""Data parallelism on accelerate: two CPU processes (gloo) sum float64 tensors exactly, gather in order,
and a failure on one rank stops every rank with a message that names it."""

import subprocess
import sys
import textwrap

import pytest
import torch

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
