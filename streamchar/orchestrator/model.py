"""The unit language model: a plain transformers causal LM over the unit vocabulary.

Built from ``cfg.orchestrator`` by :func:`build_unit_lm` (Llama or Qwen2 configs, both natively
supported by transformers and vLLM). Saved with :func:`save_unit_lm` as an ordinary HF folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``generation_config.json``) plus
``streamchar.json`` (the F0 buckets and the training summary), so ``AutoModelForCausalLM`` and
``AutoTokenizer.from_pretrained`` load it without custom code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from streamchar.data.phonemes import F0Buckets
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


def load_vocab(folder: str | Path) -> UnitVocabulary:
    """The unit vocabulary of a saved orchestrator, checked against its tokenizer."""
    return _load_vocab(Path(folder))[0]


def _load_vocab(folder: Path) -> tuple[UnitVocabulary, dict]:
    from transformers import AutoTokenizer

    if not (folder / "config.json").is_file():
        raise OrchestratorCheckpointError(
            f"{folder} holds no orchestrator (no config.json); train one with `streamchar train orchestrator` "
            "or set orchestrator.path to the folder it wrote."
        )
    sidecar = json.loads((folder / SIDECAR).read_text()) if (folder / SIDECAR).is_file() else {}
    vocab = UnitVocabulary(F0Buckets(**sidecar["f0_buckets"]) if "f0_buckets" in sidecar else None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise OrchestratorCheckpointError(
            f"Could not load the tokenizer in {folder} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "the folder is damaged or incomplete, so copy it again or retrain."
        ) from err
    vocab.check_tokenizer(tokenizer, folder)
    return vocab, sidecar


def load_unit_lm(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, vocab, sidecar) from a folder written by :func:`save_unit_lm`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    vocab, sidecar = _load_vocab(folder)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 13 MB model needs no progress bar in every command's output
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except Exception as err:
        raise OrchestratorCheckpointError(
            f"Could not load the orchestrator in {folder} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "the folder is damaged or incomplete, so copy it again or retrain."
        ) from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if model.config.vocab_size != len(vocab):
        raise OrchestratorCheckpointError(
            f"The orchestrator in {folder} has {model.config.vocab_size} tokens but the unit vocabulary has "
            f"{len(vocab)}; it was made by another StreamChar version, so retrain it."
        )
    return model.to(device).eval(), vocab, sidecar
