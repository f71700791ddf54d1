"""LLM backends: where the unit LM runs. Both apply the same pointer constraint (a list of allowed
token ids per step, from :class:`~streamchar.orchestrator.pointer.TurnPointer`).

- ``hf`` (default): the model in this process, with a KV cache; tokens are fed lazily, so a
  forward pass covers everything appended since the last prediction.
- ``vllm`` (optional extra ``streamchar[vllm]``): the same checkpoint in a vLLM engine; each step
  asks for one token with ``SamplingParams(allowed_token_ids=..., logprobs=N)`` (the allowed tokens'
  log-probabilities after the mask), picks the move the same way, and relies on vLLM's automatic
  prefix caching for the growing context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import torch

from streamchar.orchestrator.pointer import choose_move

logger = logging.getLogger(__name__)


class LLMBackend(Protocol):
    """A causal LM that extends one token sequence under a constraint."""

    def reset(self, tokens: Sequence[int]) -> None:
        """Replace the context with ``tokens``."""
        ...

    def append(self, tokens: Sequence[int]) -> None:
        """Extend the context (nothing is computed until :meth:`next_token`)."""
        ...

    def next_token(self, moves: Sequence[Sequence[int]]) -> int:
        """The next token within the pointer's ``moves`` (see :func:`choose_move`; greedy or sampled
        per the backend's settings)."""
        ...

    def __len__(self) -> int:
        """Tokens in the context."""
        ...


class HFBackend:
    """In-process transformers model with a ``DynamicCache`` kept from one token (and chunk) to the next;
    ``kv_cache=False`` recomputes the whole context for every token (the ablation the benchmark measures)."""

    def __init__(self, model, temperature: float = 0.0, seed: int = 0, kv_cache: bool = True) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = next(model.parameters()).device
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.reset([])

    def reset(self, tokens: Sequence[int]) -> None:
        self._tokens: list[int] = []
        self._cache = None
        self._computed = 0  # tokens already in the KV cache
        self._logits: torch.Tensor | None = None
        self.append(tokens)

    def append(self, tokens: Sequence[int]) -> None:
        if tokens:
            self._tokens.extend(int(t) for t in tokens)
            self._logits = None

    def __len__(self) -> int:
        return len(self._tokens)

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        """Next-token logits ``[V]`` for the current context (computed once per context)."""
        if self._logits is None:
            from transformers import DynamicCache

            if self._cache is None or not self.kv_cache:
                self._cache, self._computed = DynamicCache(), 0
            pending = torch.tensor([self._tokens[self._computed :]], device=self.device)
            out = self.model(input_ids=pending, past_key_values=self._cache, use_cache=True)
            self._cache = out.past_key_values
            self._computed = len(self._tokens)
            self._logits = out.logits[0, -1].float().cpu()
        return self._logits

    def next_token(self, moves: Sequence[Sequence[int]]) -> int:
        return choose_move(self.logits(), moves, self.temperature, self.generator)


class VLLMBackend:
    """The checkpoint in a vLLM engine (``pip install streamchar[vllm]``; GPU)."""

    def __init__(self, path: str, temperature: float = 0.0, seed: int = 0, **engine_kwargs) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError(
                "orchestrator.backend=vllm needs vLLM; install it with `pip install streamchar[vllm]` on a GPU "
                "machine, or use orchestrator.backend=hf."
            ) from err
        self._sampling = SamplingParams
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = LLM(model=str(path), enable_prefix_caching=True, seed=seed, **engine_kwargs)
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self._tokens: list[int] = []
        self._steps = 0

    def reset(self, tokens: Sequence[int]) -> None:
        self._tokens = [int(t) for t in tokens]

    def append(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(int(t) for t in tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def next_token(self, moves: Sequence[Sequence[int]]) -> int:
        allowed = [t for m in moves for t in m]
        params = self._sampling(
            max_tokens=1, temperature=0.0, allowed_token_ids=allowed, logprobs=len(allowed)
        )
        self._steps += 1
        outputs = self.llm.generate([{"prompt_token_ids": list(self._tokens)}], params, use_tqdm=False)
        # with logprobs_mode="processed_logprobs" the top-N after the allowed-token mask are exactly `allowed`
        logprobs = outputs[0].outputs[0].logprobs[0]
        logits = torch.full((max(allowed) + 1,), float("-inf"))
        for token, entry in logprobs.items():
            if token < len(logits):
                logits[token] = entry.logprob
        return choose_move(logits, moves, self.temperature, self.generator)


def make_backend(name: str, model=None, path: str | None = None, temperature: float = 0.0, seed: int = 0,
                 kv_cache: bool = True):  # fmt: skip
    if name == "hf":
        return HFBackend(model, temperature=temperature, seed=seed, kv_cache=kv_cache)
    if name == "vllm":
        return VLLMBackend(path, temperature=temperature, seed=seed)
    raise ValueError(f"orchestrator.backend must be hf or vllm, got '{name}'.")
