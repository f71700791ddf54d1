"""The unit language model: a plain transformers causal LM over the unit vocabulary.

Built from ``cfg.orchestrator`` by :func:`build_unit_lm` (Llama or Qwen2 configs, both natively
supported by transformers and vLLM). Saved with :func:`save_unit_lm` as an ordinary HF folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``generation_config.json``) plus
``streamchar.json`` (the F0 buckets and the training summary), so ``AutoModelForCausalLM`` and
``AutoTokenizer.from_pretrained`` load it without custom code; :func:`streamchar.loaders.load_unit_lm` reads it
back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from streamchar.orchestrator.text import UnitVocabulary

logger = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# causal LM classes vLLM runs natively (its model registry), for the checkpoint-format check
VLLM_NATIVE = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"})
SIDECAR = "streamchar.json"


class OrchestratorCheckpointError(ValueError):
    """A missing or unusable orchestrator checkpoint; the message says what to do."""


def lm_config(ocfg, vocab: UnitVocabulary):
    """A transformers config for ``cfg.orchestrator`` (architecture, sizes) over ``vocab``."""
    from transformers import LlamaConfig, Qwen2Config

    if ocfg.architecture not in ARCHITECTURES:
        raise ValueError(
            f"orchestrator.architecture must be one of {sorted(ARCHITECTURES)}, got '{ocfg.architecture}'."
        )
    kwargs = dict(
        vocab_size=len(vocab), hidden_size=ocfg.hidden_size, intermediate_size=ocfg.intermediate_size,
        num_hidden_layers=ocfg.layers, num_attention_heads=ocfg.heads, num_key_value_heads=ocfg.kv_heads,
        max_position_embeddings=ocfg.max_positions, rope_theta=10_000.0, tie_word_embeddings=True,
        bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad,
    )  # fmt: skip
    config_class = LlamaConfig if ocfg.architecture == "llama" else Qwen2Config
    config = config_class(**kwargs)
    config.architectures = [ARCHITECTURES[ocfg.architecture]]
    return config


def build_unit_lm(ocfg, vocab: UnitVocabulary) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(lm_config(ocfg, vocab))


def save_unit_lm(model: torch.nn.Module, vocab: UnitVocabulary, folder: str | Path, extra: dict | None = None,
                 dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """Save ``model`` and the tokenizer as a plain HF folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype) if dtype is not None else model
    model.save_pretrained(folder, safe_serialization=True)
    vocab.tokenizer().save_pretrained(folder)
    sidecar = {"f0_buckets": asdict(vocab.buckets), "vocab_size": len(vocab), **(extra or {})}
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return folder
