"""A lean decode step for the unit LM: the transformers Llama / Qwen2 forward written out in plain tensor
ops over the model's own weights, with a preallocated KV cache.

The orchestrator asks the LM for a token or two per audio frame; at the tiny preset's size (4 layers of
256) a pass is a handful of small matrix products, and on a CPU transformers' module layers, mask
building and cache bookkeeping cost several times the arithmetic (about 8 ms a pass, measured by
``bench/cpu_breakdown.py``). :class:`LeanDecoder` does the same arithmetic with the query, key and value
projections fused into one product and the gate and up projections into another, and writes keys and
values into fixed tensors: the same logits up to float rounding (``tests/test_orchestrator_lean.py``
compares it with the transformers model, token by token and over whole plans).

Only the decoder layouts the orchestrator builds (:func:`streamchar.orchestrator.model.lm_config`) are
covered: RMSNorm, rotary positions (default rope), grouped-query attention with optional q/k/v biases
(Qwen2), a SwiGLU MLP and a (tied or untied) output head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEAN_MODEL_TYPES = frozenset({"llama", "qwen2"})


def lean_supported(model) -> bool:
    """Whether :class:`LeanDecoder` reproduces ``model`` (a Llama or Qwen2 causal LM with default rope, SiLU,
    no sliding window, no MLP biases, in float32)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "hidden_act", "silu") != "silu":
        return False
    if getattr(config, "mlp_bias", False):  # the lean MLP has no biases
        return False
    return next(model.parameters()).dtype == torch.float32


class _Layer:
    """One decoder layer's weights, fused where two products share an input."""

    def __init__(self, layer) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        self.qkv_bias = torch.cat(biases).detach() if biases[0] is not None else None
        self.out = attn.o_proj.weight.detach()
        self.out_bias = attn.o_proj.bias.detach() if attn.o_proj.bias is not None else None
        self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        self.down = mlp.down_proj.weight.detach()
        self.norm_attn = layer.input_layernorm.weight.detach()
        self.norm_mlp = layer.post_attention_layernorm.weight.detach()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LeanWeights:
    """The model's weights as the lean step reads them (q/k/v and gate/up fused) and its rotary tables.

    Built once per model and version of its weights (:meth:`of`): every session's decoder shares them.
    """

    def __init__(self, model) -> None:
        if not lean_supported(model):
            raise ValueError(
                "The lean decode step covers float32 Llama and Qwen2 unit LMs with default rope; use "
                "orchestrator.lean_decode=off for this checkpoint."
            )
        config, inner = model.config, model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.max_tokens = config.max_position_embeddings
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach()
            self.head = model.lm_head.weight.detach()
            self.final_norm = inner.norm.weight.detach()
            self.layers = [_Layer(layer) for layer in inner.layers]
            positions = torch.arange(self.max_tokens, device=self.embed.device)[None]
            cos, sin = inner.rotary_emb(self.embed[None, :1], positions)  # transformers' own tables
        self.cos, self.sin = cos[0], sin[0]  # [max_tokens, head_dim]

    @staticmethod
    def version(parameters: list[torch.Tensor]) -> tuple:
        """Changes whenever a parameter is updated in place (an optimiser step, ``load_state_dict``) or its data is
        moved or cast (``.to``); a Parameter object swapped for a new one is not seen: rebuild the backend then."""
        return tuple((p.data_ptr(), p._version) for p in parameters)

    @classmethod
    def of(cls, model) -> LeanWeights:
        """The model's lean weights, rebuilt only when its parameters changed since the last call."""
        cached = getattr(model, "_streamchar_lean", None)
        if cached is not None and cls.version(cached[0]) == cached[1]:
            return cached[2]
        parameters = list(model.parameters())  # walking the module tree costs more than the check itself
        weights = cls(model)
        model._streamchar_lean = (parameters, cls.version(parameters), weights)
        return weights


class LeanDecoder:
    """Next-token logits for a growing token sequence, over a transformers Llama / Qwen2 model's weights.

    ``forward(tokens, start)`` runs ``tokens`` at positions ``start, start + 1, ...`` against the keys and
    values of positions ``< start`` already held, stores theirs, and returns the last token's logits.
    Positions at or past ``start`` are simply overwritten, so a caller that starts a new context passes
    ``start=0``. Each decoder holds its own KV cache (``max_tokens`` positions, allocated once).
    """

    def __init__(self, model, max_tokens: int | None = None) -> None:
        self.model = model
        weights = LeanWeights.of(model)
        self.max_tokens = min(max_tokens or weights.max_tokens, weights.max_tokens)
        shape = (len(weights.layers), weights.kv_heads, self.max_tokens, weights.head_dim)
        self.keys = torch.zeros(shape, device=weights.embed.device)
        self.values = torch.zeros(shape, device=weights.embed.device)

    @torch.inference_mode()
    def forward(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits ``[V]`` after ``tokens`` placed at ``start`` (keys and values below ``start`` are kept)."""
        w = LeanWeights.of(self.model)
        n = len(tokens)
        end = start + n
        if not tokens:
            raise ValueError("The lean decode step needs at least one token.")
        if end > self.max_tokens:
            raise ValueError(
                f"The orchestrator's context reached {end} tokens, over the lean decoder's {self.max_tokens}; "
                "raise orchestrator.max_positions or lower orchestrator.max_context_tokens."
            )
        h, kv, d = w.heads, w.kv_heads, w.head_dim
        group = h // kv
        x = w.embed[torch.tensor(tokens, dtype=torch.long, device=w.embed.device)]  # [n, C]
        cos, sin = w.cos[start:end], w.sin[start:end]
        mask = None
        if n > 1:  # causal within the new tokens; everything before start is visible
            mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(start)
        for i, layer in enumerate(w.layers):
            y = _rms_norm(x, layer.norm_attn, w.eps)
            q, k, v = F.linear(y, layer.qkv, layer.qkv_bias).split((h * d, kv * d, kv * d), dim=-1)
            q = _rotate(q.view(n, h, d).transpose(0, 1), cos, sin)  # [h, n, d]
            self.keys[i, :, start:end] = _rotate(k.view(n, kv, d).transpose(0, 1), cos, sin)
            self.values[i, :, start:end] = v.view(n, kv, d).transpose(0, 1)
            # grouped-query attention without repeating keys: head j reads key/value head j // group
            q = q.reshape(kv, group * n, d)
            scores = torch.bmm(q, self.keys[i, :, :end].transpose(1, 2)).mul_(w.scale)  # [kv, g*n, end]
            if mask is not None:
                scores = (
                    scores.view(kv, group, n, end).masked_fill_(~mask, float("-inf")).view(kv, group * n, end)
                )
            attended = torch.bmm(scores.softmax(-1), self.values[i, :, :end]).view(h, n, d)
            x = x + F.linear(attended.transpose(0, 1).reshape(n, h * d), layer.out, layer.out_bias)
            y = _rms_norm(x, layer.norm_mlp, w.eps)
            gate, up = F.linear(y, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        return F.linear(_rms_norm(x[-1], w.final_norm, w.eps), w.head)
