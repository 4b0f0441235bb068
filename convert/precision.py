"""Reduced precision where the device computes it natively: which dtype, and the autocast context for it.

The Fisher estimate (fisher.py), the transcription of its probe clips (sensitivity.py) and distillation's training
steps (recovery.py) run under it when `compress` asks; calibration sums, spectra, the per-linear probe and the
held-out checks never do (benchmarks/README.md, "What a conversion costs", has the measurements)."""

from contextlib import nullcontext
from typing import Optional

import torch


def autocast_dtype_for(device, dtype: torch.dtype) -> Optional[torch.dtype]:
    """bfloat16 for a float32 model on a device with native bfloat16 matrix products (CUDA with bfloat16, a CPU
    with AVX-512 BF16 or AMX), else None: run in the model's dtype (a float16 or bfloat16 model already computes in
    reduced precision)."""
    device = torch.device(device)
    if dtype != torch.float32:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return torch.bfloat16 if any(check() for check in native) else None
    return None


def autocast_to(device, dtype: Optional[torch.dtype]):
    """A context that autocasts to `dtype` on `device`'s type; with None, one that changes nothing."""
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()
