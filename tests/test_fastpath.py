"""The fast path of the streaming step: a fixed-layout cache, the mask-free step, bf16 weights and a compiled
step all give the velocity the plain path gives (the plain path itself is tested against full-window
recomputation in test_denoiser.py)."""

from __future__ import annotations

import pytest
import torch

from streamchar.memory.cache import StaticContextCache
from tests.denoiser_helpers import random_window, tiny_dit


def _stream(model, ctx, video, audio, t, cond, cache=None, sink=True, motion=True, steps=2):
    """Velocities of ``steps`` steps (each on new noise) of one chunk inside a streaming block."""
    out = []
    with torch.no_grad(), model.streaming(cache):
        model.set_reference(ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid, ctx.ref_image_valid)
        if sink:
            model.set_sink(ctx.sink_video, ctx.sink_audio)
        if motion:
            model.set_motion(ctx.motion_video, ctx.motion_audio)
        for step in range(steps):
            velocity = model(video * (1 + step), audio, (t[0] / (1 + step), t[1]), cond)
            out.append(
                tuple(v.clone() for v in velocity)
            )  # a CUDA graph's outputs live until its next replay
    return out


def _close(a, b, tol):
    for (va, aa), (vb, ab) in zip(a, b, strict=True):
        assert (va - vb).abs().max() < tol and (aa - ab).abs().max() < tol, (va - vb).abs().max()


@pytest.mark.parametrize("segments", [(True, True), (False, True), (False, False)])
def test_static_cache_equals_the_growing_cache(segments):
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    sink, motion = segments
    plain = _stream(model, ctx, video, audio, t, cond, sink=sink, motion=motion)
    cache = model.static_cache()
    static = _stream(model, ctx, video, audio, t, cond, cache, sink=sink, motion=motion)
    _close(plain, static, 1e-5)
    # the step always reads the same buffers: fixed shapes and addresses from the first chunk on
    assert cache.prefix(0, 3)[0] is cache.keys[0] and cache.keys[0].shape[2] == sum(cache.sizes)
    assert cache.all_valid(3) == (sink and motion and bool(ctx.ref_voice_valid.all()))


def test_mask_free_step_when_everything_is_valid_equals_the_masked_step(monkeypatch):
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    ctx = type(ctx)(**{**ctx.__dict__, "ref_voice_valid": torch.ones_like(ctx.ref_voice_valid)})
    seen = []
    original = model.cached_step

    def spy(*args, **kwargs):
        seen.append(args[-1])
        return original(*args, **kwargs)

    static = _stream(model, ctx, video, audio, t, cond, model.static_cache())
    monkeypatch.setattr(model, "cached_step", spy)
    maskless = _stream(model, ctx, video, audio, t, cond, model.static_cache())
    assert seen and all(seen)  # the mask was dropped
    monkeypatch.setattr(model, "cached_step", lambda *a, **k: original(*a[:-1], False, **k))
    masked = _stream(model, ctx, video, audio, t, cond, model.static_cache())
    _close(static, maskless, 1e-6)
    _close(masked, maskless, 1e-5)


def test_static_cache_refuses_a_segment_of_the_wrong_size():
    cache = StaticContextCache((4, 6, 2))
    k = [torch.zeros(1, 2, 5, 8)]
    with pytest.raises(ValueError, match="laid out for 4"):
        cache.set(0, k, k, torch.ones(1, 5, dtype=torch.bool))


def test_bf16_weights_stay_close_to_float32():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    reference = _stream(model, ctx, video, audio, t, cond)
    half = tiny_dit().to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        low = _stream(half, ctx, video, audio, t, cond, half.static_cache())
    for (va, aa), (vb, ab) in zip(reference, low, strict=True):
        scale = va.abs().max()
        assert vb.dtype == torch.bfloat16
        assert (va - vb.float()).abs().max() < 0.05 * scale and (
            aa - ab.float()
        ).abs().max() < 0.05 * aa.abs().max()


@pytest.mark.parametrize(
    "mode", ["default", pytest.param("reduce-overhead", marks=pytest.mark.gpu, id="cuda-graphs")]
)
def test_compiled_step_equals_eager(mode):
    """Inductor on this machine; with ``reduce-overhead``, the step replayed as a CUDA graph (on CUDA)."""
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    if mode == "reduce-overhead":
        model = model.cuda()
        move = lambda x: x.cuda() if torch.is_tensor(x) else x  # noqa: E731
        ctx = type(ctx)(**{k: move(v) for k, v in ctx.__dict__.items()})
        video, audio, t = video.cuda(), audio.cuda(), tuple(x.cuda() for x in t)
        cond = type(cond)(cond.units.cuda(), cond.speaking.cuda())
    eager = _stream(model, ctx, video, audio, t, cond, model.static_cache(), steps=4)
    model.compile_step(mode)
    try:
        compiled = _stream(model, ctx, video, audio, t, cond, model.static_cache(), steps=4)
    finally:
        model.compile_step(None)
    _close(eager, compiled, 1e-4 if mode == "default" else 1e-3)


def test_the_streaming_step_traces_as_one_graph():
    """No graph break: one compiled graph, so a CUDA graph can replay the whole step."""
    from streamchar.denoiser.dit import CURRENT

    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    cache = model.static_cache()
    with torch.no_grad(), model.streaming(cache):
        model.set_reference(ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid, ctx.ref_image_valid)
        model.set_motion(ctx.motion_video, ctx.motion_audio)
        keys, values, valid, ids = zip(
            *[cache.prefix(layer, CURRENT) for layer in range(len(model.blocks))], strict=True
        )
        geometry = model.chunk_geometry(video.shape[2], audio.shape[1], video.device).as_tuple()
        explained = torch._dynamo.explain(model.cached_step)(video, audio, t[0], t[1], cond.units, cond.speaking,
                                                             None, list(keys), list(values), valid[0], ids[0],
                                                             geometry, False)  # fmt: skip
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_static_cache_keeps_its_segments_when_the_dtype_changes_and_resets_in_place():
    """A cache filled in float32 that meets bf16 K/V (the model cast between chunks) re-allocates with every
    segment carried over, never with a silently empty reference; reset keeps the buffers."""
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    cache = model.static_cache()
    with torch.no_grad(), model.streaming(cache):
        model.set_reference(ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid, ctx.ref_image_valid)
        model.to(torch.bfloat16)
        with torch.autocast("cpu", torch.bfloat16):
            model.set_sink(ctx.sink_video, ctx.sink_audio)
            model.set_motion(ctx.motion_video, ctx.motion_audio)
            mixed = model(video, audio, t, cond)
    assert cache.keys[0].dtype == cache.values[0].dtype == torch.bfloat16 and set(cache.segments) == {0, 1, 2}
    with torch.autocast("cpu", torch.bfloat16):
        fresh = _stream(model, ctx, video, audio, t, cond, model.static_cache(), steps=1)[0]
    scale = fresh[0].float().abs().max()
    assert (
        mixed[0].float() - fresh[0].float()
    ).abs().max() < 0.05 * scale  # bf16 rounding, not a lost segment
    buffer = cache.keys[0]
    cache.reset()
    assert not cache.segments and not cache.valid.any() and cache.keys[0] is buffer


@pytest.mark.parametrize("compiled", [False, True])
def test_orchestrator_static_cache_with_padded_appends_gives_the_dynamic_logits(compiled):
    """Appends of 1-16 tokens padded to a bucket, longer ones eager, a reset: the logits the growing cache
    gives, every time."""
    from streamchar.config import load_config
    from streamchar.orchestrator.backends import HFBackend
    from streamchar.orchestrator.model import build_unit_lm
    from streamchar.orchestrator.text import UnitVocabulary

    torch.manual_seed(0)
    vocab = UnitVocabulary()
    model = build_unit_lm(load_config("tiny").orchestrator, vocab).eval()
    dynamic = HFBackend(model)
    static = HFBackend(model, static=True, compile=compiled, max_tokens=256)
    g = torch.Generator().manual_seed(1)
    for appends in (
        [40, 1, 2, 3, 1, 5, 9, 16, 1, 20, 2],
        [7, 1, 1, 4],
    ):  # a prompt, frames, a turn; then reset
        for backend in (dynamic, static):
            backend.reset([])
        for n in appends:
            tokens = torch.randint(0, len(vocab), (n,), generator=g).tolist()
            for backend in (dynamic, static):
                backend.append(tokens)
            torch.testing.assert_close(static.logits(), dynamic.logits(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="static cache of 256"):
        static.append([1] * 300)
        static.logits()
