"""Side-by-side timing shared by the benchmark scripts: interleaved repeats, medians, CUDA-synchronised."""

import statistics
import time

import torch


def median_times(functions, repeats: int, device: torch.device) -> list:
    """Median wall time of each function over `repeats` interleaved rounds, after one warm-up call each.

    Interleaving (f1, f2, ..., f1, f2, ...) exposes every function to the same background load, so their
    ratios stay fair on a noisy machine; the warm-up absorbs allocation and compilation.
    """

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = [[] for _ in functions]
    for function in functions:
        function()
    for _ in range(repeats):
        for index, function in enumerate(functions):
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(series) for series in times]
