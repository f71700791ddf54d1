"""The joint audio-video diffusion transformer (DESIGN.md §7).

One stream of tokens: the window's video latents cut into ``p x p`` patches and its audio latents,
one token per audio latent frame. Every token carries a rotary position on the shared timeline
(:mod:`streamchar.memory.window`), a segment-and-modality embedding and its own timestep (context
tokens are clean, timestep 0). Blocks apply adaLN-zero modulation from the token's timestep, joint
self-attention under the window mask, local-window cross-attention from current-chunk tokens to the
frame-aligned audio conditions, and an MLP. The output is the flow-matching velocity of the current
chunk's video and audio.

Two ways to run the same weights:

- ``forward(video, audio, timesteps, conditions, context)`` with a :class:`WindowContext`: the whole
  window in one pass (training);
- inside ``with model.streaming():`` after ``set_reference`` / ``set_sink`` / ``set_motion``, with
  ``context=None``: context K/V come from the cache and only the current chunk is computed. Because
  context tokens never attend to the current chunk, both give the same velocity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from streamchar.denoiser.attention import WindowMask, attend, check_backend
from streamchar.denoiser.rope import apply_rope, rope_angles
from streamchar.memory.cache import ContextCache, StaticContextCache, StreamingModule
from streamchar.memory.window import CURRENT, MOTION, REFERENCE, SINK, WindowLayout
from streamchar.timeline import Timeline

VIDEO, AUDIO = 0, 1
NULL_SPEAKING = 2  # speaking is 0 / 1; 2 is the dropped condition


VIDEO_PREDICTIONS = ("velocity", "x0")
X0_MIN_T = 1e-3  # an x0 head's velocity divides by t: never by less than this


# -- values that travel into the model ------------------------------------------------------------
@dataclass(frozen=True)
class Conditions:
    """Frame-aligned conditions of the current chunk.

    Attributes:
        units: ``[B, T_a]`` long, one unit (phoneme x F0 bucket) per audio token; ``num_units`` = dropped.
        speaking: ``[B, T_a]`` long, 1 while the character speaks; 2 = dropped.
        prior_audio: ``[B, T_a, D_a]`` the priors' audio means (residual formulation; None for plain).
        prior_video: ``[B, C, L, h, w]`` the priors' video means (residual formulation; None for plain).
    """

    units: torch.Tensor
    speaking: torch.Tensor
    prior_audio: torch.Tensor | None = None
    prior_video: torch.Tensor | None = None

    @classmethod
    def of(cls, batch: dict) -> Conditions:
        """The conditions of a window batch (``units``, ``speaking``, and ``prior_audio`` / ``prior_video``
        when it holds them)."""
        return cls(batch["units"], batch["speaking"], batch.get("prior_audio"), batch.get("prior_video"))

    def dropped(self, drop: torch.Tensor, null_unit: int) -> Conditions:
        """These conditions with the items where ``drop`` ``[B]`` is True replaced by the null condition. The
        prior means stay: they are where the residual is measured from; the model stops reading the audio
        means as a condition where the units are null."""
        d = drop[:, None]
        return replace(
            self,
            units=torch.where(d, torch.full_like(self.units, null_unit), self.units),
            speaking=torch.where(d, torch.full_like(self.speaking, NULL_SPEAKING), self.speaking),
        )

    def repeated(self, n: int) -> Conditions:
        """Every tensor repeated ``n`` times along the batch (one copy per guidance branch, branch-major)."""

        def rep(x):
            return None if x is None else x.repeat(n, *([1] * (x.dim() - 1)))

        return Conditions(rep(self.units), rep(self.speaking), rep(self.prior_audio), rep(self.prior_video))

    def head(self, n: int) -> Conditions:
        """The first ``n`` items."""
        return Conditions(*(None if x is None else x[:n] for x in
                            (self.units, self.speaking, self.prior_audio, self.prior_video)))  # fmt: skip

    def to(self, device) -> Conditions:
        def move(x):
            return None if x is None else x.to(device)

        return Conditions(
            move(self.units), move(self.speaking), move(self.prior_audio), move(self.prior_video)
        )


@dataclass(frozen=True)
class WindowContext:
    """The clean context of a window (normalised latents).

    Attributes:
        ref_video: ``[B, C, 1, h, w]`` the reference image.
        ref_voice: ``[B, R, D_a]`` reference voice tokens, ``ref_voice_valid`` ``[B, R]``.
        ref_image_valid: ``[B]`` False where the reference image is dropped (guidance).
        sink_video: ``[B, C, S, h, w]``, ``sink_audio`` ``[B, S_a, D_a]``, ``has_sink`` ``[B]``.
        motion_video: ``[B, C, M, h, w]``, ``motion_audio`` ``[B, M_a, D_a]``, ``has_motion`` ``[B]``.
    """

    ref_video: torch.Tensor
    ref_voice: torch.Tensor
    ref_voice_valid: torch.Tensor
    ref_image_valid: torch.Tensor
    sink_video: torch.Tensor
    sink_audio: torch.Tensor
    has_sink: torch.Tensor
    motion_video: torch.Tensor
    motion_audio: torch.Tensor
    has_motion: torch.Tensor

    def with_dropped_references(self, drop_image: torch.Tensor, drop_voice: torch.Tensor) -> WindowContext:
        return replace(
            self,
            ref_image_valid=self.ref_image_valid & ~drop_image,
            ref_voice_valid=self.ref_voice_valid & ~drop_voice[:, None],
        )


# -- building blocks ------------------------------------------------------------------------------
def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features ``[..., dim]`` of ``1000 t`` for ``t`` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, n, W] -> [B, H, n, D]


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)  # [B, H, n, D] -> [B, n, W]


@dataclass(frozen=True)
class CrossInputs:
    """Condition tokens for the local cross-attention of current-chunk tokens."""

    tokens: torch.Tensor  # [B, T_a, W]
    angles: torch.Tensor  # [T_a, D / 2]
    query_angles: torch.Tensor  # [N_cur, D / 2]
    mask: torch.Tensor  # [1, 1, N_cur, T_a] bool
    start: int  # index of the first current-chunk token in the block's input


class JointBlock(nn.Module):
    """adaLN-zero transformer block: joint self-attention, local cross-attention, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, backend: str) -> None:
        super().__init__()
        self.heads, self.backend = heads, backend
        head_dim = width // heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)
        self.cross_norm = nn.LayerNorm(width, eps=1e-6)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.modulation = nn.Parameter(torch.zeros(6, width))  # added to the shared timestep modulation

    def forward(
        self,
        x: torch.Tensor,  # [B, n, W]
        modulation: torch.Tensor,  # [B, n, 6W]
        angles: torch.Tensor,  # [n, D / 2]
        mask: WindowMask | torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross: CrossInputs | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        shift1, scale1, gate1, shift2, scale2, gate2 = (modulation + self.modulation.flatten()).chunk(
            6, dim=-1
        )
        # 1. joint self-attention over the window (cached context K/V prepended when given)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = (_heads(t, self.heads) for t in self.qkv(h).chunk(3, dim=-1))
        q, k = apply_rope(self.q_norm(q), angles), apply_rope(self.k_norm(k), angles)
        own = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + gate1 * self.proj(_merge(attend(q, k, v, mask, self.backend)))
        # 2. current-chunk tokens read the audio conditions near their own time
        if cross is not None:
            current = x[:, cross.start :]
            cq = apply_rope(_heads(self.cross_q(self.cross_norm(current)), self.heads), cross.query_angles)
            ck, cv = (_heads(t, self.heads) for t in self.cross_kv(cross.tokens).chunk(2, dim=-1))
            read = _merge(attend(cq, apply_rope(ck, cross.angles), cv, cross.mask, "sdpa"))
            x = torch.cat([x[:, : cross.start], current + self.cross_out(read)], dim=1)
        # 3. MLP
        x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        return x, own


@dataclass
class _Tokens:
    """Tokens of some segments of a window, before the blocks."""

    x: torch.Tensor  # [B, n, W]
    positions: torch.Tensor  # [n, 3]
    timestep_index: torch.Tensor  # [n] long: 0 context (t = 0), 1 current video, 2 current audio
    segments: torch.Tensor  # [n] long
    valid: torch.Tensor  # [B, n] bool
    segment: int | None = None  # the one segment these tokens belong to (None when mixed)
    angles: torch.Tensor | None = None  # [n, D / 2] rotary angles, when computed ahead (the compiled step)


def _cat_tokens(parts: list[_Tokens]) -> _Tokens:
    return _Tokens(
        x=torch.cat([p.x for p in parts], dim=1),
        positions=torch.cat([p.positions for p in parts]),
        timestep_index=torch.cat([p.timestep_index for p in parts]),
        segments=torch.cat([p.segments for p in parts]),
        valid=torch.cat([p.valid for p in parts], dim=1),
    )


@dataclass(frozen=True)
class ChunkGeometry:
    """Everything about the current chunk's tokens that depends only on its shape: computed once per
    (frames, audio tokens, device) and kept on the device, so a compiled step creates no tensor on the
    host (a CUDA graph cannot hold host work).

    Attributes:
        positions: ``[n, 3]`` window positions of the chunk's tokens (video, then audio).
        angles: ``[n, D / 2]`` rotary angles of the chunk's tokens (video, then audio).
        timestep_index: ``[n]`` long, 1 for video tokens and 2 for audio tokens.
        segments: ``[n]`` long, all ``CURRENT``.
        cross_angles: ``[T_a, D / 2]`` of the condition tokens; ``query_angles`` ``[n, D / 2]``.
        cross_mask: ``[1, 1, n, T_a]`` bool, the local window of each token's cross-attention.
        additive: ``[n, T_a]`` weights of the additive condition embedding.
    """

    positions: torch.Tensor
    angles: torch.Tensor
    timestep_index: torch.Tensor
    segments: torch.Tensor
    cross_angles: torch.Tensor
    query_angles: torch.Tensor
    cross_mask: torch.Tensor
    additive: torch.Tensor

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


# -- the model --------------------------------------------------------------------------------------
class JointDiT(StreamingModule):
    """Single-stream audio-video DiT over one window; see the module docstring."""

    def __init__(
        self,
        *,
        timeline: Timeline,
        latent_channels: int,
        latent_size: int,
        audio_dim: int,
        num_units: int,
        width: int = 256,
        depth: int = 8,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        cond_window: float = 1.0,
        rope_theta: float = 10_000.0,
        qk_norm: bool = True,
        attention: str = "sdpa",
        gradient_checkpointing: bool = False,
        residual_scales: tuple[float, float] | None = None,
        sample_start: float = 1.0,
        sample_start_video: float | None = None,
        video_prediction: str = "velocity",
    ) -> None:
        super().__init__()
        if latent_size % patch_size:
            raise ValueError(
                f"The latent size {latent_size} is not a multiple of the patch size {patch_size}."
            )
        if width % heads:
            raise ValueError(f"denoiser.width ({width}) must be a multiple of denoiser.heads ({heads}).")
        self.timeline, self.latent_channels, self.latent_size = timeline, latent_channels, latent_size
        self.audio_dim, self.num_units, self.patch_size = audio_dim, num_units, patch_size
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.cond_window, self.rope_theta = cond_window, rope_theta
        self.gradient_checkpointing = gradient_checkpointing
        # the residual formulation's noise scales (video, audio): x0 = mu + scale * z; None: plain (from noise)
        self.residual_scales = tuple(residual_scales) if residual_scales is not None else None
        self.residual = residual_scales is not None
        # where its samplers start (1: noise; < 1: shallow, from noised prior means); not used by forward
        if not 0.0 < sample_start <= 1.0:
            raise ValueError(f"denoiser.sample_start must be in (0, 1], got {sample_start}.")
        self.sample_start = float(sample_start)
        if sample_start_video is not None and not 0.0 < sample_start_video <= 1.0:
            raise ValueError(
                f"denoiser.sample_start_video must be in (0, 1] or null, got {sample_start_video}."
            )
        self.video_start = None if sample_start_video is None else float(sample_start_video)
        if video_prediction not in VIDEO_PREDICTIONS:
            raise ValueError(f"denoiser.video_prediction must be velocity or x0, got '{video_prediction}'.")
        self.video_prediction = video_prediction
        grid = latent_size // patch_size
        self.layout = WindowLayout(timeline, (grid, grid))
        self._geometry: dict[tuple, ChunkGeometry] = {}
        self._compiled_step, self._compiled_mode = None, None
        check_backend(attention)

        self.video_in = nn.Linear(latent_channels * patch_size**2, width)
        self.audio_in = nn.Linear(audio_dim, width)
        self.segment_embedding = nn.Embedding(2 * len((REFERENCE, SINK, MOTION, CURRENT)), width)
        self.unit_embedding = nn.Embedding(num_units + 1, width)  # the last unit is the dropped condition
        self.speaking_embedding = nn.Embedding(3, width)
        self.condition_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.timestep_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.timestep_modulation = nn.Linear(width, 6 * width)  # shared by every block (adaLN-single)
        self.blocks = nn.ModuleList(
            JointBlock(width, heads, mlp_ratio, qk_norm, attention) for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.video_out = nn.Linear(width, latent_channels * patch_size**2)
        self.audio_out = nn.Linear(width, audio_dim)
        if self.residual:  # the current chunk is a state around the prior means, which are also a condition
            self.residual_video_in = nn.Linear(latent_channels * patch_size**2, width)
            self.residual_audio_in = nn.Linear(audio_dim, width)
            self.prior_condition = nn.Linear(audio_dim, width)
        self._init_weights()

    @property
    def sample_start_video(self) -> float:
        """Where the video's sampling starts: its own start (``denoiser.sample_start_video``) or ``sample_start``."""
        return self.sample_start if self.video_start is None else self.video_start

    @sample_start_video.setter
    def sample_start_video(self, start: float | None) -> None:
        self.video_start = None if start is None else float(start)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for module in (self.timestep_modulation, self.final_modulation, self.video_out, self.audio_out):
            nn.init.zeros_(module.weight)  # adaLN-zero: every block starts as the identity
        for block in self.blocks:
            nn.init.zeros_(block.cross_out.weight)
        if self.residual:
            nn.init.zeros_(self.prior_condition.weight)  # the units alone at first
        nn.init.normal_(self.segment_embedding.weight, std=0.02)
        nn.init.normal_(self.unit_embedding.weight, std=0.02)
        nn.init.normal_(self.speaking_embedding.weight, std=0.02)

    @property
    def attention_backend(self) -> str:
        return self.blocks[0].backend

    def set_attention_backend(self, name: str) -> None:
        check_backend(name)
        for block in self.blocks:
            block.backend = name

    # -- patches -------------------------------------------------------------------------------
    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, h, w]`` -> ``[B, T * rows * cols, C * p * p]`` (frame-major)."""
        b, c, t, h, w = video.shape
        p = self.patch_size
        x = video.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(b, t * (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        b, p, c = tokens.shape[0], self.patch_size, self.latent_channels
        rows, cols = self.layout.grid
        x = tokens.reshape(b, frames, rows, cols, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(b, c, frames, rows * p, cols * p)

    # -- tokens ----------------------------------------------------------------------------------
    def _segment_tokens(
        self,
        segment: int,
        video: torch.Tensor,
        audio: torch.Tensor,
        video_valid: torch.Tensor,  # [B]
        audio_valid: torch.Tensor,  # [B, n_a]
    ) -> _Tokens:
        frames, n_a = video.shape[2], audio.shape[1]
        xv = self.video_in(self.patchify(video)) + self.segment_embedding.weight[2 * segment + VIDEO]
        xa = self.audio_in(audio) + self.segment_embedding.weight[2 * segment + AUDIO]
        n_v = xv.shape[1]
        current = segment == CURRENT
        return _Tokens(
            x=torch.cat([xv, xa], dim=1),
            positions=torch.cat(
                [self.layout.video_positions(segment, frames), self.layout.audio_positions(segment, n_a)]
            ).to(video.device),
            timestep_index=torch.cat(
                [torch.full((n_v,), 1 if current else 0), torch.full((n_a,), 2 if current else 0)]
            ).to(video.device),
            segments=torch.full((n_v + n_a,), segment, dtype=torch.long, device=video.device),
            valid=torch.cat([video_valid[:, None].expand(-1, n_v), audio_valid], dim=1),
            segment=segment,
        )

    def _context_tokens(self, context: WindowContext, segment: int) -> _Tokens:
        b = context.ref_video.shape[0]
        if segment == REFERENCE:
            return self._segment_tokens(
                REFERENCE,
                context.ref_video,
                context.ref_voice,
                context.ref_image_valid,
                context.ref_voice_valid,
            )
        if segment == SINK:
            video, audio, present = context.sink_video, context.sink_audio, context.has_sink
        else:
            video, audio, present = context.motion_video, context.motion_audio, context.has_motion
        present = present.to(torch.bool).reshape(b)
        return self._segment_tokens(
            segment, video, audio, present, present[:, None].expand(-1, audio.shape[1])
        )

    def chunk_geometry(self, frames: int, n_audio: int, device: torch.device) -> ChunkGeometry:
        """The current chunk's shape-only tensors (memoised; see :class:`ChunkGeometry`)."""
        key = (frames, n_audio, str(device))
        if key not in self._geometry:
            n_video = frames * self.layout.tokens_per_frame
            positions = self.layout.video_positions(CURRENT, frames)
            audio_positions = self.layout.audio_positions(CURRENT, n_audio)
            t_cond = audio_positions[:, 0]
            t_query = torch.cat([positions[:, 0], t_cond])
            # additive: a video token gets the mean of the conditions inside its latent frame, an audio token
            # its own
            same_frame = (t_query[:, None].floor() == t_cond[None, :].floor()).float()
            same_frame[n_video:] = torch.eye(n_audio)
            both = torch.cat([positions, audio_positions])
            angles = rope_angles(both, self.head_dim, self.rope_theta)
            self._geometry[key] = ChunkGeometry(
                positions=both.to(device),
                angles=angles.to(device),
                timestep_index=torch.cat([torch.full((n_video,), 1), torch.full((n_audio,), 2)]).to(device),
                segments=torch.full((n_video + n_audio,), CURRENT, dtype=torch.long, device=device),
                cross_angles=rope_angles(audio_positions, self.head_dim, self.rope_theta).to(device),
                query_angles=angles.to(device),
                cross_mask=((t_query[:, None] - t_cond[None, :]).abs() <= self.cond_window + 1e-6)[None, None].to(
                    device
                ),
                additive=(same_frame / same_frame.sum(dim=1, keepdim=True).clamp_min(1)).to(device),
            )  # fmt: skip
            if torch.device(device).type == "cuda":  # fixed addresses: a CUDA graph reads them in place
                for tensor in self._geometry[key].as_tuple():
                    torch._dynamo.mark_static_address(tensor, guard=False)
        return self._geometry[key]

    def _conditioning(
        self, conditions: Conditions, geometry: ChunkGeometry
    ) -> tuple[torch.Tensor, CrossInputs]:
        """Additive condition embedding ``[B, n_video + n_audio, W]`` for the current chunk's tokens, and
        the inputs of the local cross-attention (``start`` is filled in by the caller)."""
        cond = self.unit_embedding(conditions.units) + self.speaking_embedding(conditions.speaking)
        if (
            self.residual and conditions.prior_audio is not None
        ):  # the audio means, unless the units are dropped
            kept = (conditions.units != self.num_units).to(cond.dtype)[..., None]
            cond = cond + kept * self.prior_condition(conditions.prior_audio.to(cond.dtype))
        cond = self.condition_mlp(cond)  # [B, T_a, W]
        additive = torch.einsum("qa,baw->bqw", geometry.additive.to(cond), cond)
        cross = CrossInputs(tokens=cond, angles=geometry.cross_angles, query_angles=geometry.query_angles,
                            mask=geometry.cross_mask, start=0)  # fmt: skip
        return additive, cross

    def _timestep_tables(
        self, t_video: torch.Tensor, t_audio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block and final modulation for the three timesteps a window holds: ``[B, 3, 6W]``, ``[B, 3, 2W]``."""
        t = torch.stack([torch.zeros_like(t_video), t_video, t_audio], dim=1).float()  # [B, 3]
        emb = F.silu(self.timestep_mlp(timestep_features(t).to(self.video_in.weight.dtype)))
        return self.timestep_modulation(emb), self.final_modulation(emb)

    def _run_blocks(
        self,
        tokens: _Tokens,
        modulation: torch.Tensor,
        mask: WindowMask | torch.Tensor | None,
        pasts: list[tuple[torch.Tensor, torch.Tensor] | None],
        cross: CrossInputs | None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        angles = tokens.angles
        if angles is None:
            angles = rope_angles(tokens.positions, self.head_dim, self.rope_theta).to(tokens.x.device)
        mod = modulation[:, tokens.timestep_index]  # [B, n, 6W]
        x, own_kv = tokens.x, []
        for block, past in zip(self.blocks, pasts, strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(block, x, mod, angles, mask, past, cross, use_reentrant=False)
            else:
                x, kv = block(x, mod, angles, mask, past, cross)
            own_kv.append(kv)
        return x, own_kv

    # -- the two ways in -------------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        timesteps: tuple[torch.Tensor, torch.Tensor],
        conditions: Conditions,
        context: WindowContext | None = None,
        audio_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity of the current chunk.

        Args:
            video: ``[B, C, L, h, w]`` noisy current-chunk video latents.
            audio: ``[B, L_a, D_a]`` noisy (or, audio-driven, clean) current-chunk audio latents.
            timesteps: ``(t_video [B], t_audio [B])`` in [0, 1]; ``t_audio = 0`` gives the audio clean.
            conditions: frame-aligned audio conditions of the current chunk.
            context: the window's clean context; None inside ``streaming()`` (cached K/V).
            audio_valid: ``[B, L_a]`` False for audio tokens past the end of a short first chunk.

        Returns:
            ``(v_video [B, C, L, h, w], v_audio [B, L_a, D_a])``.
        """
        if context is None:  # 3'. the current chunk over cached context K/V (the streaming step)
            out = self._streaming_step(video, audio, timesteps, conditions, audio_valid)
        else:
            frames, n_audio = video.shape[2], audio.shape[1]
            current, modulation, final_modulation, cross = self._current_tokens(
                video, audio, timesteps, conditions, audio_valid
            )
            # 3. the blocks over the whole window under its mask
            hidden = self._window_hidden(current, modulation, cross, context)[:, -current.x.shape[1] :]
            out = self._velocity(hidden, current, final_modulation, frames, n_audio)
        if self.video_prediction == "x0":  # the head's clean state read as the velocity that reaches it
            t = timesteps[0].clamp_min(X0_MIN_T).to(out[0].dtype).view(-1, 1, 1, 1, 1)
            return (video - out[0]) / t, out[1]
        return out

    def _velocity(self, hidden, current: _Tokens, final_modulation, frames: int, n_audio: int):
        """4. velocity heads on the current chunk only."""
        n_video = current.x.shape[1] - n_audio
        shift, scale = final_modulation[:, current.timestep_index].chunk(2, dim=-1)
        hidden = self.final_norm(hidden) * (1 + scale) + shift
        v_video = self.unpatchify(self.video_out(hidden[:, :n_video]), frames)
        v_audio = self.audio_out(hidden[:, n_video:])
        return v_video, v_audio

    # -- the streaming step (compilable) ------------------------------------------------------------
    def _streaming_step(self, video, audio, timesteps, conditions: Conditions, audio_valid):
        """Gather the step's inputs as plain tensors (context K/V from the cache, the chunk's geometry), then
        run :meth:`cached_step`, compiled when :meth:`compile_step` was called."""
        cache = self._require_stream()
        prefixes = [cache.prefix(layer, CURRENT) for layer in range(len(self.blocks))]
        if prefixes[0] is None:
            keys = values = prefix_valid = prefix_ids = None
        else:
            keys, values = [p[0] for p in prefixes], [p[1] for p in prefixes]
            prefix_valid, prefix_ids = prefixes[0][2], prefixes[0][3]
        # with every context token and every chunk token valid the mask allows everything: drop it, so
        # attention may take its fastest (mask-free) kernel
        maskless = keys is not None and audio_valid is None and cache.all_valid(CURRENT)
        geometry = self.chunk_geometry(video.shape[2], audio.shape[1], video.device).as_tuple()
        step = self.cached_step
        if self._compiled_step is not None:
            step = self._compiled_step
            if self._compiled_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs were consumed
        return step(video, audio, timesteps[0], timesteps[1], conditions.units, conditions.speaking, audio_valid,
                    keys, values, prefix_valid, prefix_ids, geometry, maskless,
                    prior_audio=conditions.prior_audio, prior_video=conditions.prior_video)  # fmt: skip

    def cached_step(self, video, audio, t_video, t_audio, units, speaking, audio_valid, keys, values,
                    prefix_valid, prefix_ids, geometry: tuple, maskless: bool, prior_audio=None,
                    prior_video=None):  # fmt: skip
        """Velocity of the current chunk over given context K/V: tensors in, tensors out, nothing created on
        the host (so ``torch.compile`` and CUDA graphs can take it whole).

        Args:
            keys, values: per layer ``[B, H, N_ctx, D]`` (None: no context), ``prefix_valid`` ``[B, N_ctx]``
                and ``prefix_ids`` ``[N_ctx]`` their validity and segments.
            geometry: :meth:`ChunkGeometry.as_tuple` of the chunk's shape.
            maskless: every key is visible to every query (no mask at all).
        """
        geo = ChunkGeometry(*geometry)
        current, modulation, final_modulation, cross = self._current_tokens(
            video,
            audio,
            (t_video, t_audio),
            Conditions(units, speaking, prior_audio, prior_video),
            audio_valid,
            geo,
        )
        if keys is None:
            mask = WindowMask(current.segments, current.segments, current.valid, current.valid)
            pasts = [None] * len(self.blocks)
        else:
            mask = None
            if not maskless:
                mask = WindowMask(current.segments, torch.cat([prefix_ids, current.segments]),
                                  torch.cat([prefix_valid, current.valid], dim=1), current.valid)  # fmt: skip
            pasts = list(zip(keys, values, strict=True))
        hidden, _ = self._run_blocks(current, modulation, mask, pasts, cross)
        return self._velocity(hidden, current, final_modulation, video.shape[2], audio.shape[1])

    def compile_step(self, mode: str | None = "default") -> None:
        """``torch.compile`` the streaming step (None: back to eager). ``mode="reduce-overhead"`` also
        replays it as a CUDA graph; use a :class:`StaticContextCache` then: its buffers (and the chunk
        geometry) are marked as static addresses, so the graph reads the context K/V in place instead of
        copying them in at every replay. A graph is recorded per cache, so reuse caches across sessions
        (``Engine`` keeps a pool)."""
        if mode is None:
            self._compiled_step, self._compiled_mode = None, None
            return
        self._compiled_step = torch.compile(self.cached_step, mode=mode, dynamic=False)
        self._compiled_mode = mode

    def static_cache(self) -> StaticContextCache:
        """A fixed-layout context cache for this model's window (see :class:`StaticContextCache`)."""
        tl, per_frame = self.timeline, self.layout.tokens_per_frame
        sizes = (per_frame + tl.reference_voice_tokens, tl.sink_latent_frames * per_frame + tl.sink_audio_tokens,
                 tl.motion_latent_frames * per_frame + tl.motion_audio_tokens)  # fmt: skip
        return StaticContextCache(sizes)

    def predict_x0(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        timesteps: tuple[torch.Tensor, torch.Tensor],
        conditions: Conditions,
        context: WindowContext | None = None,
        audio_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean-latent estimates ``x_0 = x_t - t v`` of the current chunk (same arguments as ``forward``)."""
        v_video, v_audio = self(video, audio, timesteps, conditions, context, audio_valid)
        t_video, t_audio = timesteps
        return video - t_video.view(-1, 1, 1, 1, 1) * v_video, audio - t_audio.view(-1, 1, 1) * v_audio

    def _current_tokens(
        self, video, audio, timesteps, conditions: Conditions, audio_valid: torch.Tensor | None,
        geometry: ChunkGeometry | None = None,
    ) -> tuple[_Tokens, torch.Tensor, torch.Tensor, CrossInputs]:  # fmt: skip
        b, frames, n_audio = video.shape[0], video.shape[2], audio.shape[1]
        if geometry is None:
            geometry = self.chunk_geometry(frames, n_audio, video.device)
        if audio_valid is None:
            audio_valid = torch.ones(b, n_audio, dtype=torch.bool, device=video.device)
        # 1. timestep tables: one row per timestep value, gathered per token later
        modulation, final_modulation = self._timestep_tables(*timesteps)
        # 2. current-chunk tokens with their additive condition embedding; in the residual formulation the
        # chunk is its prior means (embedded as context latents are) plus the state around them
        if self.residual:
            if conditions.prior_video is None or conditions.prior_audio is None:
                raise ValueError(
                    "This denoiser refines prior means: give Conditions with prior_video and prior_audio."
                )
            xv = self.video_in(self.patchify(conditions.prior_video.to(video.dtype)))
            xv = xv + self.residual_video_in(self.patchify(video))
            xa = self.audio_in(conditions.prior_audio.to(audio.dtype)) + self.residual_audio_in(audio)
        else:
            xv, xa = self.video_in(self.patchify(video)), self.audio_in(audio)
        xv = xv + self.segment_embedding.weight[2 * CURRENT + VIDEO]
        xa = xa + self.segment_embedding.weight[2 * CURRENT + AUDIO]
        additive, cross = self._conditioning(conditions, geometry)
        n_video = xv.shape[1]
        current = _Tokens(
            x=torch.cat([xv, xa], dim=1) + additive, positions=geometry.positions,
            timestep_index=geometry.timestep_index,
            segments=geometry.segments, segment=CURRENT, angles=geometry.angles,
            valid=torch.cat([torch.ones(b, n_video, dtype=torch.bool, device=video.device), audio_valid], dim=1),
        )  # fmt: skip
        return current, modulation, final_modulation, cross

    def _window_hidden(
        self, current: _Tokens, modulation: torch.Tensor, cross: CrossInputs, context: WindowContext
    ) -> torch.Tensor:
        window = _cat_tokens(
            [self._context_tokens(context, s) for s in (REFERENCE, SINK, MOTION)] + [current]
        )
        cross = replace(cross, start=window.x.shape[1] - current.x.shape[1])
        mask = WindowMask(window.segments, window.segments, window.valid, window.valid)
        return self._run_blocks(window, modulation, mask, [None] * len(self.blocks), cross)[0]

    def hidden_states(
        self, video, audio, timesteps, conditions: Conditions, context: WindowContext
    ) -> torch.Tensor:
        """Final hidden states ``[B, n, W]`` of every window token, context first (for tests and probes)."""
        current, modulation, _, cross = self._current_tokens(video, audio, timesteps, conditions, None)
        return self._window_hidden(current, modulation, cross, context)

    def _extend(
        self, cache: ContextCache, tokens: _Tokens, modulation: torch.Tensor, cross: CrossInputs | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run one segment's tokens over the cached K/V of the segments before it."""
        segment = tokens.segment
        prefixes = [cache.prefix(layer, segment) for layer in range(len(self.blocks))]
        if prefixes[0] is None:
            mask = WindowMask(tokens.segments, tokens.segments, tokens.valid, tokens.valid)
            return self._run_blocks(tokens, modulation, mask, [None] * len(self.blocks), cross)
        _, _, valid, ids = prefixes[0]
        mask = WindowMask(tokens.segments, torch.cat([ids, tokens.segments]),
                          torch.cat([valid, tokens.valid], dim=1), tokens.valid)  # fmt: skip
        pasts = [(k, v) for k, v, _, _ in prefixes]
        return self._run_blocks(tokens, modulation, mask, pasts, cross)

    # -- streaming: fill the context cache -------------------------------------------------------
    @torch.no_grad()
    def _cache_segment(self, segment: int, tokens: _Tokens) -> None:
        cache = self._require_stream()
        zeros = torch.zeros(tokens.x.shape[0], device=tokens.x.device)
        modulation, _ = self._timestep_tables(zeros, zeros)
        _, kv = self._extend(cache, tokens, modulation, None)
        for later in range(segment, MOTION + 1):  # anything after this segment attended to the old one
            cache.drop(later)
        cache.set(segment, [k for k, _ in kv], [v for _, v in kv], tokens.valid)

    def set_reference(
        self,
        ref_video: torch.Tensor,
        ref_voice: torch.Tensor,
        ref_voice_valid: torch.Tensor | None = None,
        ref_image_valid: torch.Tensor | None = None,
    ) -> None:
        """Compute the reference K/V once per session (drops sink and motion, which depend on it)."""
        b = ref_video.shape[0]
        if ref_voice_valid is None:
            ref_voice_valid = torch.ones(ref_voice.shape[:2], dtype=torch.bool, device=ref_voice.device)
        if ref_image_valid is None:
            ref_image_valid = torch.ones(b, dtype=torch.bool, device=ref_video.device)
        self._cache_segment(
            REFERENCE, self._segment_tokens(REFERENCE, ref_video, ref_voice, ref_image_valid, ref_voice_valid)
        )

    def _set_clean_segment(self, segment: int, video: torch.Tensor, audio: torch.Tensor) -> None:
        b = video.shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=video.device)
        self._cache_segment(
            segment,
            self._segment_tokens(segment, video, audio, ones, ones[:, None].expand(-1, audio.shape[1])),
        )

    def set_sink(self, sink_video: torch.Tensor, sink_audio: torch.Tensor) -> None:
        """The sink chunk ``[B, C, S, h, w]`` / ``[B, S_a, D_a]``: once per session, after the first chunk."""
        self._set_clean_segment(SINK, sink_video, sink_audio)

    def set_motion(self, motion_video: torch.Tensor, motion_audio: torch.Tensor) -> None:
        """Motion frames ``[B, C, M, h, w]`` / ``[B, M_a, D_a]``: once per chunk."""
        self._set_clean_segment(MOTION, motion_video, motion_audio)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
