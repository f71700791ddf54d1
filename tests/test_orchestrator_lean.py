"""The lean decode step (orchestrator/lean.py) against transformers' own forward: logits over a growing
context, whole plans of the shipped unit LM token for token, weight updates seen, and what it refuses."""

from pathlib import Path

import pytest
import torch

from streamchar.config import load_config
from streamchar.loaders import load_unit_lm
from streamchar.orchestrator.backends import HFBackend
from streamchar.orchestrator.lean import LeanDecoder, lean_supported
from streamchar.orchestrator.model import build_unit_lm
from streamchar.orchestrator.session import Orchestrator, hf_backend_options
from streamchar.orchestrator.text import UnitVocabulary
from tests.test_orchestrator import _run

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny" / "orchestrator"
APPENDS = [40, 1, 2, 3, 1, 5, 9, 16, 1, 20, 2, 1]  # a prompt, frames, a turn


def _model(architecture: str, kv_heads: int = 2):
    cfg = load_config(None, [f"orchestrator.architecture={architecture}", "orchestrator.hidden_size=64",
                             "orchestrator.layers=2", "orchestrator.heads=4", f"orchestrator.kv_heads={kv_heads}",
                             "orchestrator.intermediate_size=96"])  # fmt: skip
    torch.manual_seed(0)
    model = build_unit_lm(cfg.orchestrator, UnitVocabulary()).eval()
    if architecture == "qwen2":  # its q/k/v biases start at zero: make them count
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("architecture,kv_heads", [("llama", 2), ("llama", 4), ("qwen2", 1)])
def test_lean_logits_are_transformers_logits(architecture, kv_heads):
    """Appends of 1-40 tokens into the growing cache, then a reset, and without a KV cache: the logits of
    transformers' forward over the whole context, every time."""
    model = _model(architecture, kv_heads)
    assert lean_supported(model)
    lean, lean_nocache = HFBackend(model, lean=True), HFBackend(model, lean=True, kv_cache=False)
    g = torch.Generator().manual_seed(1)
    context: list[int] = []
    for round_ in range(2):
        for backend in (lean, lean_nocache):
            backend.reset([])
        context = []
        for n in APPENDS[round_:]:
            tokens = torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()
            context += tokens
            for backend in (lean, lean_nocache):
                backend.append(tokens)
            with torch.no_grad():
                reference = model(torch.tensor([context])).logits[0, -1]
            torch.testing.assert_close(lean.logits(), reference, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(lean_nocache.logits(), reference, atol=1e-4, rtol=1e-4)
    assert len(lean) == len(context)


def test_lean_step_sees_weight_updates_and_refuses_what_it_does_not_cover():
    model = _model("llama")
    decoder = LeanDecoder(model, max_tokens=64)
    tokens = [1, 5, 9, 30]
    before = decoder.forward(tokens, 0)
    with torch.no_grad():  # an optimiser step, in place
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
        reference = model(torch.tensor([tokens])).logits[0, -1]
    after = decoder.forward(tokens, 0)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="over the lean decoder's 64"):
        decoder.forward([1] * 10, 60)
    with_mlp_bias = _model("llama")
    with_mlp_bias.config.mlp_bias = True
    assert not lean_supported(with_mlp_bias)
    half = _model("llama").to(torch.bfloat16)
    assert not lean_supported(half)
    with pytest.raises(ValueError, match="orchestrator.lean_decode=off"):
        LeanDecoder(half)
    cfg = load_config()
    assert hf_backend_options(cfg, half)["lean"] is False  # auto falls back to transformers
    assert hf_backend_options(cfg, model)["lean"] is True
    off = load_config(None, ["orchestrator.lean_decode=off"])
    assert hf_backend_options(off, model)["lean"] is False


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="the tiny orchestrator is not shipped")
def test_shipped_orchestrator_plans_the_same_units_with_the_lean_step():
    """Greedy plans over the shipped LM, word by word and across turns: identical frame for frame."""
    model, vocab, _ = load_unit_lm(SHIPPED)
    texts = [
        "Good morning! The strange bracelet is on the table, near 3 yellow cups.",
        "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    ]
    plans = {}
    for lean in (False, True):
        orch = Orchestrator(HFBackend(model, lean=lean), vocab, 12)
        plans[lean] = [_run(orch, [w + " " for w in text.split()]) for text in texts]
    for plain, lean in zip(plans[False], plans[True], strict=True):
        assert len(plain) > 50 and torch.equal(plain, lean)
