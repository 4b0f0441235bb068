"""Reduced precision where the device computes it natively: which dtype, and the autocast context for it.

The Fisher estimate (fisher.py) and distillation's training steps (recovery.py) run under autocast to it when
`compress` asks, and the Fisher estimate's probe clips are transcribed by a copy of the model cast to it
(sensitivity.py: autocast would cast every weight again at every generated token); calibration sums, spectra,
the per-linear probe and the held-out checks never do (benchmarks/README.md, "What a conversion costs", has the
measurements)."""

import copy
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


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` whose floating-point parameters and buffers are in `dtype`, for inference. Built tensor by
    tensor (no full-precision copy on the way: a bfloat16 copy of large-v3 costs 3 GB, not 6 + 3); tied weights
    stay tied."""
    memo = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in memo:
            cast = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
            memo[id(tensor)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else cast
    return copy.deepcopy(model, memo)
