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

import functools
import inspect
import logging
from collections.abc import Sequence
from typing import Protocol

import torch

from streamchar.orchestrator.pointer import choose_move

logger = logging.getLogger(__name__)


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model, cache) -> dict:
    """The KV cache as the model's forward takes it: ``cache=`` (transformers 5.2x; ``past_key_values`` is
    deprecated there and warns on every pass) or ``past_key_values=`` (older releases)."""
    return {_cache_keyword(type(model)): cache}


def returned_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


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
    """In-process transformers model with a KV cache kept from one token (and chunk) to the next.

    The orchestrator reads a few tokens per audio frame, one forward pass each, so on a GPU a pass costs
    its kernel launches more than its FLOPs. ``static=True`` keeps the context in a preallocated
    ``StaticCache`` and feeds each short append padded to a bucket length (1, 2, 4, 8 or 16 tokens) at
    fixed cache positions, so the pass has a handful of shapes that ``torch.compile`` (``compile=True``;
    with CUDA graphs on a GPU) captures once. Padding is exact: the padded tokens sit after the real ones,
    which never attend to them, and the next append overwrites them before any query can reach them.
    Longer appends (a prompt, a new turn) run eagerly into the same cache. ``lean=True`` runs the same
    arithmetic through :class:`~streamchar.orchestrator.lean.LeanDecoder` instead of transformers' module
    layers (the per-frame pass on a CPU is mostly their overhead). ``kv_cache=False`` recomputes the whole
    context for every token (the ablation the benchmark measures).
    """

    BUCKETS = (1, 2, 4, 8, 16)

    def __init__(self, model, temperature: float = 0.0, seed: int = 0, kv_cache: bool = True,
                 static: bool = False, compile: bool = False, max_tokens: int = 4096,
                 lean: bool = False) -> None:  # fmt: skip
        self.model = model
        self.kv_cache = kv_cache
        self.device = next(model.parameters()).device
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.static = static and kv_cache
        self.max_tokens = max_tokens
        self._static_cache = None
        self._lean = None
        if lean and not self.static:
            from streamchar.orchestrator.lean import LeanDecoder

            self._lean = LeanDecoder(model, max_tokens)
        self._step = model.forward
        if self.static and compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._step = _compiled_forward(model, mode)
        self.reset([])

    def reset(self, tokens: Sequence[int]) -> None:
        self._tokens: list[int] = []
        self._cache = None
        self._computed = 0  # tokens already in the KV cache
        self._logits: torch.Tensor | None = None
        if self._static_cache is not None:
            with torch.inference_mode():  # its tensors were made in inference mode
                self._static_cache.reset()
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
            if self._lean is not None:
                self._logits = self._lean_logits()
            else:
                self._logits = self._static_logits() if self.static else self._dynamic_logits()
        return self._logits

    def _lean_logits(self) -> torch.Tensor:
        start = self._computed if self.kv_cache else 0
        logits = self._lean.forward(self._tokens[start:], start)
        self._computed = len(self._tokens)
        return logits.float().cpu()

    def _dynamic_logits(self) -> torch.Tensor:
        from transformers import DynamicCache

        if self._cache is None or not self.kv_cache:
            self._cache, self._computed = DynamicCache(), 0
        pending = torch.tensor([self._tokens[self._computed :]], device=self.device)
        out = self.model(input_ids=pending, use_cache=True, **cache_argument(self.model, self._cache))
        self._cache = returned_cache(out)
        self._computed = len(self._tokens)
        return out.logits[0, -1].float().cpu()

    def _static_logits(self) -> torch.Tensor:
        from transformers import StaticCache

        pending = self._tokens[self._computed :]
        n, start = len(pending), self._computed
        bucket = next((b for b in self.BUCKETS if b >= n), None)
        if start + (bucket or n) > self.max_tokens:
            raise ValueError(
                f"The orchestrator's context reached {start + n} tokens, over its static cache of "
                f"{self.max_tokens}; raise orchestrator.max_positions or lower orchestrator.max_context_tokens."
            )
        if self._static_cache is None:
            self._static_cache = StaticCache(config=self.model.config, max_cache_len=self.max_tokens)
        if bucket is None or start == 0:  # a prompt or a new turn: one eager pass of its own length
            ids, step = pending, self.model.forward
        else:  # a frame's few tokens: padded to the bucket (see the class docstring)
            ids, step = pending + [pending[-1]] * (bucket - n), self._step
        positions = torch.arange(start, start + len(ids), device=self.device)
        out = step(input_ids=torch.tensor([ids], device=self.device), cache_position=positions,
                   position_ids=positions[None], use_cache=True,
                   **cache_argument(self.model, self._static_cache))  # fmt: skip
        self._computed = len(self._tokens)
        if len(ids) > n:  # a cache that counts what it was given counts the padding: rewind it, in place
            for layer in getattr(self._static_cache, "layers", ()):  # (older ones write at cache_position)
                if hasattr(layer, "cumulative_length"):
                    layer.cumulative_length.fill_(self._computed)
        return out.logits[0, n - 1].float().cpu()  # read before a CUDA graph's next replay overwrites it

    def next_token(self, moves: Sequence[Sequence[int]]) -> int:
        return choose_move(self.logits(), moves, self.temperature, self.generator)


def _compiled_forward(model, mode: str):
    """One compiled forward per model, kept on the model (every session's backend shares it)."""
    compiled = getattr(model, "_streamchar_compiled_forward", None)
    if compiled is None:
        compiled = torch.compile(model.forward, mode=mode, dynamic=False)
        model._streamchar_compiled_forward = compiled
    return compiled


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
                 **hf_options):  # fmt: skip
    """``hf_options``: :class:`HFBackend`'s ``kv_cache``, ``static``, ``compile`` and ``max_tokens``."""
    if name == "hf":
        return HFBackend(model, temperature=temperature, seed=seed, **hf_options)
    if name == "vllm":
        return VLLMBackend(path, temperature=temperature, seed=seed)
    raise ValueError(f"orchestrator.backend must be hf or vllm, got '{name}'.")
