"""Mixed precision: which autocast a run uses (``auto`` picks what the hardware runs natively), and the fixed
one every trained instrument (the phoneme reader, the evaluation suite's encoders) runs under."""

from __future__ import annotations

import contextlib

import torch


def resolve_mixed_precision(value: str) -> str:
    """``auto`` -> ``bf16`` where the hardware runs it natively (CUDA with bf16, or a CPU with
    AVX512-BF16/AMX, where oneDNN convolutions run several times faster), else ``no``."""
    value = str(value).lower()
    if value in ("no", "false", "fp32", "off", "none"):  # YAML reads a bare `no` as false
        return "no"
    if value != "auto":
        if value not in ("bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got '{value}'.")
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    cpu = torch.cpu
    native = (
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return "bf16" if native else "no"


def instrument_autocast():
    """The instruments run on the CPU under bf16 autocast, on every machine, so that a checkpoint scores
    the same whether or not a GPU is present."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def instrument_inference():
    with torch.no_grad(), instrument_autocast():
        yield
