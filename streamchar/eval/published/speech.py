"""Published speech models: Whisper (word error rates) and WavLM speaker verification (voice similarity)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamchar.eval.published.files import (
    HF_WEIGHTS,
    PublishedModel,
    WeightsPath,
    audio_array,
    checkpoint_dir,
)

logger = logging.getLogger(__name__)

# Whisper's and WavLM's published input rate, independent of StreamChar's timeline.
SPEECH_SAMPLE_RATE = 16000


class WhisperTranscriber(PublishedModel):
    """English speech recognition with greedy decoding, for word error rates."""

    def __init__(self, model: Any, processor: Any, device: str | torch.device = "cpu") -> None:
        super().__init__(model, device)
        self.processor = processor

    @torch.no_grad()
    def transcribe(self, audio: np.ndarray, max_new_tokens: int | None = None) -> str:
        """Mono float32 audio at 16 kHz (at most one Whisper window, 30 s) -> its transcript."""
        audio = audio_array(audio)
        extractor = self.processor.feature_extractor
        if len(audio) > extractor.n_samples:
            raise ValueError(
                f"Whisper transcribes at most {extractor.n_samples / SPEECH_SAMPLE_RATE:g} s at a time, got "
                f"{len(audio) / SPEECH_SAMPLE_RATE:.1f} s; split the audio into shorter clips."
            )
        features = extractor(audio, sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt").input_features
        options: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        if getattr(self.model.generation_config, "is_multilingual", False):
            # English-only checkpoints (*.en) refuse a language; multilingual ones must be told
            options.update(language="en", task="transcribe")
        token_ids = self.model.generate(features.to(self.device, self.model.dtype), **options)
        return self.processor.batch_decode(token_ids, skip_special_tokens=True)[0].strip()


def load_whisper(path: WeightsPath, device: str | torch.device = "cpu") -> WhisperTranscriber:
    """Whisper from a local Hugging Face checkpoint directory (e.g. a copy of openai/whisper-large-v3)."""
    folder = checkpoint_dir(
        path,
        "Whisper checkpoint",
        (
            (("config.json",),),
            (("generation_config.json",),),
            (("preprocessor_config.json",),),
            (("tokenizer.json",), ("vocab.json", "merges.txt", "tokenizer_config.json")),
            HF_WEIGHTS,
        ),
        "pass the directory of a local Hugging Face Whisper checkpoint (e.g. a download of "
        "openai/whisper-large-v3) with its configs, tokenizer and weights",
    )
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    logger.info("Loaded Whisper from %s", folder)
    return WhisperTranscriber(model, processor, device)


# -- WavLM speaker verification -----------------------------------------------------------------------


class SpeakerVerifier(PublishedModel):
    """Speaker embeddings from WavLM's x-vector head, L2-normalised as its model card compares them."""

    def __init__(self, model: Any, feature_extractor: Any, device: str | torch.device = "cpu") -> None:
        super().__init__(model, device)
        self.feature_extractor = feature_extractor

    @torch.no_grad()
    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at 16 kHz -> unit-length speaker embedding ``[D]`` (512 for base-plus-sv)."""
        inputs = self.feature_extractor(
            audio_array(audio), sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt"
        )
        embedding = self.model(input_values=inputs.input_values.to(self.device)).embeddings  # [1, D]
        return F.normalize(embedding, dim=-1)[0].float().cpu().numpy()

    def similarity(self, audio_a: np.ndarray, audio_b: np.ndarray) -> float:
        """Cosine similarity of two clips' speaker embeddings (the model card's same-speaker cut is 0.86)."""
        return float(self.embed(audio_a) @ self.embed(audio_b))


def load_wavlm_sv(path: WeightsPath, device: str | torch.device = "cpu") -> SpeakerVerifier:
    """WavLM speaker verification from a local checkpoint directory (e.g. microsoft/wavlm-base-plus-sv)."""
    folder = checkpoint_dir(
        path,
        "WavLM speaker-verification checkpoint",
        ((("config.json",),), (("preprocessor_config.json",),), HF_WEIGHTS),
        "pass the directory of a local copy of microsoft/wavlm-base-plus-sv (config.json, "
        "preprocessor_config.json and the weights)",
    )
    from transformers import AutoFeatureExtractor, WavLMForXVector

    feature_extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = WavLMForXVector.from_pretrained(folder, local_files_only=True)
    logger.info("Loaded WavLM speaker verification from %s", folder)
    return SpeakerVerifier(model, feature_extractor, device)
