"""The joint DiT: attention backends, window mask, cached context, gradient isolation, patches."""

import pytest
import torch

from streamchar.denoiser.attention import WindowMask, attend, naive_attention
from streamchar.denoiser.dit import Conditions, JointDiT, count_parameters
from streamchar.memory.window import CURRENT, MOTION, REFERENCE, SINK
from tests.denoiser_helpers import TL, random_window, tiny_dit


def _window_mask(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    segments = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 6)
    valid = torch.rand(b, len(segments), generator=g) > 0.3
    valid[:, segments == 3] = True
    return WindowMask(segments, segments, valid, valid)


def _qkv(b=2, h=2, n=18, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def _explicit_reference(q, k, v, mask: WindowMask):
    """Attention written out query by query in float64 over the keys each query may see."""
    out = torch.zeros_like(q, dtype=torch.float64)
    b, h, n, d = q.shape
    for bi in range(b):
        for qi in range(n):
            keys = [ki for ki in range(n) if mask.k_segments[ki] <= mask.q_segments[qi]
                    and (mask.k_valid[bi, ki] or not mask.q_valid[bi, qi])]  # fmt: skip
            for hi in range(h):
                s = torch.stack([q[bi, hi, qi].double() @ k[bi, hi, ki].double() for ki in keys]) / d**0.5
                w = torch.softmax(s, 0)
                out[bi, hi, qi] = sum(wi * v[bi, hi, ki].double() for wi, ki in zip(w, keys, strict=True))
    return out


def test_naive_attention_equals_explicit_reference():
    q, k, v = _qkv()
    mask = _window_mask()
    diff = (naive_attention(q, k, v, mask.dense()).double() - _explicit_reference(q, k, v, mask)).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_backends_equal_naive(backend):
    q, k, v = _qkv()
    mask = _window_mask()
    reference = naive_attention(q, k, v, mask.dense())
    out = attend(q, k, v, mask, backend)
    diff = (out - reference).abs().max().item()
    print(f"{backend} vs naive: max abs diff {diff:.2e}")
    assert diff < 1e-5


@pytest.mark.gpu
def test_flash_equals_naive_on_gpu():
    pytest.importorskip("flash_attn")
    q, k, v = (t.cuda().half() for t in _qkv(d=64))
    segments = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 6, device="cuda")
    valid = torch.ones(2, len(segments), dtype=torch.bool, device="cuda")
    mask = WindowMask(segments, segments, valid, valid)
    reference = naive_attention(q.float(), k.float(), v.float(), mask.dense())
    assert (attend(q, k, v, mask, "flash").float() - reference).abs().max() < 2e-3


def test_window_mask_structure():
    mask = _window_mask().dense()[0, 0]
    segments = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 6)
    current = segments == 3
    assert not mask[~current][:, current].any()  # context never sees the current chunk
    assert mask[current][:, current].all()  # the current chunk is bidirectional


def test_cached_context_equals_full_recomputation():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    with torch.no_grad():
        full = model(video, audio, t, cond, ctx)
        with model.streaming():
            model.set_reference(ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid, ctx.ref_image_valid)
            model.set_sink(ctx.sink_video, ctx.sink_audio)
            model.set_motion(ctx.motion_video, ctx.motion_audio)
            cached = model(video, audio, t, cond)
            # the cache is reused across denoising steps and new noise
            again = model(video * 0.5, audio, (t[0] * 0.3, t[1]), cond)
        full_again = model(video * 0.5, audio, (t[0] * 0.3, t[1]), cond, ctx)
    for a, b in [(full[0], cached[0]), (full[1], cached[1]), (full_again[0], again[0])]:
        diff = (a - b).abs().max().item()
        assert diff < 1e-5, diff
    print(f"cached vs full: {max((full[0] - cached[0]).abs().max(), (full[1] - cached[1]).abs().max()):.2e}")


def test_first_chunk_without_sink_or_motion_matches_absent_segments():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window(first=True)
    with torch.no_grad():
        full = model(video, audio, t, cond, ctx)
        with model.streaming():
            model.set_reference(ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid, ctx.ref_image_valid)
            cached = model(video, audio, t, cond)
    assert (full[0] - cached[0]).abs().max() < 1e-5 and (full[1] - cached[1]).abs().max() < 1e-5


def test_current_chunk_never_influences_context():
    model = tiny_dit().train()
    video, audio, t, cond, ctx = random_window()
    video.requires_grad_(True)
    audio.requires_grad_(True)
    hidden = model.hidden_states(video, audio, t, cond, ctx)
    n_current = video.shape[2] * model.layout.tokens_per_frame + audio.shape[1]
    hidden[:, :-n_current].sum().backward()
    assert video.grad is not None and audio.grad is not None
    assert video.grad.abs().max() == 0 and audio.grad.abs().max() == 0
    # and the context does influence the current chunk
    ctx.motion_video.requires_grad_(True)
    out = model(video, audio, t, cond, ctx)[0]
    out.sum().backward()
    assert ctx.motion_video.grad.abs().max() > 0


def test_invalid_context_is_ignored():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window(first=True)
    with torch.no_grad():
        a = model(video, audio, t, cond, ctx)
        scrambled = type(ctx)(
            **{**ctx.__dict__, "sink_video": ctx.sink_video * 100, "motion_audio": ctx.motion_audio - 7}
        )
        b = model(video, audio, t, cond, scrambled)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_streaming_state_round_trip_and_reset():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    with torch.no_grad(), model.streaming():
        model.set_reference(ctx.ref_video, ctx.ref_voice)
        model.set_sink(ctx.sink_video, ctx.sink_audio)
        model.set_motion(ctx.motion_video, ctx.motion_audio)
        state = model.get_streaming_state()
        expected = model(video, audio, t, cond)
        model.set_motion(ctx.motion_video * 0, ctx.motion_audio * 0)
        assert not torch.allclose(model(video, audio, t, cond)[0], expected[0])
        model.set_streaming_state(state)
        assert torch.equal(model(video, audio, t, cond)[0], expected[0])
    assert not model.is_streaming
    with pytest.raises(RuntimeError, match="streaming"):
        model(video, audio, t, cond)


def test_cache_size_is_bounded_by_the_window():
    model = tiny_dit()
    _, _, _, _, ctx = random_window()
    with torch.no_grad(), model.streaming() as cache:
        model.set_reference(ctx.ref_video, ctx.ref_voice)
        model.set_sink(ctx.sink_video, ctx.sink_audio)
        sizes = []
        for step in range(6):
            model.set_motion(ctx.motion_video + step, ctx.motion_audio)
            sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1


def test_segments_order_and_reset_of_later_segments():
    model = tiny_dit()
    _, _, _, _, ctx = random_window()
    with torch.no_grad(), model.streaming() as cache:
        model.set_reference(ctx.ref_video, ctx.ref_voice)
        model.set_sink(ctx.sink_video, ctx.sink_audio)
        model.set_motion(ctx.motion_video, ctx.motion_audio)
        assert sorted(cache.segments) == [REFERENCE, SINK, MOTION]
        model.set_reference(
            ctx.ref_video, ctx.ref_voice
        )  # a new reference invalidates what attended to the old
        assert sorted(cache.segments) == [REFERENCE]
    assert CURRENT not in cache.segments


def test_patchify_round_trip_and_gradient_checkpointing_equivalence():
    model = tiny_dit()
    video = torch.randn(2, 4, 3, 8, 8)
    assert torch.equal(model.unpatchify(model.patchify(video), 3), video)
    args = random_window()
    model.train()
    ref = model(*args)
    ref_loss = ref[0].pow(2).mean() + ref[1].pow(2).mean()
    grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    model.gradient_checkpointing = True
    ck = model(*args)
    ck_loss = ck[0].pow(2).mean() + ck[1].pow(2).mean()
    ck_grads = torch.autograd.grad(ck_loss, list(model.parameters()))
    assert torch.allclose(ref_loss, ck_loss)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, ck_grads, strict=True))


def test_zero_init_starts_at_zero_velocity_and_conditions_matter_after_training_signal():
    model = tiny_dit(perturb=False)
    video, audio, t, cond, ctx = random_window()
    v_video, v_audio = model(video, audio, t, cond, ctx)
    assert v_video.abs().max() == 0 and v_audio.abs().max() == 0
    model = tiny_dit()
    other = Conditions(torch.zeros_like(cond.units), torch.zeros_like(cond.speaking))
    with torch.no_grad():
        assert not torch.allclose(model(video, audio, t, cond, ctx)[0], model(video, audio, t, other, ctx)[0])


def test_bad_sizes_are_clear():
    with pytest.raises(ValueError, match="patch size"):
        JointDiT(timeline=TL, latent_channels=4, latent_size=10, audio_dim=8, num_units=4, patch_size=4)
    with pytest.raises(ValueError, match="backend"):
        JointDiT(timeline=TL, latent_channels=4, latent_size=8, audio_dim=8, num_units=4, attention="magic")
    assert count_parameters(tiny_dit()) > 0


@pytest.mark.parametrize("backend", ["flex", "naive"])
def test_model_backends_agree(backend):
    model = tiny_dit()
    args = random_window()
    with torch.no_grad():
        ref = model(*args)
        model.set_attention_backend(backend)
        out = model(*args)
    assert (ref[0] - out[0]).abs().max() < 1e-5 and (ref[1] - out[1]).abs().max() < 1e-5


def test_context_prefix_is_reused_until_a_segment_changes():
    model = tiny_dit()
    _, _, _, _, ctx = random_window()
    with torch.no_grad(), model.streaming() as cache:
        model.set_reference(ctx.ref_video, ctx.ref_voice)
        model.set_sink(ctx.sink_video, ctx.sink_audio)
        first = cache.prefix(0, 3)
        assert cache.prefix(0, 3) is first  # every denoising step reuses one concatenation
        model.set_motion(ctx.motion_video, ctx.motion_audio)
        assert cache.prefix(0, 3) is not first and cache.prefix(0, 3)[0].shape[2] > first[0].shape[2]
        state = model.get_streaming_state()
        model.set_motion(ctx.motion_video * 0, ctx.motion_audio * 0)
        changed = cache.prefix(1, 3)[0].clone()
        model.set_streaming_state(state)
        assert not torch.equal(cache.prefix(1, 3)[0], changed)  # restoring a state invalidates the reuse
