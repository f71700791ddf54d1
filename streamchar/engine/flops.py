"""FLOPs of one streaming chunk, per component (the table: :mod:`~streamchar.engine.flops_report`; model-FLOPs
utilisation: :mod:`~streamchar.engine.mfu`).

A steady-state chunk (any chunk after the causal first one) costs:

- **DiT**: ``steps`` denoising steps of the current chunk over the cached context K/V, with every guidance
  branch of every character in the batch, plus the once-per-chunk motion update (the motion frames' K/V).
  The reference + sink update runs once per session; it is reported apart and left out of the chunk.
- **Video decoder**: the chunk's latent frames through the streaming decoder, one stream per character
  (Wan: frame by frame over the causal convolutions' cache, as :class:`~streamchar.codecs.video.WanDecoderStream`
  runs it, after the session's first frame has filled that cache).
- **Audio decoder**: the mel codec's streaming decode of the chunk behind ``engine.audio_context_tokens``
  tokens (:class:`~streamchar.codecs.audio.MelDecoderStream`): NNLS mel inversion, then fast Griffin-Lim;
  one batch item per character.
- **Orchestrator**: the unit LM reads about ``tokens_per_frame`` new tokens per audio frame (the frame's
  unit, the next frame's cue and, when speech enters a new word, that word's phonemes and boundary) in one
  forward pass per frame over a KV cache of ``orchestrator_context`` tokens. Measured with the tiny
  checkpoint on three sentences: 2.55 tokens per speaking frame (2 on most frames, 4-9 on word starts).
  Frames where the character only listens cost nothing; the figure is that of a chunk of speech.

How it is counted, and what is and is not:

- Every network (DiT, video decoder, unit LM) is built on PyTorch's meta device, without weights, and run
  under :class:`torch.utils.flop_counter.FlopCounterMode`: no memory, seconds for the base preset.
- FlopCounterMode counts matrix products, convolutions (transposed too) and scaled dot-product attention,
  at 2 FLOPs per multiply-accumulate. It does not count element-wise work: normalisations, activations,
  softmax, rotary embeddings, adaLN modulation, residual adds, up-sampling, clamps, the NNLS updates'
  element-wise products and divisions, Griffin-Lim's phase updates. For the transformers that is a few
  percent; the decoders' element-wise work is memory-bound anyway.
- Attention is counted dense: masked-out pairs cost as much as visible ones (what ``sdpa`` computes). The
  DiT is counted with the ``sdpa`` backend whatever ``denoiser.attention`` says.
- FFTs are invisible to FlopCounterMode. The mel codec's STFTs and inverse STFTs are counted analytically
  at :func:`real_fft_flops` = 2.5 N log2 N per frame (FFTW benchFFT's convention for a real-data
  transform of size N = ``n_fft``; a complex FFT is 5 N log2 N); windowing and overlap-add are not counted.
- Not counted at all: the first chunk (shorter, without sink or motion), the Euler updates and guidance
  combination of the sampler, the orchestrator's occasional re-prefill (a turn starting, the context being
  trimmed), the realignment recognizer (``engine.realign``), host copies. The ``encodec`` audio codec is
  not modelled (:func:`chunk_flops` raises for it).

Usage::

    .venv/bin/python -m streamchar.engine.flops --config configs/base.yaml --steps 2
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from streamchar.denoiser.build import LatentSpec, build_denoiser
from streamchar.denoiser.dit import Conditions, JointDiT, WindowContext, count_parameters
from streamchar.loaders import meta_latent_spec
from streamchar.memory.cache import ContextCache

logger = logging.getLogger(__name__)

# Unit-LM tokens read per audio frame while speaking (measured with checkpoints/tiny/orchestrator: 2.55).
DEFAULT_TOKENS_PER_FRAME = 2.5


# -- counting -------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that :class:`FlopCounterMode` sees while ``fn()`` runs (matrix products, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def real_fft_flops(n: int) -> float:
    """FLOPs of one real-data FFT of size ``n``: 2.5 n log2 n (FFTW benchFFT's convention)."""
    return 2.5 * n * math.log2(n)


# -- the denoiser ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTFlops:
    """FLOPs of the denoiser's passes over one batch (guidance branches x characters items).

    Attributes:
        parameters: the denoiser's parameter count.
        batch: items in the batch.
        tokens_current_chunk: tokens of the current chunk per item (video patches, then audio tokens).
        tokens_window: tokens of the whole window per item (reference, sink, motion, current).
        step_full_window: one denoising step that recomputes the whole window (no cache).
        step_cached: one denoising step of the current chunk over the cached context K/V.
        motion_update: the motion frames' K/V, once per chunk.
        reference_and_sink: the reference's and the sink's K/V, once per session.
    """

    parameters: int
    batch: int
    tokens_current_chunk: int
    tokens_window: int
    step_full_window: int
    step_cached: int
    motion_update: int
    reference_and_sink: int


def _dit_inputs(
    model: JointDiT, spec: LatentSpec, batch: int
) -> tuple[WindowContext, tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], Conditions]]:
    """A full window of meta tensors: the clean context and the current chunk (noisy latents, timesteps,
    conditions), ``batch`` items each."""
    tl = model.timeline
    c, s, d = spec.latent_channels, spec.latent_size, spec.audio_dim
    L, M, S = tl.chunk_latent_frames, tl.motion_latent_frames, tl.sink_latent_frames
    La, Ma, Sa, R = (
        tl.chunk_audio_tokens,
        tl.motion_audio_tokens,
        tl.sink_audio_tokens,
        tl.reference_voice_tokens,
    )

    def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device="meta")

    def ones(*shape: int) -> torch.Tensor:
        return torch.ones(*shape, dtype=torch.bool, device="meta")

    context = WindowContext(
        ref_video=zeros(batch, c, 1, s, s), ref_voice=zeros(batch, R, d), ref_voice_valid=ones(batch, R),
        ref_image_valid=ones(batch), sink_video=zeros(batch, c, S, s, s), sink_audio=zeros(batch, Sa, d),
        has_sink=ones(batch), motion_video=zeros(batch, c, M, s, s), motion_audio=zeros(batch, Ma, d),
        has_motion=ones(batch),
    )  # fmt: skip
    units = zeros(batch, La, dtype=torch.long)
    priors = (zeros(batch, La, d), zeros(batch, c, L, s, s)) if model.residual else (None, None)
    current = (
        zeros(batch, c, L, s, s),
        zeros(batch, La, d),
        (zeros(batch), zeros(batch)),
        Conditions(units, units, *priors),
    )
    return context, current


def dit_flops(cfg, batch: int = 1) -> DiTFlops:
    """Count the denoiser's passes for ``cfg`` on the meta device (seconds, no memory, any preset).

    Args:
        cfg: a :class:`~streamchar.config.StreamCharConfig` (``denoiser``, ``timeline``, codec sizes).
        batch: items per model call: guidance branches x characters.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    spec = meta_latent_spec(cfg)
    with torch.device("meta"):
        model = build_denoiser(cfg.denoiser, cfg.timeline, spec).eval()
    model.set_attention_backend("sdpa")  # the one backend that runs on meta; FLOPs are counted dense anyway
    context, (video, audio, timesteps, conditions) = _dit_inputs(model, spec, batch)
    with torch.no_grad():
        full = count_flops(lambda: model(video, audio, timesteps, conditions, context))
        with model.streaming(ContextCache()):
            session = count_flops(lambda: (model.set_reference(context.ref_video, context.ref_voice),
                                           model.set_sink(context.sink_video, context.sink_audio)))  # fmt: skip
            motion = count_flops(lambda: model.set_motion(context.motion_video, context.motion_audio))
            cached = count_flops(lambda: model(video, audio, timesteps, conditions))
    tl, per_frame = cfg.timeline, model.layout.tokens_per_frame
    current = tl.chunk_latent_frames * per_frame + tl.chunk_audio_tokens
    window = (current + (1 + tl.sink_latent_frames + tl.motion_latent_frames) * per_frame
              + tl.reference_voice_tokens + tl.sink_audio_tokens + tl.motion_audio_tokens)  # fmt: skip
    return DiTFlops(parameters=count_parameters(model), batch=batch, tokens_current_chunk=current,
                    tokens_window=window, step_full_window=full, step_cached=cached, motion_update=motion,
                    reference_and_sink=session)  # fmt: skip


def prior_flops(cfg, characters: int = 1) -> tuple[int, int]:
    """``(FLOPs, parameters)`` of both priors' means of one chunk for ``characters`` characters (the acoustic
    prior over its window, the video prior over the chunk); ``(0, 0)`` for the plain formulation."""
    from streamchar.denoiser.build import acoustic_prior_kwargs, residual_scales, video_prior_kwargs
    from streamchar.denoiser.prior import AcousticPrior, VideoPrior

    if residual_scales(cfg.denoiser) is None:
        return 0, 0
    tl, spec = cfg.timeline, meta_latent_spec(cfg)
    with torch.device("meta"):
        audio = AcousticPrior(**acoustic_prior_kwargs(cfg.prior.audio, tl, spec)).eval()
        video = VideoPrior(**video_prior_kwargs(cfg.prior.video, tl, spec)).eval()
    b, window, size = characters, audio.context + tl.chunk_audio_tokens, spec.latent_size

    def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device="meta")

    with torch.no_grad():
        flops = count_flops(
            lambda: audio(
                zeros(b, window, dtype=torch.long),
                zeros(b, window, dtype=torch.long),
                zeros(b, tl.reference_voice_tokens, spec.audio_dim),
                torch.ones(b, tl.reference_voice_tokens, dtype=torch.bool, device="meta"),
            )
        )
        flops += count_flops(
            lambda: video(
                zeros(b, spec.latent_channels, size, size),
                zeros(b, spec.latent_channels, size, size),
                zeros(b, tl.motion_audio_tokens + tl.chunk_audio_tokens, spec.audio_dim),
            )
        )
    return flops, sum(p.numel() for m in (audio, video) for p in m.parameters())  # fmt: skip


# -- decoders and the orchestrator ----------------------------------------------------------------------
def video_decoder_flops(cfg) -> tuple[int, int]:
    """``(FLOPs, decoder parameters)`` of one character's steady-state chunk through the streaming video
    decoder of ``cfg.video_codec`` (built on the meta device from the config's architecture)."""
    from streamchar.codecs.video import video_codec_from_config

    tl = cfg.timeline
    with torch.device("meta"):
        codec = video_codec_from_config(cfg, random_init=True)
    size = codec.latent_size
    # [C, L, h, w]: one character's chunk of latents
    latents = torch.zeros(codec.latent_channels, tl.chunk_latent_frames, size, size, device="meta")
    stream = codec.decoder_stream()
    with torch.no_grad():
        stream.decode(latents[:, :1])  # the session's first latent frame: fills a causal decoder's cache
        flops = count_flops(lambda: stream.decode(latents))
    parts = (codec.model.decoder, getattr(codec.model, "post_quant_conv", None))
    parameters = sum(p.numel() for part in parts if part is not None for p in part.parameters())
    return flops, parameters


def audio_decoder_flops(cfg, context_tokens: int, batch: int = 1) -> tuple[int, int]:
    """``(matrix-product FLOPs, FFT FLOPs)`` of one steady-state chunk through the mel codec's streaming
    decoder: ``context_tokens`` + the chunk's tokens, ``batch`` items.

    The matrix products (pseudo-inverse, then ``mel_inversion_iters`` NNLS updates) are counted on the meta
    device; the FFTs analytically: ``2 griffin_lim_iters + 1`` transforms (an inverse and a forward STFT per
    iteration, then the final inverse), each of ``frames`` frames of one :func:`real_fft_flops` (``n_fft``).
    """
    from streamchar.codecs.audio import build_audio_codec

    if cfg.audio_codec.kind != "mel":
        raise ValueError(
            f"FLOPs are modelled for the mel audio codec only, not audio_codec.kind={cfg.audio_codec.kind}; "
            "count its decoder with FlopCounterMode yourself."
        )
    codec = build_audio_codec(cfg, cfg.timeline).to("meta")
    tokens = context_tokens + cfg.timeline.chunk_audio_tokens
    frames = tokens * codec.frames_per_token + 1  # the decoder appends one frame; the STFTs have as many
    mel = torch.zeros(batch, codec.n_mels, frames, device="meta")  # [B, n_mels, M]
    with torch.no_grad():
        matmul = count_flops(lambda: codec.mel_to_magnitude(mel))
    transforms = 2 * codec.griffin_lim_iters + 1
    fft = round(batch * transforms * frames * real_fft_flops(codec.n_fft))
    return matmul, fft


def orchestrator_token_flops(cfg, context: int) -> tuple[int, int]:
    """``(FLOPs, parameters)`` of the unit LM reading one new token over a KV cache of ``context`` tokens
    (built on the meta device from ``cfg.orchestrator``; logits included, as the HF backend computes them)."""
    from transformers import DynamicCache

    from streamchar.orchestrator.backends import cache_argument
    from streamchar.orchestrator.model import build_unit_lm
    from streamchar.orchestrator.text import UnitVocabulary

    if context < 0:
        raise ValueError(f"The orchestrator context must be zero or more tokens, got {context}.")
    with torch.device("meta"):
        lm = build_unit_lm(cfg.orchestrator, UnitVocabulary()).eval()
    cache = DynamicCache()
    with torch.no_grad():
        if context:
            lm(input_ids=torch.zeros(1, context, dtype=torch.long, device="meta"), use_cache=True,
               **cache_argument(lm, cache))  # fmt: skip
        token = torch.zeros(1, 1, dtype=torch.long, device="meta")
        flops = count_flops(lambda: lm(input_ids=token, use_cache=True, **cache_argument(lm, cache)))
    return flops, sum(p.numel() for p in lm.parameters())


# -- one chunk ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkFlops:
    """FLOPs of one steady-state chunk, per component (see the module docstring for what is counted).

    Attributes:
        preset: the config's preset name.
        steps: denoising steps per chunk; ``guidance_branches`` and ``characters`` make the DiT's batch.
        chunk_seconds: playback time of the chunk; ``chunk_video_frames`` / ``chunk_audio_tokens`` its size.
        orchestrator_context: the LM's KV-cache length; ``orchestrator_tokens_per_frame`` tokens read per frame.
        audio_context_tokens: tokens the audio decoder decodes again before the chunk.
        dit: the denoiser's passes, for the whole batch.
        video_decoder: every character's video decoder over the chunk.
        audio_decoder_matmul / audio_decoder_fft: the audio decoder's matrix products and FFTs.
        orchestrator_per_token: the LM reading one token.
        video_decoder_parameters / orchestrator_parameters: parameter counts (the mel codec has none).
    """

    preset: str
    steps: int
    guidance_branches: int
    characters: int
    chunk_seconds: float
    chunk_video_frames: int
    chunk_audio_tokens: int
    orchestrator_context: int
    orchestrator_tokens_per_frame: float
    audio_context_tokens: int
    video_codec: str
    dit: DiTFlops
    video_decoder: int
    audio_decoder_matmul: int
    audio_decoder_fft: int
    orchestrator_per_token: int
    video_decoder_parameters: int
    orchestrator_parameters: int
    priors: int = 0
    priors_parameters: int = 0

    @property
    def dit_chunk(self) -> int:
        """``steps`` cached steps plus the motion update."""
        return self.steps * self.dit.step_cached + self.dit.motion_update

    @property
    def audio_decoder(self) -> int:
        return self.audio_decoder_matmul + self.audio_decoder_fft

    @property
    def orchestrator(self) -> int:
        return round(
            self.chunk_audio_tokens * self.orchestrator_tokens_per_frame * self.orchestrator_per_token
        )

    def components(self) -> dict[str, int]:
        """FLOPs per chunk of each component; they sum to :attr:`total`."""
        return {
            "priors": self.priors,
            "dit_denoising": self.steps * self.dit.step_cached,
            "dit_motion_update": self.dit.motion_update,
            "video_decoder": self.video_decoder,
            "audio_decoder": self.audio_decoder,
            "orchestrator": self.orchestrator,
        }

    @property
    def total(self) -> int:
        return sum(self.components().values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: settings, ``flops`` per chunk (and per step / per session / per token where
        named so), ``parameters`` per model and the DiT's token counts."""
        return {
            "preset": self.preset, "steps": self.steps, "guidance_branches": self.guidance_branches,
            "characters": self.characters, "batch": self.dit.batch, "chunk_seconds": self.chunk_seconds,
            "chunk_video_frames": self.chunk_video_frames, "chunk_audio_tokens": self.chunk_audio_tokens,
            "orchestrator_context": self.orchestrator_context,
            "orchestrator_tokens_per_frame": self.orchestrator_tokens_per_frame,
            "audio_context_tokens": self.audio_context_tokens, "video_codec": self.video_codec,
            "flops": {
                **self.components(),
                "total": self.total,
                "dit_step": self.dit.step_cached,
                "dit_step_full_window": self.dit.step_full_window,
                "dit_chunk": self.dit_chunk,
                "dit_reference_and_sink_per_session": self.dit.reference_and_sink,
                "audio_decoder_fft": self.audio_decoder_fft,
                "orchestrator_per_token": self.orchestrator_per_token,
            },
            "parameters": {"denoiser": self.dit.parameters, "video_decoder": self.video_decoder_parameters,
                           "audio_decoder": 0, "orchestrator": self.orchestrator_parameters,
                           "priors": self.priors_parameters},
            "tokens": {"dit_current_chunk": self.dit.tokens_current_chunk, "dit_window": self.dit.tokens_window},
        }  # fmt: skip


def chunk_flops(
    cfg,
    steps: int,
    guidance_branches: int = 1,
    characters: int = 1,
    orchestrator_context: int = 1024,
    tokens_per_frame: float = DEFAULT_TOKENS_PER_FRAME,
) -> ChunkFlops:
    """FLOPs of one steady-state chunk of ``cfg``, per component, counted on the meta device.

    Args:
        cfg: a :class:`~streamchar.config.StreamCharConfig` (``load_config("tiny" | "base" | path)``).
        steps: denoising steps per chunk.
        guidance_branches: model-call batch items per character (1 = no guidance; see ``Guidance.num_branches``).
        characters: characters in the session (each has its own guidance branches and video decoder).
        orchestrator_context: tokens in the unit LM's KV cache (``orchestrator.max_context_tokens`` caps it).
        tokens_per_frame: unit-LM tokens read per audio frame while speaking.
    """
    for name, value in (
        ("steps", steps),
        ("guidance_branches", guidance_branches),
        ("characters", characters),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if tokens_per_frame <= 0:
        raise ValueError(f"tokens_per_frame must be positive, got {tokens_per_frame}.")
    tl, audio_context = cfg.timeline, cfg.engine.audio_context_tokens
    dit = dit_flops(cfg, batch=guidance_branches * characters)
    video, video_parameters = video_decoder_flops(cfg)
    audio_matmul, audio_fft = audio_decoder_flops(cfg, audio_context, batch=characters)
    per_token, lm_parameters = orchestrator_token_flops(cfg, orchestrator_context)
    priors, priors_parameters = prior_flops(cfg, characters)
    return ChunkFlops(
        preset=cfg.preset, steps=steps, guidance_branches=guidance_branches, characters=characters,
        chunk_seconds=tl.chunk_seconds, chunk_video_frames=tl.chunk_video_frames(1),
        chunk_audio_tokens=tl.chunk_audio_tokens, orchestrator_context=orchestrator_context,
        orchestrator_tokens_per_frame=tokens_per_frame, audio_context_tokens=audio_context,
        video_codec=cfg.video_codec.kind, dit=dit, video_decoder=characters * video,
        audio_decoder_matmul=audio_matmul, audio_decoder_fft=audio_fft, orchestrator_per_token=per_token,
        video_decoder_parameters=video_parameters, orchestrator_parameters=lm_parameters, priors=priors,
        priors_parameters=priors_parameters,
    )  # fmt: skip


if __name__ == "__main__":
    from streamchar.engine.flops_report import main

    main()
