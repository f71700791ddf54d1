"""One attention entry point with pluggable backends, and the window mask.

Every attention in the denoiser goes through :func:`attend`. Backends:

- ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask;
- ``flex``: FlexAttention with a block mask built from the window's segment structure;
- ``flash``: flash-attn (optional extra, CUDA only), one call per query segment over its key
  prefix, which is what the window mask amounts to;
- ``naive``: explicit softmax(QK^T / sqrt(d)) V, the reference every backend is tested against.

The window mask (DESIGN.md §8) is block-causal over segments ``[reference | sink | motion | current]``:
a token of segment ``s`` sees every valid token of segments ``0..s`` (bidirectionally inside its own
segment). Context therefore never sees the current chunk, and the current chunk sees everything.
Tokens of an absent segment (no sink yet) or a dropped reference are invalid keys.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flex", "flash", "naive")


@dataclass(frozen=True)
class WindowMask:
    """Segment-block-causal mask with key padding.

    Attributes:
        q_segments: ``[N_q]`` long, the segment of each query token (non-decreasing).
        k_segments: ``[N_k]`` long, the segment of each key token (non-decreasing).
        k_valid: ``[B, N_k]`` bool, False for keys that do not exist in this window.
        q_valid: ``[B, N_q]`` bool. An invalid query (a padding token) ignores key validity so that its
            softmax never meets an all-masked row; no valid token ever reads its output.
    """

    q_segments: torch.Tensor
    k_segments: torch.Tensor
    k_valid: torch.Tensor
    q_valid: torch.Tensor

    def dense(self) -> torch.Tensor:
        """``[B, 1, N_q, N_k]`` bool, True where a query may attend to a key."""
        allowed = self.k_segments[None, :] <= self.q_segments[:, None]  # [N_q, N_k]
        readable = self.k_valid[:, None, :] | ~self.q_valid[:, :, None]  # [B, N_q, N_k]
        return (allowed[None] & readable)[:, None]


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V in float64-free plain torch; ``q, k, v`` ``[B, H, N, D]``."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v


def _sdpa(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flex(q, k, v, mask: WindowMask | torch.Tensor | None) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if mask is None:
        return flex_attention(q, k, v)
    if not isinstance(mask, WindowMask):  # a dense mask has no block structure to exploit
        return _sdpa(q, k, v, mask)
    q_seg, k_seg, k_valid, q_valid = mask.q_segments, mask.k_segments, mask.k_valid, mask.q_valid

    def mask_mod(b, h, q_idx, kv_idx):
        return (k_seg[kv_idx] <= q_seg[q_idx]) & (k_valid[b, kv_idx] | ~q_valid[b, q_idx])

    block_mask = create_block_mask(
        mask_mod, B=q.shape[0], H=None, Q_LEN=q.shape[2], KV_LEN=k.shape[2], device=q.device
    )
    return _flex_kernel(q.is_cuda)(q, k, v, block_mask=block_mask)


_COMPILED_FLEX = None


def _flex_kernel(cuda: bool):
    """On CUDA the compiled (fused) kernel; on CPU the eager one (compiling there costs ~20 s and the
    unfused path is what the tests compare)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if not cuda:
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _flash(q, k, v, mask: WindowMask | torch.Tensor | None) -> torch.Tensor:
    from flash_attn import flash_attn_func

    def call(qs, ks, vs):  # flash-attn wants [B, N, H, D]
        out = flash_attn_func(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2))
        return out.transpose(1, 2)

    if mask is None:
        return call(q, k, v)
    # the per-segment split reads the mask's values on the host: inside a compiled step that would break
    # the graph at every layer, so a masked call there takes SDPA with the dense mask
    if (
        torch.compiler.is_compiling()
        or not isinstance(mask, WindowMask)
        or not bool(mask.k_valid.all() and mask.q_valid.all())
    ):
        return _sdpa(q, k, v, mask.dense() if isinstance(mask, WindowMask) else mask)
    outputs = []
    for segment in torch.unique_consecutive(mask.q_segments).tolist():
        rows = (mask.q_segments == segment).nonzero().flatten()
        prefix = int((mask.k_segments <= segment).sum())
        outputs.append(call(q[:, :, rows[0] : rows[-1] + 1], k[:, :, :prefix], v[:, :, :prefix]))
    return torch.cat(outputs, dim=2)


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend '{name}'; use one of {', '.join(BACKENDS)}.")
    if name == "flash" and not flash_available():
        raise ValueError(
            "The flash attention backend needs CUDA and `pip install streamchar[flash]`; use sdpa."
        )
    return name


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: WindowMask | torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Attention of ``q`` ``[B, H, N_q, D]`` over ``k, v`` ``[B, H, N_k, D]``.

    ``mask`` is a :class:`WindowMask`, a boolean ``[B, 1, N_q, N_k]`` (True = attend) or None.
    Every query must have at least one key it may attend to.
    """
    if backend == "flex":
        return _flex(q, k, v, mask)
    if backend == "flash":
        return _flash(q, k, v, mask)
    dense = mask.dense() if isinstance(mask, WindowMask) else mask
    if backend == "naive":
        return naive_attention(q, k, v, dense)
    return _sdpa(q, k, v, dense)
