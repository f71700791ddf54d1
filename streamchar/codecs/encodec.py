"""The EnCodec audio codec: EnCodec's continuous (pre-quantisation) embeddings as audio latents.

The network is transformers' ``EncodecModel``. Checkpoints load from a local path in either
format:

- a Hugging Face folder (``config.json`` + weights), loaded with ``from_pretrained``;
- Meta's original ``encodec`` state dict (``encodec_24khz-*.th``), whose keys are renamed on load
  (``encoder.model.N.conv.conv.weight_g`` -> ``encoder.layers.N.conv...``, ``convtr.convtr`` ->
  ``conv``, ``quantizer.vq.layers.K._codebook`` -> ``quantizer.layers.K.codebook``). Its
  architecture is transformers' default ``EncodecConfig`` (the 24 kHz model) unless a config is
  given. The ``encodec`` package itself is never imported: it imports torchaudio, which does not
  load beside the CPU torch build.

EnCodec frames run at ``sampling_rate / prod(upsampling_ratios)`` (75 Hz for 24 kHz); a token packs
the frames of one audio-token period (3 at 25 tokens/s), so a token is ``3 x hidden_size`` wide.
Audio is resampled between the timeline's rate and the model's.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamchar.codecs.base import CodecError, as_wave_tensor
from streamchar.media import resample
from streamchar.timeline import Timeline

logger = logging.getLogger(__name__)


def meta_key_to_hf(key: str, parametrized_weight_norm: bool) -> str:
    """Name of a parameter of Meta's ``encodec`` model in transformers' ``EncodecModel``."""
    key = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", key)
    key = key.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
    key = key.replace(".conv.norm.", ".norm.").replace(".convtr.norm.", ".norm.")
    key = re.sub(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", key)
    if parametrized_weight_norm:
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
    return key


def convert_meta_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename Meta's keys for ``model`` and check that every parameter is covered with its shape."""
    target = model.state_dict()
    parametrized = any(".parametrizations.weight.original0" in k for k in target)
    converted = {meta_key_to_hf(k, parametrized): v for k, v in state.items()}
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    if missing or unexpected:
        raise CodecError(
            f"The EnCodec checkpoint does not match the model ({len(missing)} missing, {len(unexpected)} unexpected "
            f"keys, e.g. {(missing + unexpected)[:3]}); pass the config.json that belongs to it."
        )
    for key, value in converted.items():
        if value.shape != target[key].shape:
            raise CodecError(
                f"EnCodec parameter {key} has shape {list(value.shape)} in the checkpoint but {list(target[key].shape)} "
                "in the model; pass the config.json that belongs to the checkpoint."
            )
    return converted


def load_encodec_model(path: str | Path, config_path: str | Path | None = None) -> nn.Module:
    """An ``EncodecModel`` from a local HF folder or a Meta ``.th`` / ``.pt`` / ``.safetensors`` file."""
    from transformers import EncodecConfig, EncodecModel

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CodecError(
                f"{path} has no config.json; give an EnCodec folder in HF format or Meta's .th file."
            )
        try:
            return EncodecModel.from_pretrained(path).eval()
        except Exception as err:
            raise CodecError(
                f"Could not load EnCodec from {path} ({err}); the checkpoint may be corrupt."
            ) from err
    if not path.is_file():
        raise CodecError(f"No EnCodec checkpoint at {path}; set audio_codec.path to a local file or folder.")
    if config_path is None and path.with_suffix(".json").is_file():
        config_path = path.with_suffix(".json")
    config = EncodecConfig(**json.loads(Path(config_path).read_text())) if config_path else EncodecConfig()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CodecError(
            f"Could not read {path} ({err}); the file is corrupt or not an EnCodec checkpoint."
        ) from err
    if isinstance(state, dict) and "best_state" in state:  # training checkpoints wrap the weights
        state = state["best_state"]
    model = EncodecModel(config)
    model.load_state_dict(convert_meta_state_dict(state, model), strict=True)
    return model.eval()


class EncodecCodec(nn.Module):
    """:class:`~streamchar.codecs.base.AudioCodec` over EnCodec's continuous embeddings."""

    kind = "encodec"

    def __init__(
        self,
        model: nn.Module,
        sample_rate: int = Timeline.sample_rate,
        samples_per_token: int = 640,
        latent_mean: float = 0.0,
        latent_std: float = 1.0,
    ) -> None:
        super().__init__()
        cfg = model.config
        if cfg.audio_channels != 1 or cfg.normalize:
            raise CodecError(
                "Only mono EnCodec models without input normalisation (the 24 kHz model) are supported; "
                "use encodec_24khz."
            )
        self.model = model.eval()
        self.sample_rate = sample_rate
        self.samples_per_token = samples_per_token
        self.model_rate = int(cfg.sampling_rate)
        self.hop = int(np.prod(cfg.upsampling_ratios))
        token_seconds = samples_per_token / sample_rate
        frames = token_seconds * self.model_rate / self.hop
        if abs(frames - round(frames)) > 1e-6:
            raise CodecError(
                f"EnCodec frames ({self.model_rate / self.hop:g} Hz) do not fit a whole number of times in one audio "
                f"token ({1 / token_seconds:g} tokens/s); choose timeline.audio_latent_rate to divide the frame rate."
            )
        self.frames_per_token = int(round(frames))
        self.hidden = int(cfg.hidden_size)
        self.latent_dim = self.frames_per_token * self.hidden
        self.latent_mean, self.latent_std = float(latent_mean), float(latent_std)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[N]`` or ``[B, N]`` at ``sample_rate`` -> latents ``[T_a, D_a]`` or ``[B, T_a, D_a]``."""
        x = as_wave_tensor(wave)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        tokens = x.shape[-1] // self.samples_per_token
        if tokens == 0:
            raise CodecError(
                f"Audio shorter than one token ({self.samples_per_token} samples) cannot be encoded."
            )
        x = x[:, : tokens * self.samples_per_token].cpu().numpy()
        model_wave = np.stack([resample(row, self.sample_rate, self.model_rate) for row in x])
        frames_needed = tokens * self.frames_per_token
        target = frames_needed * self.hop
        model_wave = np.pad(model_wave, ((0, 0), (0, max(0, target - model_wave.shape[1]))))[:, :target]
        emb = self.model.encoder(torch.from_numpy(model_wave).unsqueeze(1).to(self.device))  # [B, H, frames]
        emb = emb[..., :frames_needed].transpose(1, 2)  # [B, frames, H]
        latents = emb.reshape(emb.shape[0], tokens, self.latent_dim)
        latents = (latents - self.latent_mean) / self.latent_std
        return latents[0] if single else latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[T_a, D_a]`` or ``[B, T_a, D_a]`` -> waveform at ``sample_rate``."""
        single = latents.dim() == 2
        lat = latents.unsqueeze(0) if single else latents
        if lat.shape[-1] != self.latent_dim:
            raise CodecError(f"EnCodec latents must have {self.latent_dim} dims, got {lat.shape[-1]}.")
        b, tokens, _ = lat.shape
        emb = (lat.float() * self.latent_std + self.latent_mean).reshape(
            b, tokens * self.frames_per_token, self.hidden
        )
        audio = self.model.decoder(emb.transpose(1, 2).to(self.device))[:, 0]  # [B, N_model]
        waves = [resample(row, self.model_rate, self.sample_rate) for row in audio.cpu().numpy()]
        length = tokens * self.samples_per_token
        out = torch.from_numpy(np.stack([np.pad(w, (0, max(0, length - len(w))))[:length] for w in waves]))
        return out[0] if single else out


def load_encodec_codec(path: str | Path, timeline, config_path: str | Path | None = None) -> EncodecCodec:
    model = load_encodec_model(path, config_path)
    return EncodecCodec(model, timeline.sample_rate, timeline.samples_per_audio_token)
