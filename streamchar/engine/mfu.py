"""Model-FLOPs utilisation (MFU): the GPUs' dense BF16 peaks, and the share of a peak that work reached.
The work itself is counted in :mod:`streamchar.engine.flops`."""

from __future__ import annotations

import re

# Dense (no 2:4 sparsity) BF16 tensor-core peaks in TFLOP/s, keyed by a name as it appears in
# ``torch.cuda.get_device_name()``. NVIDIA's datasheets print the sparse figure (marked "*With sparsity");
# the dense peak is half of it:
#   H100 SXM 1,979* -> 989, H100 PCIe 1,513* -> 756, H100 NVL 1,671* -> 835 (H100 datasheet, BF16 Tensor Core);
#   H200 and GH200 1,979* -> 989, H200 NVL 1,671* -> 835 (H200 / GH200 datasheets);
#   A100 624* -> 312 (A100 datasheet, BFLOAT16 Tensor Core, SXM and PCIe alike);
#   L40S 733* -> 362 (L40S datasheet, 362.05 dense);
#   RTX 4090: 165.2 dense BF16 with FP32 accumulate (Ada Lovelace architecture whitepaper, appendix table),
#   the accumulation PyTorch's BF16 matmuls use.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100": 989.0,  # SXM5: 'NVIDIA H100 80GB HBM3'
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.0,
    "H200 NVL": 835.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "RTX 4090": 165.0,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense BF16 peak in FLOP/s of the GPU called ``device_name`` (as ``torch.cuda.get_device_name()``
    gives it), or None for a device :data:`PEAK_BF16_TFLOPS` does not list. The longest listed name found
    in ``device_name`` as whole words wins ('H100 PCIe' over 'H100'; 'RTX A1000' is not an 'A100')."""
    best: str | None = None
    for key in PEAK_BF16_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name, re.IGNORECASE):
            if best is None or len(key) > len(best):
                best = key
    return PEAK_BF16_TFLOPS[best] * 1e12 if best is not None else None


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model-FLOPs utilisation: ``flops`` done in ``seconds``, as a fraction of ``peak`` FLOP/s."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}.")
    if peak <= 0:
        raise ValueError(f"peak must be positive FLOP/s, got {peak}.")
    return flops / seconds / peak
