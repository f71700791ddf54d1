"""Flow-matching maths, guidance and the Euler sampler (cached and uncached)."""

import math

import torch

from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.flow import (
    EulerSampler,
    FlowMatching,
    Guidance,
    sampling_grid,
    set_reference_for_guidance,
    shift_timesteps,
)
from tests.denoiser_helpers import random_window, tiny_dit


def test_interpolation_target_and_x0_agree():
    flow = FlowMatching()
    x0, noise = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    t = torch.tensor([0.0, 0.3, 1.0])
    x_t = flow.interpolate(x0, noise, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], noise[2])
    assert torch.allclose(flow.predict_x0(x_t, flow.velocity_target(x0, noise), t), x0, atol=1e-6)


def test_logit_normal_and_shift():
    flow = FlowMatching(logit_mean=0.5, logit_std=0.8)
    t = flow.sample_timesteps(200_000, torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    grid = torch.linspace(0, 1, 11)
    shifted = shift_timesteps(grid, 3.0)
    assert torch.allclose(shifted[[0, -1]], grid[[0, -1]]) and (shifted[1:-1] > grid[1:-1]).all()
    assert torch.allclose(shift_timesteps(grid, 1.0), grid)
    g = sampling_grid(4, 3.0)
    assert g[0] == 1 and g[-1] == 0 and (g[1:] < g[:-1]).all()


class _PointMass(torch.nn.Module):
    """Exact velocity field of a data distribution that is one point (per item)."""

    num_units = 5

    def __init__(self, target_video, target_audio):
        super().__init__()
        self.tv, self.ta = target_video, target_audio

    def forward(self, video, audio, timesteps, conditions, context=None, audio_valid=None):
        n = video.shape[0] // self.tv.shape[0]
        tv = timesteps[0].clamp_min(1e-6).view(-1, 1, 1, 1, 1)
        ta = timesteps[1].clamp_min(1e-6).view(-1, 1, 1)
        v_video = (video - self.tv.repeat(n, 1, 1, 1, 1)) / tv
        v_audio = (audio - self.ta.repeat(n, 1, 1)) / ta
        return v_video, v_audio


def test_euler_reaches_the_point_mass_from_any_noise():
    target_v, target_a = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 6)
    model = _PointMass(target_v, target_a)
    cond = Conditions(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    for steps, shift in [(1, 1.0), (4, 3.0)]:
        video, audio = EulerSampler(steps, shift).sample(
            model, torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 6), cond
        )
        assert torch.allclose(video, target_v, atol=1e-5) and torch.allclose(audio, target_a, atol=1e-5)
    given = torch.randn(2, 3, 6)
    _, audio = EulerSampler(3).sample(
        model, torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 6), cond, given_audio=given
    )
    assert torch.equal(audio, given)  # audio-driven: the given speech is kept


def test_guidance_combination():
    g = Guidance(conditions=3.0, ref_image=1.0, ref_voice=2.0)
    assert g.num_branches == 3 and [n for n, _ in g.branches()] == ["conditions", "ref_voice"]
    full, no_cond, no_voice = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    out = g.combine(torch.cat([full, no_cond, no_voice]), 2)
    assert torch.allclose(out, full + 2 * (full - no_cond) + 1 * (full - no_voice))
    drops = g.drops(2)
    assert drops["conditions"].tolist() == [False, False, True, True, False, False]
    assert drops["ref_voice"].tolist() == [False, False, False, False, True, True]
    assert not drops["ref_image"].any()
    assert Guidance().num_branches == 1


def test_guided_sampling_with_cache_equals_sampling_with_context():
    model = tiny_dit()
    video, audio, _, cond, ctx = random_window()
    sampler = EulerSampler(steps=3, guidance=Guidance(conditions=2.0, ref_image=1.5, ref_voice=1.5))
    full = sampler.sample(model, video, audio, cond, context=ctx)
    n = sampler.guidance.num_branches
    with torch.no_grad(), model.streaming():
        set_reference_for_guidance(model, sampler.guidance, ctx.ref_video, ctx.ref_voice, ctx.ref_voice_valid)
        model.set_sink(ctx.sink_video.repeat(n, 1, 1, 1, 1), ctx.sink_audio.repeat(n, 1, 1))
        model.set_motion(ctx.motion_video.repeat(n, 1, 1, 1, 1), ctx.motion_audio.repeat(n, 1, 1))
        cached = sampler.sample(model, video, audio, cond)
    assert (full[0] - cached[0]).abs().max() < 1e-5 and (full[1] - cached[1]).abs().max() < 1e-5
    assert math.isfinite(full[0].abs().max().item())


def test_model_predict_x0_matches_the_flow_formula():
    model = tiny_dit()
    video, audio, t, cond, ctx = random_window()
    with torch.no_grad():
        v_video, v_audio = model(video, audio, t, cond, ctx)
        x0_video, x0_audio = model.predict_x0(video, audio, t, cond, ctx)
    flow = FlowMatching()
    assert torch.allclose(x0_video, flow.predict_x0(video, v_video, t[0]), atol=1e-6)
    assert torch.allclose(x0_audio, flow.predict_x0(audio, v_audio, t[1]), atol=1e-6)
