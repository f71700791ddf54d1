"""Video codecs over diffusers autoencoders.

- ``tiny``: ``AutoencoderTiny`` (TAESD-style), per frame. The tiny preset trains a small one from
  scratch (``streamchar train vae``) because decode speed decides real time on a CPU.
- ``kl``: ``AutoencoderKL``, per frame (temporal factor 1); latents are the posterior mean.
- ``wan``: ``AutoencoderKLWan``, causal 3D with temporal factor 4: frame 0 gets a latent frame of
  its own, then every 4 frames one more. Streaming decode keeps the causal convolutions' cache
  between chunks, so decoding a session chunk by chunk equals decoding it whole.

A codec folder written by StreamChar holds the diffusers model (``save_pretrained``) and
``streamchar_codec.json`` (kind, sizes, per-channel latent mean and std). A plain local diffusers
checkpoint also loads; its normalisation then comes from its config (Wan's ``latents_mean`` /
``latents_std``, or ``scaling_factor`` / ``shift_factor``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamchar.codecs.base import CodecError, frames_to_tensor, tensor_to_frames
from streamchar.config import resolve_asset_path

logger = logging.getLogger(__name__)

CODEC_META = "streamchar_codec.json"
_KINDS = ("tiny", "kl", "wan")


def _diffusers_class(kind: str):
    from diffusers import AutoencoderKL, AutoencoderKLWan, AutoencoderTiny

    classes = {"tiny": AutoencoderTiny, "kl": AutoencoderKL, "wan": AutoencoderKLWan}
    if kind not in classes:
        raise CodecError(f"Unknown video codec kind '{kind}'; use one of {list(_KINDS)}.")
    return classes[kind]


def _model_sizes(kind: str, model: nn.Module) -> tuple[int, int, int]:
    """(latent channels, spatial factor, temporal factor) read off a diffusers autoencoder."""
    cfg = model.config
    if kind == "tiny":
        return cfg.latent_channels, 2 ** (len(cfg.encoder_block_out_channels) - 1), 1
    if kind == "kl":
        return cfg.latent_channels, 2 ** (len(cfg.block_out_channels) - 1), 1
    temporal = cfg.scale_factor_temporal or 2 ** sum(bool(t) for t in cfg.temperal_downsample)
    spatial = cfg.scale_factor_spatial or 2 ** len(cfg.temperal_downsample)
    return cfg.z_dim, int(spatial) * (cfg.patch_size or 1), int(temporal)


def _config_normalisation(kind: str, model: nn.Module, channels: int) -> tuple[list[float], list[float]]:
    cfg = model.config
    if kind == "wan" and getattr(cfg, "latents_mean", None) is not None:
        return list(map(float, cfg.latents_mean)), list(map(float, cfg.latents_std))
    scale = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
    return [shift] * channels, [1.0 / scale] * channels


class DiffusersVideoCodec(nn.Module):
    """A :class:`~streamchar.codecs.base.VideoCodec` over a diffusers autoencoder."""

    def __init__(
        self,
        kind: str,
        model: nn.Module,
        image_size: int,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        batch_frames: int = 64,
    ) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("tiny", "kl"):  # 2D convolutions run ~5x faster channels-last on CPU (oneDNN, measured)
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.image_size = image_size
        self.latent_channels, self.spatial_factor, self.temporal_factor = _model_sizes(kind, model)
        self.causal_first_frame = kind == "wan"
        self.batch_frames = batch_frames
        if latent_mean is None or latent_std is None:
            latent_mean, latent_std = _config_normalisation(kind, model, self.latent_channels)
        if len(latent_mean) != self.latent_channels or len(latent_std) != self.latent_channels:
            raise CodecError(
                f"Latent normalisation has {len(latent_mean)} means and {len(latent_std)} stds for "
                f"{self.latent_channels} channels; the codec folder is inconsistent, so retrain or re-export it."
            )
        self.register_buffer("latent_mean", torch.tensor(latent_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("latent_std", torch.tensor(latent_std, dtype=torch.float32), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_size(self) -> int:
        return self.image_size // self.spatial_factor

    # -- raw (un-normalised) passes, [T, 3, H, W] in [-1, 1] <-> [T, C, h, w] ----------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Per-frame codecs: images ``[B, 3, H, W]`` -> raw latents ``[B, C, h, w]`` (differentiable)."""
        images = images.contiguous(memory_format=torch.channels_last)
        if self.kind == "tiny":
            return self.model.encode(images).latents
        if self.kind == "kl":
            return self.model.encode(images).latent_dist.mode()
        raise CodecError("encode_images is for per-frame codecs; use encode() for the causal Wan codec.")

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-frame codecs: raw latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` (differentiable)."""
        if self.kind in ("tiny", "kl"):
            return self.model.decode(latents.contiguous(memory_format=torch.channels_last)).sample
        raise CodecError("decode_images is for per-frame codecs; use decode() for the causal Wan codec.")

    def normalise(self, raw: torch.Tensor, channel_dim: int) -> torch.Tensor:
        shape = [1] * raw.dim()
        shape[channel_dim] = -1
        return (raw - self.latent_mean.view(shape)) / self.latent_std.view(shape)

    def denormalise(self, latents: torch.Tensor, channel_dim: int) -> torch.Tensor:
        shape = [1] * latents.dim()
        shape[channel_dim] = -1
        return latents * self.latent_std.view(shape) + self.latent_mean.view(shape)

    def _check_frames(self, frames: np.ndarray | torch.Tensor) -> None:
        h, w = frames.shape[1], frames.shape[2]
        if (h, w) != (self.image_size, self.image_size):
            raise CodecError(
                f"Frames are {w}x{h} but this codec works at {self.image_size}x{self.image_size}; resize them "
                "(streamchar data prepare does) or use a codec for that size."
            )

    # -- the VideoCodec protocol ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> normalised latents ``[C, T', h, w]``."""
        self._check_frames(frames)
        x = frames_to_tensor(frames, self.device)  # [T, 3, H, W]
        if self.kind == "wan":
            usable = 1 + (len(x) - 1) // self.temporal_factor * self.temporal_factor
            if usable != len(x):
                logger.debug("dropping %d trailing frames that do not fill a latent frame", len(x) - usable)
            video = x[:usable].permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, T, H, W]
            raw = self.model.encode(video).latent_dist.mode()[0]  # [C, T', h, w]
            return self.normalise(raw, channel_dim=0)
        raw = torch.cat([self.encode_images(batch) for batch in x.split(self.batch_frames)])  # [T, C, h, w]
        return self.normalise(raw, channel_dim=1).permute(1, 0, 2, 3).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[C, T', h, w]`` -> uint8 frames ``[T, H, W, 3]``."""
        if latents.dim() != 4 or latents.shape[0] != self.latent_channels:
            raise CodecError(f"Latents must be [{self.latent_channels}, T, h, w], got {list(latents.shape)}.")
        if self.kind == "wan":
            stream = self.decoder_stream()
            return stream.decode(latents)
        raw = self.denormalise(latents.to(self.device), channel_dim=0).permute(1, 0, 2, 3)  # [T, C, h, w]
        images = torch.cat([self.decode_images(batch) for batch in raw.split(self.batch_frames)])
        return tensor_to_frames(images)

    def decoder_stream(self) -> WanDecoderStream | PerFrameDecoderStream:
        return WanDecoderStream(self) if self.kind == "wan" else PerFrameDecoderStream(self)

    # -- saving and loading -------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "kind": self.kind,
            "image_size": self.image_size,
            "latent_channels": self.latent_channels,
            "spatial_factor": self.spatial_factor,
            "temporal_factor": self.temporal_factor,
            "causal_first_frame": self.causal_first_frame,
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
        }

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        (folder / CODEC_META).write_text(json.dumps(self.metadata(), indent=1) + "\n")
        return folder

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean.to(self.latent_mean))
        self.latent_std.copy_(std.to(self.latent_std).clamp_min(1e-6))


class PerFrameDecoderStream:
    """Chunked decoding for per-frame codecs: there is no state to carry."""

    def __init__(self, codec: DiffusersVideoCodec) -> None:
        self.codec = codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents)

    def reset(self) -> None:
        pass


class WanDecoderStream:
    """Chunked decoding for the causal Wan VAE: the causal convolutions' feature cache survives
    between calls, and only the session's very first latent frame is decoded as the first chunk."""

    def __init__(self, codec: DiffusersVideoCodec) -> None:
        self.codec = codec
        self.reset()

    def reset(self) -> None:
        model = self.codec.model
        self._feat_map: list = [None] * model._cached_conv_counts["decoder"]
        self._frames_decoded = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        model = self.codec.model
        raw = self.codec.denormalise(latents.to(self.codec.device), channel_dim=0).unsqueeze(
            0
        )  # [1, C, t, h, w]
        x = model.post_quant_conv(raw)
        outputs = []
        for i in range(x.shape[2]):
            conv_idx = [0]
            out = model.decoder(
                x[:, :, i : i + 1],
                feat_cache=self._feat_map,
                feat_idx=conv_idx,
                first_chunk=self._frames_decoded == 0,
            )
            outputs.append(out)
            self._frames_decoded += 1
        video = torch.cat(outputs, dim=2)  # [1, 3, T, H, W]
        if model.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=model.config.patch_size)
        return tensor_to_frames(video.clamp(-1, 1)[0].permute(1, 0, 2, 3))


# -- builders -------------------------------------------------------------------------------------
def build_video_codec(
    kind: str, image_size: int, latent_channels: int, arch: dict[str, Any] | None = None
) -> DiffusersVideoCodec:
    """A randomly initialised codec from config values (training from scratch, tests)."""
    cls = _diffusers_class(kind)
    kwargs = dict(arch or {})
    kwargs.setdefault("z_dim" if kind == "wan" else "latent_channels", latent_channels)
    if kind == "wan":
        kwargs.setdefault("latents_mean", [0.0] * latent_channels)
        kwargs.setdefault("latents_std", [1.0] * latent_channels)
    try:
        model = cls(**kwargs)
    except TypeError as err:
        raise CodecError(
            f"video_codec.arch does not fit {cls.__name__}: {err}; check the keys against diffusers."
        ) from err
    mean = [0.0] * latent_channels if kind != "wan" else None
    std = [1.0] * latent_channels if kind != "wan" else None
    return DiffusersVideoCodec(kind, model, image_size, mean, std)


def load_video_codec(
    path: str | Path, kind: str | None = None, image_size: int | None = None
) -> DiffusersVideoCodec:
    """Load a codec folder written by StreamChar, or a local diffusers autoencoder checkpoint.

    Args:
        path: the folder (``config.json`` plus weights; optionally ``streamchar_codec.json``).
        kind: required for plain diffusers checkpoints (``tiny``, ``kl``, ``wan``).
        image_size: required for plain diffusers checkpoints.
    """
    folder = Path(path)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise CodecError(
            f"No video codec at {folder}: expected a folder with config.json and weights (from `streamchar train "
            "vae`, or a local diffusers autoencoder); set video_codec.path or pass --video-codec."
        )
    meta: dict[str, Any] = {}
    if (folder / CODEC_META).is_file():
        meta = json.loads((folder / CODEC_META).read_text())
    kind = meta.get("kind", kind)
    if kind is None:
        raise CodecError(
            f"{folder} is a plain diffusers checkpoint; say which kind it is (video_codec.kind)."
        )
    image_size = meta.get("image_size", image_size)
    if image_size is None:
        raise CodecError(f"{folder} does not record its image size; set video_codec.image_size.")
    cls = _diffusers_class(kind)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # AutoencoderTiny warns about a config key it writes itself
    try:
        model = cls.from_pretrained(folder)
    except Exception as err:
        raise CodecError(
            f"Could not load a {cls.__name__} from {folder} ({type(err).__name__}: {err}); the checkpoint is corrupt "
            "or of another kind, so check video_codec.kind or re-export it."
        ) from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return DiffusersVideoCodec(kind, model, int(image_size), meta.get("latent_mean"), meta.get("latent_std"))


def video_codec_from_config(cfg, random_init: bool = False) -> DiffusersVideoCodec:
    """The configured codec: loaded from ``video_codec.path`` (required: a random codec is useless), or, with
    ``random_init``, randomly initialised from the section's sizes (timing, FLOPs counting; built on the
    default device, so ``with torch.device(...)`` places it)."""
    vc = cfg.video_codec
    if random_init:
        return build_video_codec(vc.kind, vc.image_size, vc.latent_channels, vc.arch).eval()
    if not vc.path:
        raise CodecError(
            "video_codec.path is not set; train one with `streamchar train vae` or pass a local diffusers "
            "checkpoint with --video-codec."
        )
    codec = load_video_codec(resolve_asset_path(vc.path), vc.kind, vc.image_size)
    if codec.image_size != vc.image_size:
        raise CodecError(
            f"The codec at {vc.path} works at {codec.image_size}px but video_codec.image_size is {vc.image_size}; "
            "make them agree."
        )
    return codec
