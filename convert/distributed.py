"""Data parallelism through accelerate: which shard this process reads, sums across processes, failures.

Calibration statistics are plain sums and WER needs only the per-utterance transcripts, so data parallelism is
exact: each process reads every N-th utterance, statistics are all-reduced as float64 sums, transcripts are
gathered, and the main process does the rest. Launch any command unchanged under accelerate, e.g.

    accelerate launch --multi_gpu --num_processes 4 $(which lite-whisper) compress ...
    accelerate launch --multi_gpu --num_processes 2 $(which lite-whisper) compress ...  # CPU-only machine: gloo

Run without a launcher, everything here degrades to a single process with no communication.
"""

from typing import Callable, List, Optional, TypeVar

import torch

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """A process of a data-parallel job failed; raised on every process so that none waits forever."""


class Processes:
    """This process's place in the job (an accelerate `PartialState`) and the collectives we use."""

    @classmethod
    def of(cls, processes: Optional["Processes"]) -> "Processes":
        """`processes` itself, or this process's own job (a single process when run without a launcher)."""
        return processes if processes is not None else cls()

    def __init__(self, cpu: Optional[bool] = None):
        from accelerate import PartialState

        # On a machine without accelerators accelerate only forms a gloo process group when asked for the CPU.
        self.state = PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(wait=exc_type is None)

    def close(self, wait: bool = True) -> None:
        """Wait for every process (unless this one is failing), then tear the process group down.

        A gloo group left to interpreter shutdown can abort the process ("terminate called without an active
        exception") after all the work is done, so every job ends here.
        """
        if self.count > 1:
            if wait:
                self.wait()
            self.state.destroy_process_group()

    @property
    def index(self) -> int:
        return self.state.process_index

    @property
    def count(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def shard(self) -> tuple:
        """(index, count): this process reads utterances index, index + count, index + 2·count, …"""
        return self.index, self.count

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all processes (float64 stays float64)."""
        if self.count == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.collective_device), reduction="sum").to(tensor.device)

    def sum_in_place(self, tensor: torch.Tensor) -> None:
        """`sum`, written back into `tensor` (the all-reduce signature `calibration.reduce_stats` takes)."""
        if self.count > 1:
            tensor.copy_(self.sum(tensor))

    def gather(self, items: List[T]) -> List[T]:
        """The concatenation of every process's list, in process order."""
        if self.count == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def wait(self) -> None:
        self.state.wait_for_everyone()

    @property
    def collective_device(self) -> torch.device:
        """gloo reduces CPU tensors, nccl CUDA tensors."""
        return torch.device("cpu") if self.state.backend == "gloo" else self.device

    def run(self, step: Callable[[], T], what: str) -> T:
        """Run one step on every process; if any process fails, every process raises naming the failed ranks.

        Place this around work that precedes a collective: a process that raised alone would leave the
        others blocked in the next all-reduce.
        """
        error = None
        result = None
        try:
            result = step()
        except Exception as caught:  # reported to all processes below, then re-raised everywhere
            error = caught
        failures = [
            failure for failure in self.gather([(self.index, repr(error))] if error is not None else []) if failure
        ]
        if failures:
            details = "; ".join(f"rank {rank}: {message}" for rank, message in failures)
            if error is not None and self.count == 1:
                raise error
            raise RankFailedError(f"{what} failed on {len(failures)} of {self.count} processes: {details}") from error
        return result
