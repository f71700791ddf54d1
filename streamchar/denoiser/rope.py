"""Rotary position embeddings over (time, height, width), shared by video and audio tokens.

The head dimension is split into a time part and two spatial parts. Video tokens carry their latent
frame, row and column; audio tokens carry their time on the video timeline (fractional when there are
several audio tokens per latent frame) and sit at the centre of the spatial grid, so an audio token
and the video tokens at the same moment share a rotary time. Positions may be fractional.
"""

from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotary dims for (time, height, width): half for time, a quarter each for space, all even."""
    if head_dim % 8:
        raise ValueError(f"The attention head dimension must be a multiple of 8 for 3D RoPE, got {head_dim}.")
    spatial = head_dim // 4
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """Rotation angles ``[N, head_dim / 2]`` for positions ``[N, 3]`` (time, row, column)."""
    parts = []
    for axis, dims in enumerate(rope_split(head_dim)):
        freqs = theta ** (-torch.arange(0, dims, 2, dtype=torch.float64, device=positions.device) / dims)
        parts.append(positions[:, axis, None].double() * freqs[None])
    return torch.cat(parts, dim=-1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., 2i], x[..., 2i + 1])`` of ``x`` ``[B, H, N, D]`` by ``angles`` ``[N, D / 2]``."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    pairs = x.unflatten(-1, (-1, 2))  # [B, H, N, D / 2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)
