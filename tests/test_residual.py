"""The residual formulation: the DiT denoises around the priors' means (denoiser/residual.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.flow import EulerSampler, FlowMatching, Guidance
from streamchar.denoiser.objective import TeacherObjective
from streamchar.denoiser.prior import AcousticPrior, Priors, VideoPrior
from streamchar.denoiser.residual import (
    Timbre,
    VideoMean,
    correction_detail,
    residual_batch,
    timbre_of,
    to_latents,
    to_state,
    video_correction_mask,
)
from tests.denoiser_helpers import AUDIO_DIM, TL, UNITS, C, random_batch, random_window, tiny_dit

SCALES = (0.5, 0.8)


def _with_priors(cond: Conditions, seed: int = 4) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    b, L = cond.units.shape
    return Conditions(cond.units, cond.speaking, torch.randn(b, L, AUDIO_DIM, generator=g),
                      torch.randn(b, C, L, 8, 8, generator=g))  # fmt: skip


def _tiny_priors(context: int = 2) -> Priors:
    torch.manual_seed(0)
    audio = AcousticPrior(num_units=UNITS, audio_dim=AUDIO_DIM, context=context, width=16, speaker_dim=4,
                          dilations=(1, 2))  # fmt: skip
    video = VideoPrior(latent_channels=C, audio_dim=AUDIO_DIM, audio_per_frame=1,
                       motion_audio=TL.motion_audio_tokens, channels=(8, 8, 8), audio_width=8)  # fmt: skip
    with torch.no_grad():
        for p in list(audio.parameters()) + list(video.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    return Priors(audio, video)


def test_state_and_latents_are_inverse_and_plain_is_the_identity():
    model, plain = tiny_dit(residual_scales=SCALES), tiny_dit()
    video, audio, _, cond, _ = random_window()
    cond = _with_priors(cond)
    z = to_state(model, video, audio, cond.prior_video, cond.prior_audio)
    assert torch.allclose(z[0], (video - cond.prior_video) / 0.5) and torch.allclose(
        z[1], (audio - cond.prior_audio) / 0.8
    )
    back = to_latents(model, *z, cond.prior_video, cond.prior_audio)
    assert torch.allclose(back[0], video, atol=1e-6) and torch.allclose(back[1], audio, atol=1e-6)
    # keeping a share of the correction (engine.keep_correction): mu + keep * s * z, per modality
    part = to_latents(model, *z, cond.prior_video, cond.prior_audio, keep=(0.25, 0.75))
    assert torch.allclose(part[0], cond.prior_video + 0.25 * (video - cond.prior_video), atol=1e-6)
    assert torch.allclose(part[1], cond.prior_audio + 0.75 * (audio - cond.prior_audio), atol=1e-6)
    assert to_state(plain, video, audio, None, None) == (video, audio)


def _naive_outside(box, h: int, w: int) -> torch.Tensor:
    """One minus each latent cell's share inside ``box`` (fractions of the frame), cell by cell."""
    naive = torch.ones(h, w)
    for i in range(h):
        for j in range(w):
            inside_x = max(0.0, min(box[2], (j + 1) / w) - max(box[0], j / w)) * w
            inside_y = max(0.0, min(box[3], (i + 1) / h) - max(box[1], i / h)) * h
            naive[i, j] = 1.0 - inside_x * inside_y
    return naive


def test_the_video_correction_outside_the_mouth_leaves_the_mouth_to_the_prior():
    """engine.video_correction=outside_mouth: each latent cell plays the share of the video correction that lies
    outside the mouth box; against a naive loop over cells, and the audio untouched."""
    model = tiny_dit(residual_scales=SCALES)
    video, audio, _, cond, _ = random_window()
    cond = _with_priors(cond)
    h, w = video.shape[-2:]
    box = [0.3, 0.5, 0.7, 0.8]
    mask = video_correction_mask("outside_mouth", box, (h, w))
    naive = _naive_outside(box, h, w)
    torch.testing.assert_close(mask, naive)
    assert mask.min() == 0.0 and mask.max() == 1.0  # cells wholly inside play none of it, outside all of it
    z = to_state(model, video, audio, cond.prior_video, cond.prior_audio)
    got = to_latents(model, *z, cond.prior_video, cond.prior_audio, keep=(0.5, 1.0), video_mask=mask)
    torch.testing.assert_close(got[0], cond.prior_video + 0.5 * naive * (video - cond.prior_video))
    torch.testing.assert_close(got[1], audio)
    assert video_correction_mask("whole", box, (h, w)) is None
    for kind, bad in (("inside", box), ("outside_mouth", [0.7, 0.5, 0.3, 0.8]), ("whole", [0.1, 0.2, 0.3])):
        with pytest.raises(ValueError, match="engine.video_correction|engine.mouth_box"):
            video_correction_mask(kind, bad, (h, w))


def test_the_video_correction_margin_widens_the_box_it_stays_out_of():
    """engine.video_correction_margin: the cells the correction stays out of are those of the mouth box widened by
    the margin on every side and clipped to the frame; against a naive loop, and a bad margin refused."""
    h = w = 16
    box, margin = [0.05, 0.5, 0.7, 0.97], 0.0625
    wide = [0.0, 0.5 - margin, 0.7 + margin, 1.0]  # clipped at the frame's left and bottom edges
    naive = _naive_outside(wide, h, w)
    got = video_correction_mask("outside_mouth", box, (h, w), margin)
    torch.testing.assert_close(got, naive)
    assert (got <= video_correction_mask("outside_mouth", box, (h, w))).all()  # never more correction
    assert (got[:, :2] == 0).sum() > 0 and got[-1].sum() < w  # reaches the frame's edges
    for bad in (-0.1, 0.5):
        with pytest.raises(ValueError, match="engine.video_correction_margin"):
            video_correction_mask("outside_mouth", box, (h, w), bad)


def test_the_timbre_of_a_correction_is_its_mean_spectrum_over_the_chunk():
    """engine.audio_correction=timbre: the audio correction's mean over every frame of the chunk (the tokens
    pack ``D_a / bins`` frames each), per frequency bin, played at every frame; against a naive loop."""
    g = torch.Generator().manual_seed(0)
    b, t, bins, per_token = 2, 5, 3, 4
    correction = torch.randn(b, t, per_token * bins, generator=g)
    got = timbre_of(correction, bins)
    for i in range(b):
        for k in range(bins):
            values = [float(correction[i, j, f * bins + k]) for j in range(t) for f in range(per_token)]
            mean = sum(values) / len(values)
            for j in range(t):
                for f in range(per_token):
                    assert abs(float(got[i, j, f * bins + k]) - mean) < 1e-6
    model = tiny_dit(residual_scales=SCALES)
    video, audio, _, cond, _ = random_window()
    cond = _with_priors(cond)
    z = to_state(model, video, audio, cond.prior_video, cond.prior_audio)
    played = to_latents(
        model, *z, cond.prior_video, cond.prior_audio, keep=(0.5, 0.75), timbre=Timbre(AUDIO_DIM // 2)
    )
    assert torch.allclose(played[0], cond.prior_video + 0.5 * (video - cond.prior_video), atol=1e-6)
    want = cond.prior_audio + 0.75 * timbre_of(audio - cond.prior_audio, AUDIO_DIM // 2)
    assert torch.allclose(played[1], want, atol=1e-6)


def test_the_timbre_with_memory_is_a_running_average_over_the_chunks():
    """engine.timbre_memory=m: chunk k plays m * (the timbre played at k - 1) + (1 - m) * chunk k's own, per
    row; against a naive loop over plain numbers. m = 0 plays each chunk's own."""
    g = torch.Generator().manual_seed(1)
    b, t, bins, per_token, m = 2, 3, 2, 2, 0.6
    chunks = [torch.randn(b, t, per_token * bins, generator=g) for _ in range(4)]
    running, plain = Timbre(bins, m), Timbre(bins)
    played = [running(c) for c in chunks]
    for c in chunks:
        torch.testing.assert_close(plain(c), timbre_of(c, bins))
    for i in range(b):
        for k in range(bins):
            last = None
            for c, got in zip(chunks, played, strict=True):
                values = [float(c[i, j, f * bins + k]) for j in range(t) for f in range(per_token)]
                own = sum(values) / len(values)
                last = own if last is None else m * last + (1 - m) * own
                for j in range(t):
                    for f in range(per_token):
                        assert abs(float(got[i, j, f * bins + k]) - last) < 1e-5
    with pytest.raises(ValueError, match="timbre_memory"):
        Timbre(bins, 1.0)


@pytest.mark.parametrize("session", [False, True])
def test_the_video_mean_is_a_running_average_of_the_chunks_frame_means(session):
    """engine.video_correction_time=mean: every frame of chunk k plays, at each latent cell, m * (what chunk
    k - 1 played) + (1 - m) * the mean over chunk k's frames; =session: the plain mean of chunks 0..k's frame
    means. Against a naive loop over plain numbers."""
    g = torch.Generator().manual_seed(2)
    b, c, length, h, w, m = 2, 2, 3, 2, 2, 0.5
    chunks = [torch.randn(b, c, length, h, w, generator=g) for _ in range(4)]
    running = VideoMean(m, session=session)
    played = [running(x) for x in chunks]
    for i, ch, y, x in np.ndindex(b, c, h, w):
        last, owns = None, []
        for chunk, got in zip(chunks, played, strict=True):
            own = sum(float(chunk[i, ch, f, y, x]) for f in range(length)) / length
            owns.append(own)
            last = own if last is None else m * last + (1 - m) * own
            want = sum(owns) / len(owns) if session else last
            for f in range(length):
                assert abs(float(got[i, ch, f, y, x]) - want) < 1e-5


@pytest.mark.parametrize("masked", [False, True])
def test_the_video_correction_detail_against_a_naive_loop(masked):
    """engine.video_correction_detail=n: each played cell keeps its correction minus the mean of the played
    cells' corrections among the n x n around it (indices past the frame's edge clamped to it); cells not
    played stay 0. Against a naive loop over plain numbers; 0 gives the correction back, and a correction that
    is the same everywhere has no detail."""
    g = torch.Generator().manual_seed(4)
    b, c, length, h, w, n = 1, 2, 2, 6, 5, 3
    mask = video_correction_mask("outside_mouth", [0.3, 0.4, 0.7, 0.8], (h, w)) if masked else None
    played = torch.ones(h, w) if mask is None else mask
    correction = torch.randn(b, c, length, h, w, generator=g) * played
    got = correction_detail(correction, n, mask)
    on = played > 0
    for i, ch, f, y, x in np.ndindex(b, c, length, h, w):
        if not on[y, x]:
            assert float(got[i, ch, f, y, x]) == 0.0
            continue
        total = count = 0.0
        for dy in range(-(n // 2), n // 2 + 1):
            for dx in range(-(n // 2), n // 2 + 1):
                yy, xx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                if on[yy, xx]:
                    total += float(correction[i, ch, f, yy, xx])
                    count += 1
        want = float(correction[i, ch, f, y, x]) - total / count
        assert abs(float(got[i, ch, f, y, x]) - want) < 1e-5
    assert torch.equal(correction_detail(correction, 0, mask), correction)
    flat = torch.full((b, c, length, h, w), 0.7) * on
    assert correction_detail(flat, n, mask).abs().max() < 1e-6
    with pytest.raises(ValueError, match="video_correction_detail"):
        correction_detail(correction, 4, mask)


def test_the_speech_timbre_averages_and_plays_on_speaking_tokens_only():
    """engine.audio_correction=speech_timbre: the running timbre is the mean over the chunk's sounding tokens,
    played on them alone (silence keeps the prior); a row silent for a whole chunk keeps its last timbre and
    plays nothing. Against a naive loop over plain numbers."""
    g = torch.Generator().manual_seed(2)
    b, t, bins, per_token, m = 2, 4, 2, 2, 0.5
    chunks = [torch.randn(b, t, per_token * bins, generator=g) for _ in range(3)]
    speaking = [torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1]]),
                torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])]  # fmt: skip
    timbre = Timbre(bins, m, speech_only=True)
    played = [timbre(c, s) for c, s in zip(chunks, speaking, strict=True)]
    for i in range(b):
        for k in range(bins):
            last = None
            for c, s, got in zip(chunks, speaking, played, strict=True):
                values = [float(c[i, j, f * bins + k]) for j in range(t) if s[i, j] for f in range(per_token)]
                if values:
                    own = sum(values) / len(values)
                    last = own if last is None else m * last + (1 - m) * own
                for j in range(t):
                    want = last if s[i, j] and last is not None else 0.0
                    for f in range(per_token):
                        assert abs(float(got[i, j, f * bins + k]) - want) < 1e-5
    with pytest.raises(ValueError, match="sounding flags"):
        timbre(chunks[0])


@pytest.mark.parametrize(("start", "start_video"), [(1.0, 1.0), (0.3, 0.3), (0.3, 1.0)])
@pytest.mark.parametrize("guidance", [Guidance(), Guidance(2.0, 1.5, 1.5)])
def test_residual_sampling_is_the_prior_centred_flow_integrated_naively(guidance, start, start_video):
    """Euler on the state z, then x0 = mu + s z, equals Euler in latent space from mu + s * noise along the
    latent-space velocity s * v(z): the flow ``x_t = (1 - t) x0 + t (mu + s noise)``. Guidance combines the
    full branch with branches whose units are null (the priors stay) and whose references are dropped.
    Shallow sampling (the model's ``sample_start`` < 1) starts at ``mu + start * s * noise``, at t = start; the
    video from its own ``sample_start_video``, on its own grid of as many steps."""
    model = tiny_dit(residual_scales=SCALES)
    model.sample_start, model.sample_start_video = start, start_video  # the sampler reads where to start
    video, audio, _, cond, ctx = random_window()
    cond = _with_priors(cond)
    steps = 3
    z = EulerSampler(steps=steps, guidance=guidance).sample(model, video, audio, cond, context=ctx)
    got = to_latents(model, z[0], z[1], cond.prior_video, cond.prior_audio)
    # the naive loop: latent space, one model call per branch, on the grid start, ..., 0 in equal steps
    sv, sa = SCALES
    xv, xa = cond.prior_video + start_video * sv * video, cond.prior_audio + start * sa * audio
    grid = [start * (1 - i / steps) for i in range(steps + 1)]
    grid_video = [start_video * (1 - i / steps) for i in range(steps + 1)]
    null = Conditions(torch.full_like(cond.units, UNITS), torch.full_like(cond.speaking, 2), cond.prior_audio,
                      cond.prior_video)  # fmt: skip
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for t, t_next, tv, tv_next in zip(grid[:-1], grid[1:], grid_video[:-1], grid_video[1:], strict=True):
            state = ((xv - cond.prior_video) / sv, (xa - cond.prior_audio) / sa)
            tt = (torch.full((video.shape[0],), tv), torch.full((video.shape[0],), t))
            full = model(*state, tt, cond, ctx)
            v = list(full)
            if guidance.conditions != 1.0:
                other = model(*state, tt, null, ctx)
                v = [a + (guidance.conditions - 1) * (a - o) for a, o in zip(v, other, strict=True)]
            if guidance.ref_image != 1.0:
                no_image = ctx.with_dropped_references(yes, no)
                other = model(*state, tt, cond, no_image)
                v = [a + (guidance.ref_image - 1) * (f - o) for a, f, o in zip(v, full, other, strict=True)]
            if guidance.ref_voice != 1.0:
                no_voice = ctx.with_dropped_references(no, yes)
                other = model(*state, tt, cond, no_voice)
                v = [a + (guidance.ref_voice - 1) * (f - o) for a, f, o in zip(v, full, other, strict=True)]
            xv, xa = xv + (tv_next - tv) * sv * v[0], xa + (t_next - t) * sa * v[1]
    assert (got[0] - xv).abs().max() < 1e-4 and (got[1] - xa).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [1, 2])
def test_a_shallow_student_and_the_teacher_pairs_follow_the_samplers_grid(steps):
    """The distilled student (unguided, folded) from the same noise lands where the engine's sampler does,
    and the teacher pairs start at the shallow grid's first time (noise scaled by start) and end where the
    sampler ends."""
    from streamchar.distill.objective import DistillObjective
    from streamchar.distill.pairs import PairSpec, teacher_trajectory

    model = tiny_dit(residual_scales=SCALES)
    model.sample_start = 0.3
    batch = random_batch(2)
    cond, ctx, mask = _with_priors(Conditions.of(batch)), TeacherObjective.context(batch), batch["audio_mask"]
    batch["prior_audio"], batch["prior_video"] = cond.prior_audio, cond.prior_video
    video, audio = torch.randn_like(batch["video"]), torch.randn_like(batch["audio"])
    objective = DistillObjective(steps=steps, guidance=Guidance(), start=0.3)
    assert objective.grid == pytest.approx([0.3 * (1 - i / steps) for i in range(steps + 1)])
    with torch.no_grad():
        x0 = objective.student_x0(model, (video, audio), cond, ctx, mask)
    ref = EulerSampler(steps=steps).sample(model, video, audio, cond, context=ctx, audio_valid=mask)
    assert (x0[0] - ref[0]).abs().max() < 1e-5 and (x0[1] - ref[1]).abs().max() < 1e-5
    out = teacher_trajectory(model, PairSpec(teacher_steps=4, record_steps=2, guidance=(1.0, 1.0, 1.0), start=0.3),
                             batch, (video, audio))  # fmt: skip
    assert torch.allclose(out["video_0"], 0.3 * video) and torch.allclose(out["audio_0"], 0.3 * audio)
    four = EulerSampler(steps=4).sample(model, video, audio, cond, context=ctx, audio_valid=mask)
    assert (out["video_x0"] - four[0]).abs().max() < 1e-5 and (out["audio_x0"] - four[1]).abs().max() < 1e-5


def test_a_residual_model_reads_its_priors_and_refuses_to_run_without_them():
    model = tiny_dit(residual_scales=SCALES)
    video, audio, t, cond, ctx = random_window()
    with pytest.raises(ValueError, match="prior_video and prior_audio"):
        model(video, audio, t, cond, ctx)
    full = _with_priors(cond)
    with torch.no_grad():
        a = model(video, audio, t, full, ctx)
        moved = Conditions(full.units, full.speaking, full.prior_audio, full.prior_video + 1.0)
        b = model(video, audio, t, moved, ctx)
    assert (a[0] - b[0]).abs().mean() > 1e-4
    dropped = full.dropped(torch.tensor([True, False]), UNITS)
    assert torch.equal(dropped.prior_audio, full.prior_audio) and torch.equal(
        dropped.prior_video, full.prior_video
    )
    assert bool((dropped.units[0] == UNITS).all()) and torch.equal(dropped.units[1], full.units[1])


def _prior_batch(b: int = 4) -> dict:
    batch = random_batch(b)
    g = torch.Generator().manual_seed(9)
    batch["context_units"] = torch.randint(-1, UNITS, (b, 2), generator=g)
    batch["context_speaking"] = torch.randint(0, 2, (b, 2), generator=g)
    return batch


def test_teacher_objective_in_the_residual_formulation_equals_a_manual_computation():
    model, priors = tiny_dit(residual_scales=SCALES), _tiny_priors()
    batch = _prior_batch()
    objective = TeacherObjective(
        cond_drop=0.0,
        ref_image_drop=0.0,
        ref_voice_drop=0.0,
        audio_driven_fraction=0.5,
        audio_driven_cond_drop=0.0,
    )
    draws = objective.draw(batch, torch.Generator().manual_seed(0))
    driven = draws["audio_driven"]
    assert driven.any() and not driven.all()
    with torch.no_grad():
        loss, parts = objective.loss(model, batch, draws, priors)
        # by hand: the means (an audio-driven window's audio mean is its own audio), the states, the flow
        mu_video, mu_audio = priors.window_means(batch, driven)
        assert torch.equal(mu_audio[driven], batch["audio"][driven])
        zv, za = (batch["video"] - mu_video) / SCALES[0], (batch["audio"] - mu_audio) / SCALES[1]
        assert za[driven].abs().max() == 0
        t = draws["t"]
        t_audio = torch.where(driven, torch.zeros_like(t), t)
        flow = FlowMatching()
        video_t = flow.interpolate(zv, draws["noise_video"], t)
        audio_t = flow.interpolate(za, draws["noise_audio"], t_audio)
        cond = Conditions(batch["units"], batch["speaking"], mu_audio, mu_video)
        v_video, v_audio = model(
            video_t, audio_t, (t, t_audio), cond, TeacherObjective.context(batch), batch["audio_mask"]
        )
        video_err = (v_video - (draws["noise_video"] - zv)).pow(2).flatten(1).mean(1)
        audio_err = (v_audio - (draws["noise_audio"] - za)).pow(2).flatten(1).mean(1)
        audio_err = torch.where(driven, torch.zeros_like(audio_err), audio_err)
    assert torch.allclose(parts["video"], video_err, atol=1e-5) and torch.allclose(
        parts["audio"], audio_err, atol=1e-5
    )
    assert torch.allclose(loss, (video_err + audio_err).mean(), atol=1e-5)
    with pytest.raises(ValueError, match="load the priors"):
        objective.loss(model, batch, draws, None)


def test_residual_batch_and_streamed_generation_with_priors():
    """Chunk after chunk with the cache equals recomputing the window, and the output is the latents
    (mu + s z), for text and for given audio (whose own latents come back)."""
    from streamchar.denoiser.rollout import generate

    model, priors = tiny_dit(residual_scales=SCALES), _tiny_priors()
    video, audio, _, cond, ctx = random_window(b=1)
    conds = [Conditions(cond.units, cond.speaking), Conditions(cond.units.flip(1), cond.speaking),
             Conditions(cond.units.roll(3, 1), cond.speaking)]  # fmt: skip
    sampler = EulerSampler(steps=2)
    runs = [generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0),
                     use_cache=cache, priors=priors) for cache in (True, False)]  # fmt: skip
    assert (runs[0].video - runs[1].video).abs().max() < 1e-4 and (
        runs[0].audio - runs[1].audio
    ).abs().max() < 1e-4
    given = [audio, audio * 0.5, audio * 0.25]
    driven = generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0),
                      given_audio=given, priors=priors)  # fmt: skip
    assert torch.equal(driven.audio, torch.cat(given, dim=1))
    # the video correction outside the mouth box alone: in the first chunk (the same means either way), cells wholly
    # inside the box are the video prior's, cells outside carry the correction
    mask = video_correction_mask("outside_mouth", [0.3, 0.5, 0.7, 0.8], tuple(video.shape[-2:]))
    masked, alone = (generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0),
                              priors=priors, refine=refine, video_mask=mask) for refine in (True, False))  # fmt: skip
    first = TL.chunk_latent_frames
    inside, outside = mask == 0, mask == 1
    assert inside.any() and outside.any()
    torch.testing.assert_close(
        masked.video[:, :, :first][..., inside], alone.video[:, :, :first][..., inside]
    )
    assert not torch.allclose(
        masked.video[:, :, :first][..., outside], alone.video[:, :, :first][..., outside]
    )

    # the video correction shown and not fed back (engine.video_correction_feedback=false): the next chunk reads the
    # video prior's means, so the audio is the run's that plays no video correction, and the frames carry it
    def run(**kw):
        return generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0),
                        priors=priors, **kw)  # fmt: skip

    shown, unplayed, fed = run(video_feedback=False), run(keep=(0.0, 1.0)), runs[0]
    torch.testing.assert_close(shown.audio, unplayed.audio, rtol=0, atol=0)
    torch.testing.assert_close(shown.video[:, :, :first], fed.video[:, :, :first])  # the same first chunk
    assert not torch.allclose(shown.video[:, :, first:], unplayed.video[:, :, first:], atol=1e-4)
    audio_first = TL.chunk_audio_tokens
    assert not torch.allclose(shown.audio[:, audio_first:], fed.audio[:, audio_first:], atol=1e-4)
    # its mean over each chunk's frames (engine.video_correction_time=mean, memory 0): the same means, the same
    # audio, and a correction that is one offset per cell for the whole chunk, the frames' own correction's mean
    still = run(video_feedback=False, video_time_memory=0.0)
    torch.testing.assert_close(still.audio, shown.audio, rtol=0, atol=0)
    means = unplayed.video
    for k in range(len(conds)):
        piece = slice(k * first, (k + 1) * first)
        got, own = (
            still.video[:, :, piece] - means[:, :, piece],
            shown.video[:, :, piece] - means[:, :, piece],
        )
        torch.testing.assert_close(got, own.mean(2, keepdim=True).expand_as(got), rtol=1e-4, atol=1e-5)
    # and only that mean's spatial detail (engine.video_correction_detail): the same audio, the detail of the
    # played correction (correction_detail of the mean run's)
    detail = run(video_feedback=False, video_time_memory=0.0, video_detail=3)
    torch.testing.assert_close(detail.audio, shown.audio, rtol=0, atol=0)
    torch.testing.assert_close(
        detail.video - means, correction_detail(still.video - means, 3), rtol=1e-4, atol=1e-5
    )
    # the first chunk skipped (engine.video_correction_skip=1) with a running mean (memory m): the same audio, the
    # first chunk the means alone, and the second m * 0 + (1 - m) * its own mean correction (the skipped chunk
    # counts as zero)
    m = 0.5
    skipped = run(video_feedback=False, video_time_memory=m, video_skip=1)
    torch.testing.assert_close(skipped.audio, shown.audio, rtol=0, atol=0)
    torch.testing.assert_close(skipped.video[:, :, :first], means[:, :, :first], rtol=0, atol=0)
    second = slice(first, 2 * first)
    torch.testing.assert_close(
        skipped.video[:, :, second] - means[:, :, second],
        (1 - m) * (still.video[:, :, second] - means[:, :, second]),
        rtol=1e-4,
        atol=1e-5,
    )

    # the mean over all the chunks so far (engine.video_correction_time=session): chunk k plays the plain mean of
    # chunks 0..k's own mean corrections
    session = run(video_feedback=False, video_time_session=True)
    torch.testing.assert_close(session.audio, shown.audio, rtol=0, atol=0)
    owns = []
    for k in range(len(conds)):
        piece = slice(k * first, (k + 1) * first)
        owns.append(still.video[:, :, piece] - means[:, :, piece])
        torch.testing.assert_close(
            session.video[:, :, piece] - means[:, :, piece], sum(owns) / len(owns), rtol=1e-4, atol=1e-5
        )

    # as shipped: over the session, the first chunk skipped (counted as zero): chunk k > 0 plays the sum of chunks
    # 1..k's own mean corrections over k + 1
    shipped = run(video_feedback=False, video_time_session=True, video_skip=1)
    torch.testing.assert_close(shipped.video[:, :, :first], means[:, :, :first], rtol=0, atol=0)
    for k in range(1, len(conds)):
        piece = slice(k * first, (k + 1) * first)
        torch.testing.assert_close(
            shipped.video[:, :, piece] - means[:, :, piece],
            sum(owns[1 : k + 1]) / (k + 1),
            rtol=1e-4,
            atol=1e-5,
        )

    # the audio start noise scaled (engine.audio_noise_scale): the sampler gets the same draws, the audio's times the
    # scale and the video's as they were
    class Recording(EulerSampler):
        def sample(self, model, video_noise, audio_noise, *args, **kwargs):
            self.seen.append((video_noise.clone(), audio_noise.clone()))
            return super().sample(model, video_noise, audio_noise, *args, **kwargs)

    seen = {}
    for scale in (1.0, 0.5):
        recording = Recording(steps=2)
        recording.seen = []
        generate(model, recording, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0),
                 priors=priors, audio_noise_scale=scale)  # fmt: skip
        seen[scale] = recording.seen
    assert len(seen[0.5]) == len(conds)
    for (video_1, audio_1), (video_half, audio_half) in zip(seen[1.0], seen[0.5], strict=True):
        torch.testing.assert_close(video_half, video_1, rtol=0, atol=0)
        torch.testing.assert_close(audio_half, 0.5 * audio_1, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass priors"):
        generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(0))
    plain = tiny_dit()
    assert residual_batch(plain, _prior_batch(), None)["video"] is not None  # unchanged, no priors needed


@pytest.mark.parametrize("anchor", [0.0, 0.3])
def test_prior_last_noise_against_a_naive_loop(anchor):
    """engine.prior_last_noise: every chunk after the first has its video prior read the last generated latent
    plus noise of that sd from a generator seeded ``seed + 1`` (the first reads the clean reference); the
    DiT's noise is untouched. engine.prior_anchor moves that last latent toward the reference first, outside
    the mouth box. Against a naive loop over the priors (engine.refine off)."""
    from streamchar.denoiser.rollout import generate, prior_anchor_map

    model, priors = tiny_dit(residual_scales=SCALES), _tiny_priors()
    _, _, _, cond, ctx = random_window(b=1)
    conds = [Conditions(cond.units, cond.speaking), Conditions(cond.units.flip(1), cond.speaking),
             Conditions(cond.units, 1 - cond.speaking)]  # fmt: skip
    sampler, sd, seed = EulerSampler(steps=1), 0.4, 5
    box = [0.3, 0.5, 0.7, 0.8]
    anchor_map = prior_anchor_map(anchor, box, tuple(ctx.ref_video.shape[-2:]))
    outside = video_correction_mask("outside_mouth", box, tuple(ctx.ref_video.shape[-2:]))
    assert (anchor_map is None) == (anchor == 0)

    def run(noise: float):
        return generate(model, sampler, ctx.ref_video, ctx.ref_voice, conds, torch.Generator().manual_seed(seed),
                        priors=priors, refine=False, prior_last_noise=noise, prior_anchor=anchor_map)  # fmt: skip

    got = run(sd)
    g = torch.Generator().manual_seed(seed + 1)
    reference, valid = ctx.ref_video[:, :, 0], torch.ones(ctx.ref_voice.shape[:2], dtype=torch.bool)
    units = torch.full((1, priors.context), -1, dtype=torch.long)
    speaking = torch.zeros(1, priors.context, dtype=torch.long)
    last, heard, videos = reference, torch.zeros(1, TL.motion_audio_tokens, AUDIO_DIM), []
    for k, c in enumerate(conds):
        units, speaking = torch.cat([units, c.units], 1), torch.cat([speaking, c.speaking], 1)
        mu_audio = priors.audio_means(units[:, -(priors.context + c.units.shape[1]) :],
                                      speaking[:, -(priors.context + c.units.shape[1]) :], ctx.ref_voice, valid)  # fmt: skip
        if k > 0:
            last = last + anchor * outside * (reference - last)  # the mouth box's cells keep their own
        read = last if k == 0 else last + sd * torch.randn(last.shape, generator=g)
        video = priors.video_means(reference, read, heard, mu_audio)
        videos.append(video)
        last, heard = video[:, :, -1], mu_audio[:, -TL.motion_audio_tokens :]
    torch.testing.assert_close(got.video, torch.cat(videos, 2), rtol=1e-4, atol=1e-4)
    clean, L = run(0.0), TL.chunk_latent_frames
    torch.testing.assert_close(
        got.video[:, :, :L], clean.video[:, :, :L]
    )  # the first chunk reads the reference
    assert not torch.allclose(got.video[:, :, L:], clean.video[:, :, L:])
    torch.testing.assert_close(got.audio, clean.audio)  # the acoustic prior does not read the video


def test_a_teacher_with_two_starts_is_distilled_in_both_stages(cache, trained_priors, tmp_path):
    """A teacher whose video is made from noise (denoiser.sample_start_video=1, the whole video flow, shared noise)
    and whose audio is refined shallowly: stage 1's pairs and both stages' students carry both starts and the
    noise share, and the students load with them."""
    import json

    from streamchar.config import load_config
    from streamchar.data.latents import LatentCache
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import distill_stage2
    from streamchar.loaders import load_teacher, read_distilled
    from streamchar.training.teacher import latent_spec_from_cache, train_teacher
    from tests.conftest import TINY_CORPUS_OVERRIDES
    from tests.test_distill import DISTILL_OVERRIDES
    from tests.test_teacher import TRAIN_OVERRIDES

    overrides, _ = trained_priors
    two = [
        "denoiser.sample_start_video=1.0",
        "train.teacher.max_t_video=1.0",
        "train.teacher.video_noise_share=0.5",
    ]
    base = TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + overrides + two
    train_teacher(load_config(None, base), cache, tmp_path / "teacher", progress=False)
    teacher = [f"distill.teacher={tmp_path / 'teacher'}", "distill.student_steps=2"]
    s1 = distill_stage1(
        load_config(None, base + DISTILL_OVERRIDES + teacher), cache, tmp_path / "s1", progress=False
    )
    pairs = json.loads((tmp_path / "s1" / "pairs" / "pairs.json").read_text())
    assert s1["finished"] and (pairs["start"], pairs["start_video"], pairs["video_noise_share"]) == (
        0.3,
        1.0,
        0.5,
    )
    s2cfg = load_config(None, base + DISTILL_OVERRIDES + teacher + [f"distill.init={tmp_path / 'teacher'}"])
    s2 = distill_stage2(s2cfg, cache, tmp_path / "s2", progress=False)
    assert s2["finished"] and np.isfinite(s2["last"]["dmd"])
    # the audio scored by a second teacher (here the same one, which exercises the wiring)
    both = [f"distill.init={tmp_path / 'teacher'}", f"distill.audio_teacher={tmp_path / 'teacher'}"]
    scored = load_config(None, base + DISTILL_OVERRIDES + teacher + both)
    assert distill_stage2(scored, cache, tmp_path / "s2-audio", progress=False)["finished"]
    spec = latent_spec_from_cache(LatentCache(cache))
    for run in ("s1", "s2"):
        info = read_distilled(tmp_path / run)
        assert (info["start"], info["start_video"], info["video_noise_share"]) == (
            pytest.approx(0.3),
            1.0,
            0.5,
        )
        student = load_teacher(
            tmp_path / run / "student", load_config(None, TINY_CORPUS_OVERRIDES + overrides), spec
        )
        assert (student.sample_start, student.sample_start_video) == (pytest.approx(0.3), 1.0)


def test_residual_teacher_trains_loads_and_distils(cache, trained_priors, tmp_path):
    from streamchar.config import load_config
    from streamchar.data.latents import LatentCache
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import distill_stage2
    from streamchar.loaders import load_teacher
    from streamchar.training.teacher import latent_spec_from_cache, train_teacher
    from tests.conftest import TINY_CORPUS_OVERRIDES
    from tests.test_distill import DISTILL_OVERRIDES
    from tests.test_teacher import TRAIN_OVERRIDES

    overrides, _ = trained_priors
    cfg = load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + overrides)
    summary = train_teacher(cfg, cache, tmp_path / "teacher", progress=False)
    assert summary["finished"] and summary["heldout"]["video"] > 0
    model = load_teacher(tmp_path / "teacher", cfg, latent_spec_from_cache(LatentCache(cache)))
    assert model.residual and model.residual_scales == (0.5, 0.5)
    # a plain config still loads it as it was trained (its denoiser.json says residual)
    plain_cfg = load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + overrides[:-3])
    assert load_teacher(tmp_path / "teacher", plain_cfg, latent_spec_from_cache(LatentCache(cache))).residual
    dcfg = load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + DISTILL_OVERRIDES + overrides
                       + [f"distill.teacher={tmp_path / 'teacher'}", "distill.student_steps=1"])  # fmt: skip
    s1 = distill_stage1(dcfg, cache, tmp_path / "s1", progress=False)
    assert s1["finished"]
    s2cfg = load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + DISTILL_OVERRIDES + overrides
                        + [f"distill.teacher={tmp_path / 'teacher'}", "distill.student_steps=1",
                           f"distill.init={tmp_path / 's1'}"])  # fmt: skip
    s2 = distill_stage2(s2cfg, cache, tmp_path / "s2", progress=False)
    assert s2["finished"] and load_teacher(tmp_path / "s2" / "student", cfg, model_spec(cache)).residual
    from streamchar.loaders import read_distilled

    # the students start where the teacher does (shallow) and DMD stayed within the teacher's trained times
    assert read_distilled(tmp_path / "s2" / "student")["start"] == pytest.approx(0.3)

    # the engine streams the residual student over the priors; with engine.refine off, the priors alone, and
    # keeping none of the student's correction (engine.keep_correction) is the same as not running it
    from streamchar.engine.engine import Engine

    codec = cache.parent / "codec"
    outputs = {}
    variants = {"refine": "engine.refine=true", "priors": "engine.refine=false",
                "keep none": "engine.keep_correction=[0.0,0.0]", "timbre": "engine.audio_correction=timbre",
                "timbre memory": "engine.audio_correction=timbre engine.timbre_memory=0.8",
                "speech timbre": "engine.audio_correction=speech_timbre engine.timbre_memory=0.8",
                "outside mouth": "engine.video_correction=outside_mouth",
                "no video correction": "engine.keep_correction=[0.0,1.0]",
                "shown only": "engine.video_correction_feedback=false",
                "first skipped": "engine.video_correction_feedback=false engine.video_correction_skip=1",
                "audio noise halved": "engine.video_correction_feedback=false engine.audio_noise_scale=0.5"}  # fmt: skip
    for name, switch in variants.items():
        ecfg = load_config(None, TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + overrides + [
            f"video_codec.path={codec}", f"engine.denoiser_path={tmp_path / 's2' / 'student'}",
            *switch.split(), "engine.realign=false", "engine.tail_seconds=0.2", "engine.compile=off"])  # fmt: skip
        engine = Engine.from_config(ecfg)
        assert engine.priors is not None
        with engine.session([engine.character("ada"), engine.character("ben")], seed=0) as session:
            session.push_text("Hello there.", final=True)
            session.push_text("Hi.", final=True, speaker=1)
            chunks = list(session)
        assert chunks and all(c.frames.shape[1:] == (64, 128, 3) for c in chunks)  # side by side
        outputs[name] = (
            np.concatenate([c.audio for c in chunks]),
            np.concatenate([c.frames for c in chunks]),
        )
    assert outputs["refine"][0].shape == outputs["priors"][0].shape
    assert not np.allclose(outputs["refine"][0], outputs["priors"][0])
    assert np.allclose(outputs["keep none"][0], outputs["priors"][0], atol=1e-5)
    assert np.array_equal(outputs["keep none"][1], outputs["priors"][1])
    # only the timbre of the audio correction: neither the whole correction nor none of it
    assert not np.allclose(outputs["timbre"][0], outputs["refine"][0])
    assert not np.allclose(outputs["timbre"][0], outputs["priors"][0])
    # its running average over the chunks: the first chunk as without memory, later ones not
    first = len(chunks[0].audio)
    assert np.allclose(outputs["timbre memory"][0][:first], outputs["timbre"][0][:first], atol=1e-5)
    assert not np.allclose(outputs["timbre memory"][0], outputs["timbre"][0])
    # the timbre over the planned phonemes alone: silence keeps the prior, so it is neither of those
    assert not np.allclose(outputs["speech timbre"][0], outputs["timbre memory"][0])
    assert not np.allclose(outputs["speech timbre"][0], outputs["priors"][0])
    # the video correction outside the mouth box alone: the frames are neither the whole correction's nor the priors'
    assert not np.array_equal(outputs["outside mouth"][1], outputs["refine"][1])
    assert not np.array_equal(outputs["outside mouth"][1], outputs["priors"][1])
    # the video correction shown and not fed back: the session's course (its audio) is the one without it, and the
    # frames show it (the first chunk's frames as when it is fed back, later ones not)
    assert np.array_equal(outputs["shown only"][0], outputs["no video correction"][0])
    assert not np.allclose(outputs["shown only"][0], outputs["refine"][0])
    frames = len(chunks[0].frames)
    assert np.array_equal(outputs["shown only"][1][:frames], outputs["refine"][1][:frames])
    assert not np.array_equal(outputs["shown only"][1], outputs["no video correction"][1])
    assert not np.array_equal(outputs["shown only"][1][frames:], outputs["refine"][1][frames:])
    # the first chunk's video correction skipped: the same course, the first chunk's frames the priors' alone, the
    # second chunk's its own correction's (each frame its own here: nothing averaged over chunks)
    assert np.array_equal(outputs["first skipped"][0], outputs["shown only"][0])
    assert np.array_equal(outputs["first skipped"][1][:frames], outputs["no video correction"][1][:frames])
    second = slice(frames, frames + len(chunks[1].frames))
    assert np.array_equal(outputs["first skipped"][1][second], outputs["shown only"][1][second])
    assert not np.array_equal(outputs["first skipped"][1][second], outputs["no video correction"][1][second])
    # the audio start noise halved: another course of speech from the same seed
    assert outputs["audio noise halved"][0].shape == outputs["shown only"][0].shape
    assert not np.allclose(outputs["audio noise halved"][0], outputs["shown only"][0])


def model_spec(cache):
    from streamchar.data.latents import LatentCache
    from streamchar.training.teacher import latent_spec_from_cache

    return latent_spec_from_cache(LatentCache(cache))


@pytest.mark.parametrize(
    "keep",
    [
        "[1.0]",
        "[1.0,-0.5]",
        "[3.0,1.0]",
        "audio_correction=phonemes",
        "worker_threads=-1",
        "timbre_memory=1.0",
        "prior_last_noise=-0.1",
        "prior_anchor=1.0",
        "video_correction_time=blur",
        "video_correction_memory=1.0",
        "video_correction_detail=2",
        "video_correction_skip=-1",
        "audio_noise_scale=-0.5",
        "video_correction=mouth",
        "mouth_box=[0.5,0.5,0.4,0.9]",
    ],
)
def test_a_bad_engine_setting_is_refused_before_anything_loads(keep):
    from streamchar.config import load_config
    from streamchar.engine.engine import Engine

    setting = f"engine.{keep}" if "=" in keep else f"engine.keep_correction={keep}"
    with pytest.raises(ValueError, match=setting.partition("=")[0].removeprefix("engine.")):
        Engine.from_config(load_config("tiny", [setting, "video_codec.path=/nonexistent"]))


def test_video_noise_share_mixes_one_draw_per_chunk_and_reaches_the_rollout():
    """engine.video_noise_share r: each frame's start noise is sqrt(r) * shared + sqrt(1 - r) * own, the shared
    draw after the frames' own (r = 0 draws exactly what it drew before); the rollout streams it alike with the
    context cache and without."""
    from streamchar.denoiser.flow import check_video_noise_share, video_noise
    from streamchar.denoiser.rollout import generate

    shape = (2, 3, 4, 5, 5)
    got = video_noise(shape, torch.Generator().manual_seed(3), 0.36)
    g = torch.Generator().manual_seed(3)
    own, shared = torch.randn(shape, generator=g), torch.randn((2, 3, 1, 5, 5), generator=g)
    for f in range(4):
        torch.testing.assert_close(got[:, :, f], 0.6 * shared[:, :, 0] + 0.8 * own[:, :, f])
    assert torch.equal(
        video_noise(shape, torch.Generator().manual_seed(3)),
        torch.randn(shape, generator=torch.Generator().manual_seed(3)),
    )
    with pytest.raises(ValueError, match="video_noise_share"):
        check_video_noise_share(1.0)

    model, priors = tiny_dit(residual_scales=SCALES), _tiny_priors()
    _, _, _, cond, ctx = random_window(b=1)
    conds = [Conditions(cond.units, cond.speaking), Conditions(cond.units.flip(1), cond.speaking)]

    def run(share: float, cache: bool = True):
        g = torch.Generator().manual_seed(0)
        return generate(model, EulerSampler(steps=2), ctx.ref_video, ctx.ref_voice, conds, g, use_cache=cache,
                        priors=priors, video_noise_share=share)  # fmt: skip

    mixed, recomputed, own_only = run(0.5), run(0.5, cache=False), run(0.0)
    torch.testing.assert_close(mixed.video, recomputed.video, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed.video, own_only.video, atol=1e-3)


def test_an_x0_video_head_is_the_velocity_head_read_as_the_clean_state():
    """denoiser.video_prediction=x0: the same weights' video output is the clean state, its velocity
    (z_t - out) / t; the teacher's video loss is then the clean state's error, |out - z0|^2, and the audio
    is untouched. Against the velocity head and a manual computation."""
    from streamchar.denoiser.dit import X0_MIN_T

    velocity, priors = tiny_dit(residual_scales=SCALES), _tiny_priors()
    x0 = tiny_dit(residual_scales=SCALES)
    x0.load_state_dict(velocity.state_dict())
    x0.video_prediction = "x0"
    batch = _prior_batch()
    objective = TeacherObjective(
        cond_drop=0.0, ref_image_drop=0.0, ref_voice_drop=0.0, audio_driven_fraction=0.0
    )
    draws = objective.draw(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu_video, mu_audio = priors.window_means(batch)
        zv, za = (batch["video"] - mu_video) / SCALES[0], (batch["audio"] - mu_audio) / SCALES[1]
        t = draws["t"]
        video_t = FlowMatching().interpolate(zv, draws["noise_video"], t)
        audio_t = FlowMatching().interpolate(za, draws["noise_audio"], t)
        cond, ctx = (
            Conditions(batch["units"], batch["speaking"], mu_audio, mu_video),
            TeacherObjective.context(batch),
        )
        out_video, out_audio = velocity(video_t, audio_t, (t, t), cond, ctx, batch["audio_mask"])
        v_video, v_audio = x0(video_t, audio_t, (t, t), cond, ctx, batch["audio_mask"])
        torch.testing.assert_close(
            v_video, (video_t - out_video) / t.clamp_min(X0_MIN_T).view(-1, 1, 1, 1, 1)
        )
        torch.testing.assert_close(v_audio, out_audio)
        _, parts = objective.loss(x0, batch, draws, priors)
    torch.testing.assert_close(
        parts["video"], (out_video - zv).pow(2).flatten(1).mean(1), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="video_prediction"):
        tiny_dit(residual_scales=SCALES, video_prediction="eps")
