"""Stage costs: the wall time and peak memory of each step of a conversion, so a user sees where time goes.

    stages = StageCosts()
    with stages.stage("calibration statistics"):
        collect_stats(model, ..., stages.iterate(iter_utterances(source), "audio decoding"))
    print(stages.table())

A stage's seconds exclude the time spent in stages nested inside it (audio decoding, timed in the iterator that
reads the clips, runs inside calibration), so the seconds add up to the whole run. Peak memory is per stage:
on Linux the resident-set high-water mark is reset when a stage starts (/proc/self/clear_refs) and read when it
ends; where that is not possible the figure is the process's peak so far (marked "process peak"). On CUDA the
peak allocated GPU memory of the stage is recorded as well. Nested stages report their memory in the enclosing
stage. Records are plain dicts (JSON), written with the recipe (export) and the stats file.
"""

import os
import resource
import time
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """The resident-set high-water mark (since the last reset on Linux, else of the whole process)."""
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if os.uname().sysname == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class StageCosts:
    """Collects one record per stage: {"stage", "seconds", "peak_rss_gb", "peak_gpu_gb", "calls"}."""

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else None
        self.records: Dict[str, dict] = {}
        self._open: List[List] = []  # [name, start, nested seconds] of the stages now running
        self.started = time.perf_counter()

    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()

    def _add(self, name: str, seconds: float, rss: Optional[int] = None, exact: bool = True,
             gpu: Optional[int] = None) -> None:
        record = self.records.setdefault(name, {"stage": name, "seconds": 0.0, "peak_rss_gb": None,
                                                "peak_gpu_gb": None, "calls": 0})
        record["seconds"] += seconds
        record["calls"] += 1
        if rss is not None:
            record["peak_rss_gb"] = max(record["peak_rss_gb"] or 0.0, rss / 1e9)
            if not exact:
                record["memory"] = "process peak"
        if gpu is not None:
            record["peak_gpu_gb"] = max(record["peak_gpu_gb"] or 0.0, gpu / 1e9)
        if self._open:  # the time of a nested stage is not its parent's
            self._open[-1][2] += seconds

    @contextmanager
    def stage(self, name: str):
        """Time the enclosed block as stage `name` (repeated stages add up)."""
        exact = _reset_peak_rss()
        if self._cuda():
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        frame = [name, time.perf_counter(), 0.0]
        self._open.append(frame)
        try:
            yield
        finally:
            if self._cuda():
                torch.cuda.synchronize(self.device)
            self._open.pop()
            seconds = time.perf_counter() - frame[1] - frame[2]
            gpu = torch.cuda.max_memory_allocated(self.device) if self._cuda() else None
            self._add(name, seconds, _peak_rss_bytes(), exact, gpu)
            if self._open:  # the parent's own time excludes this stage's, nested time included
                self._open[-1][2] += frame[2]

    def iterate(self, items: Iterable, name: str) -> Iterator:
        """Yield from `items`, timing the work of producing each item (e.g. decoding audio) as stage `name`."""
        iterator = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self._add(name, time.perf_counter() - start)
                return
            self._add(name, time.perf_counter() - start)
            yield item

    def as_list(self) -> List[dict]:
        """The records in the order the stages first ran, rounded for JSON."""
        rounded = []
        for record in self.records.values():
            record = dict(record)
            record["seconds"] = round(record["seconds"], 3)
            for key in ("peak_rss_gb", "peak_gpu_gb"):
                if record[key] is not None:
                    record[key] = round(record[key], 3)
            rounded.append(record)
        return rounded

    def table(self) -> str:
        """A plain-text table of the stages with their share of the total time."""
        return format_stage_table(self.as_list(), time.perf_counter() - self.started)


def format_stage_table(records: List[dict], total_seconds: Optional[float] = None) -> str:
    """Plain-text table of stage records (as StageCosts.as_list gives them)."""
    timed = sum(record["seconds"] for record in records)
    total = total_seconds if total_seconds is not None else timed
    gpu = any(record.get("peak_gpu_gb") is not None for record in records)
    lines = [f"{'stage':<24} {'seconds':>9} {'share':>6} {'peak RSS GB':>12}" + (f" {'peak GPU GB':>12}" if gpu else "")]
    for record in records:
        rss = record.get("peak_rss_gb")
        rss_text = "(in parent)" if rss is None else f"{rss:.2f}" + ("*" if record.get("memory") else "")
        line = f"{record['stage']:<24} {record['seconds']:>9.1f} {100 * record['seconds'] / max(total, 1e-9):>5.0f}% {rss_text:>12}"
        if gpu:
            line += f" {record['peak_gpu_gb']:>12.2f}" if record.get("peak_gpu_gb") is not None else f" {'':>12}"
        lines.append(line)
    lines.append(f"{'total':<24} {total:>9.1f}")
    if any(record.get("memory") for record in records):
        lines.append("* process peak so far (the per-stage peak could not be reset here)")
    return "\n".join(lines)
