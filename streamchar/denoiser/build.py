"""Builders: config sections -> denoiser and sampler constructor arguments (modules never see configs)."""

from __future__ import annotations

from dataclasses import dataclass

from streamchar.denoiser.dit import JointDiT
from streamchar.denoiser.flow import EulerSampler, Guidance
from streamchar.timeline import Timeline


@dataclass(frozen=True)
class LatentSpec:
    """What the denoiser needs to know about the codecs' latents."""

    latent_channels: int
    latent_size: int
    audio_dim: int
    num_units: int


def latent_spec(video_codec, audio_codec) -> LatentSpec:
    """Latent sizes of codecs already built (the video codec's channels and latent grid, the audio codec's
    token width) and of the unit set."""
    from streamchar.data.phonemes import F0Buckets, num_units

    return LatentSpec(
        latent_channels=video_codec.latent_channels,
        latent_size=video_codec.latent_size,
        audio_dim=audio_codec.latent_dim,
        num_units=num_units(F0Buckets()),
    )


def build_denoiser(section, timeline: Timeline, spec: LatentSpec) -> JointDiT:
    """A randomly initialised :class:`JointDiT` from the ``denoiser`` config section."""
    scales = residual_scales(section)
    return JointDiT(
        timeline=timeline,
        latent_channels=spec.latent_channels,
        latent_size=spec.latent_size,
        audio_dim=spec.audio_dim,
        num_units=spec.num_units,
        width=section.width,
        depth=section.depth,
        heads=section.heads,
        mlp_ratio=section.mlp_ratio,
        patch_size=section.patch_size,
        cond_window=section.cond_window,
        rope_theta=section.rope_theta,
        qk_norm=section.qk_norm,
        attention=section.attention,
        gradient_checkpointing=section.gradient_checkpointing,
        residual_scales=scales,
        # shallow sampling starts from the priors' means: a plain model always starts from noise
        sample_start=float(section.sample_start) if scales else 1.0,
        sample_start_video=section.sample_start_video if scales else None,
        video_prediction=section.video_prediction,
    )


FORMULATIONS = ("residual", "plain")


def residual_scales(section) -> tuple[float, float] | None:
    """The residual formulation's noise scales ``(video, audio)`` from the ``denoiser`` section; None for plain."""
    formulation = getattr(section, "formulation", "plain")
    if formulation not in FORMULATIONS:
        raise ValueError(f"denoiser.formulation must be residual or plain, got '{formulation}'.")
    if formulation == "plain":
        return None
    scales = (float(section.residual_scale_video), float(section.residual_scale_audio))
    if min(scales) <= 0:
        raise ValueError(f"denoiser.residual_scale_video and _audio must be positive, got {scales}.")
    return scales


def build_sampler(section) -> EulerSampler:
    """The Euler sampler from the ``sample`` config section."""
    guidance = Guidance(section.guidance_conditions, section.guidance_ref_image, section.guidance_ref_voice)
    return EulerSampler(steps=section.steps, shift=section.shift, guidance=guidance)


def acoustic_prior_kwargs(section, timeline: Timeline, spec: LatentSpec) -> dict:
    """Constructor kwargs of the :class:`AcousticPrior` from the ``prior.audio`` section."""
    from streamchar.data.phonemes import buckets_per_phoneme

    return {"num_units": spec.num_units, "audio_dim": spec.audio_dim,
            "context": timeline.seconds_to_audio_tokens(section.context_seconds), "width": section.width,
            "speaker_dim": section.speaker_dim, "dilations": tuple(section.dilations),
            **({"unit_buckets": buckets_per_phoneme(spec.num_units)} if section.factorised_units else {}),
            **({"dropout": section.dropout} if section.dropout else {})}  # fmt: skip


def video_prior_kwargs(section, timeline: Timeline, spec: LatentSpec) -> dict:
    """Constructor kwargs of the :class:`VideoPrior` from the ``prior.video`` section."""
    return {"latent_channels": spec.latent_channels, "audio_dim": spec.audio_dim,
            "audio_per_frame": timeline.audio_tokens_per_latent_frame, "motion_audio": timeline.motion_audio_tokens,
            "channels": tuple(section.channels), "audio_width": section.audio_width}  # fmt: skip
