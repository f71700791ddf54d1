"""LLM backends: where the unit LM runs. Both apply the same pointer constraint (a list of allowed
token ids per step, from :class:`~streamchar.orchestrator.pointer.TurnPointer`).

- ``hf`` (default): the model in this process, with a KV cache; tokens are fed lazily, so a
  forward pass covers everything appended since the last prediction.
- ``vllm`` (optional extra ``streamchar[vllm]``): the same checkpoint in a vLLM engine; each step
  asks for one token with ``SamplingParams(allowed_token_ids=...)`` and relies on vLLM's automatic
  prefix caching for the growing context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import torch

from streamchar.orchestrator.pointer import mask_logits

logger = logging.getLogger(__name__)


class LLMBackend(Protocol):
    """A causal LM that extends one token sequence under a constraint."""

    def reset(self, tokens: Sequence[int]) -> None:
        """Replace the context with ``tokens``."""
        ...

    def append(self, tokens: Sequence[int]) -> None:
        """Extend the context (nothing is computed until :meth:`next_token`)."""
        ...

    def next_token(self, allowed: Sequence[int]) -> int:
        """The next token, restricted to ``allowed`` (greedy or sampled per the backend's settings)."""
        ...

    def __len__(self) -> int:
        """Tokens in the context."""
        ...


def choose(
    logits: torch.Tensor, allowed: Sequence[int], temperature: float, generator: torch.Generator | None
) -> int:
    """Greedy (``temperature`` 0) or sampled token from ``logits`` ``[V]`` within ``allowed``."""
    masked = mask_logits(logits.float(), allowed)
    if temperature <= 0:
        return int(masked.argmax())
    probs = torch.softmax(masked / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class HFBackend:
    """In-process transformers model with a ``DynamicCache``."""

    def __init__(self, model, temperature: float = 0.0, seed: int = 0) -> None:
        self.model = model
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

            if self._cache is None:
                self._cache = DynamicCache()
            pending = torch.tensor([self._tokens[self._computed :]], device=self.device)
            out = self.model(input_ids=pending, past_key_values=self._cache, use_cache=True)
            self._cache = out.past_key_values
            self._computed = len(self._tokens)
            self._logits = out.logits[0, -1].float().cpu()
        return self._logits

    def next_token(self, allowed: Sequence[int]) -> int:
        return choose(self.logits(), allowed, self.temperature, self.generator)


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
        self.llm = LLM(model=str(path), enable_prefix_caching=True, seed=seed, **engine_kwargs)
        self.temperature = temperature
        self.seed = seed
        self._tokens: list[int] = []
        self._steps = 0

    def reset(self, tokens: Sequence[int]) -> None:
        self._tokens = [int(t) for t in tokens]

    def append(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(int(t) for t in tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def next_token(self, allowed: Sequence[int]) -> int:
        params = self._sampling(
            max_tokens=1, temperature=self.temperature, allowed_token_ids=list(allowed),
            seed=None if self.temperature <= 0 else self.seed + self._steps,
        )  # fmt: skip
        self._steps += 1
        outputs = self.llm.generate([{"prompt_token_ids": list(self._tokens)}], params, use_tqdm=False)
        return int(outputs[0].outputs[0].token_ids[0])


def make_backend(name: str, model=None, path: str | None = None, temperature: float = 0.0, seed: int = 0):
    if name == "hf":
        return HFBackend(model, temperature=temperature, seed=seed)
    if name == "vllm":
        return VLLMBackend(path, temperature=temperature, seed=seed)
    raise ValueError(f"orchestrator.backend must be hf or vllm, got '{name}'.")
