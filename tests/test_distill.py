"""Distillation: the losses against naive references and closed forms, the 2D toy, both stages on the tiny
corpus (export, resume, two processes equal one), and the engine running a student."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.flow import Guidance
from streamchar.denoiser.objective import TeacherObjective
from streamchar.distill.losses import (
    chunk_mean_loss,
    dmd_gradient,
    dmd_loss,
    flow_matching_loss,
    masked_mean,
    ode_regression_loss,
)
from tests.test_teacher import TRAIN_OVERRIDES, _free_port


# -- losses -----------------------------------------------------------------------------------------
def test_masked_losses_average_only_the_counted_entries():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = (torch.rand(3, 5, 1, generator=g) > 0.4).float()
    mask[0, 0] = 1
    naive = [((a[i] - b[i]) ** 2)[mask[i, :, 0] > 0].mean() for i in range(3)]
    assert torch.allclose(ode_regression_loss(a, b, mask), torch.stack(naive))
    assert torch.allclose(ode_regression_loss(a, b), ((a - b) ** 2).mean((1, 2)))
    noise = torch.randn(3, 5, 4, generator=g)
    naive_fm = [((a[i] - (noise[i] - b[i])) ** 2)[mask[i, :, 0] > 0].mean() for i in range(3)]
    assert torch.allclose(flow_matching_loss(a, b, noise, mask), torch.stack(naive_fm))
    # changing masked-out entries changes nothing
    c = a.clone()
    c[mask.expand_as(a) == 0] += 100
    assert torch.allclose(ode_regression_loss(c, b, mask), ode_regression_loss(a, b, mask))
    assert torch.equal(masked_mean(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)), torch.zeros(2))


def test_dmd_gradient_is_the_normalised_score_difference_and_the_surrogate_carries_it():
    g = torch.Generator().manual_seed(1)
    x, real, fake = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    grad = dmd_gradient(x, real, fake)
    for i in range(2):  # naive: per item, (fake - real) / mean |x - real|
        assert torch.allclose(grad[i], (fake[i] - real[i]) / (x[i] - real[i]).abs().mean())
    x = x.requires_grad_()
    dmd_loss(x, real, fake).sum().backward()
    assert torch.allclose(x.grad, grad / 12, atol=1e-6)  # d/dx of 0.5 mean((x - sg(x - g))^2) = g / D
    # masked entries get neither gradient nor weight
    mask = torch.ones(2, 3, 1)
    mask[:, 0] = 0
    masked = dmd_gradient(x.detach(), real, fake, mask)
    assert masked[:, 0].abs().sum() == 0
    w = (x.detach()[0, 1:] - real[0, 1:]).abs().mean()
    assert torch.allclose(masked[0, 1:], (fake[0, 1:] - real[0, 1:]) / w)


def _gaussian_x0(x_t: torch.Tensor, t: torch.Tensor, mean: float) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(mean, 1) under x_t = (1 - t) x0 + t noise (closed form)."""
    a, var = 1 - t, (1 - t) ** 2 + t**2
    return mean + a / var * (x_t - a * mean)


def test_dmd_moves_samples_from_the_fake_distribution_to_the_real_one():
    """Closed-form scores of N(0, 1) (real) and the samples' own N(m, 1) (fake): gradient descent on the DMD
    loss must move the samples' mean to 0, whatever the re-noising times. The 4096 samples form one item
    (the normalisation averages over an item's entries, as over a latent's)."""
    g = torch.Generator().manual_seed(2)
    x = (2.0 + torch.randn(1, 4096, generator=g)).requires_grad_()
    opt = torch.optim.SGD([x], lr=0.2 * 4096)  # the surrogate's gradient is g / entries
    for _ in range(200):
        t = 0.02 + 0.96 * torch.rand(1, 1, generator=g)
        x_t = (1 - t) * x.detach() + t * torch.randn(1, 4096, generator=g)
        m = x.detach().mean().item()
        loss = dmd_loss(x, _gaussian_x0(x_t, t, 0.0), _gaussian_x0(x_t, t, m)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(x.mean().item()) < 0.1, x.mean().item()
    assert abs(x.std().item() - 1.0) < 0.1  # a shift of the mean; the spread is kept


@pytest.mark.slow
def test_toy_one_step_student_recovers_the_mixture_that_its_initialisation_misses():
    from streamchar.distill.toy import ToyConfig, run_toy

    cfg = ToyConfig(teacher_steps=1500, student_steps=800, batch=256, eval_samples=1500)
    rows = run_toy(cfg)["samplers"]
    before, after = rows["before (teacher, 1 step)"], rows["student (DMD, 1 step)"]
    print({k: (v["off_mode"], v["mmd_to_teacher"]) for k, v in rows.items()})
    assert rows["teacher"]["off_mode"] < 0.05  # the teacher itself samples the mixture
    assert before["off_mode"] > 0.9  # one Euler step lands between the modes
    assert after["mmd_to_teacher"] < 0.2 * before["mmd_to_teacher"]
    assert after["off_mode"] < 0.5 and min(after["mode_mass"]) > 0.05  # every mode gets mass


# -- stages on the tiny corpus ----------------------------------------------------------------------
DISTILL_OVERRIDES = [
    "distill.pairs=4", "distill.pair_teacher_steps=4", "distill.regression_steps=2", "distill.dmd_steps=2",
    "distill.batch_size=2", "distill.mixed_precision=no", "distill.ckpt_every=1", "distill.log_every=1",
    "distill.warmup_steps=0", "distill.rollout_chunks=2", "distill.rollout_steps=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(cache, tmp_path_factory):
    from streamchar.training.teacher import train_teacher
    from tests.test_teacher import _teacher_config

    run = tmp_path_factory.mktemp("teacher")
    train_teacher(_teacher_config(), cache, run, progress=False)
    return run


def _config(teacher, extra=()):
    from streamchar.config import load_config
    from tests.conftest import TINY_CORPUS_OVERRIDES

    return load_config(
        None,
        TINY_CORPUS_OVERRIDES + TRAIN_OVERRIDES + DISTILL_OVERRIDES + [f"distill.teacher={teacher}", *extra],
    )


def _weights(run):
    from safetensors.torch import load_file

    from streamchar.checkpoints import list_checkpoints

    last = list_checkpoints(run)[-1]
    return {n: load_file(str(last / f"{n}.safetensors")) for n in ("model", "optimizer", "optimizer-fake")}


def test_stage1_exports_a_student_that_loads_and_differs_from_the_teacher(cache, teacher, tmp_path):
    from streamchar.data.latents import LatentCache
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.loaders import load_teacher, read_distilled
    from streamchar.training.teacher import latent_spec_from_cache

    cfg = _config(teacher, ["distill.student_steps=1"])
    summary = distill_stage1(cfg, cache, tmp_path / "s1", progress=False)
    assert summary["finished"] and summary["step"] == 4
    assert len(list((tmp_path / "s1" / "pairs").glob("pairs-*.safetensors"))) == 1  # 4 pairs, 8 per shard
    info = read_distilled(tmp_path / "s1")
    assert info["steps"] == 1 and info["stage"] == "stage1" and info["folded_guidance"] == [2.0, 1.5, 1.5]
    spec = latent_spec_from_cache(LatentCache(cache))
    student, base = load_teacher(tmp_path / "s1" / "student", cfg, spec), load_teacher(teacher, cfg, spec)
    moved = max(
        (a - b).abs().max().item() for a, b in zip(student.parameters(), base.parameters(), strict=True)
    )
    assert moved > 0
    # a student asking for steps its pairs do not hold is refused with advice
    with pytest.raises(ValueError, match="record steps"):
        distill_stage1(_config(teacher, ["distill.student_steps=3"]), cache, tmp_path / "bad", progress=False)


def test_stage1_killed_and_resumed_equals_an_uninterrupted_run(cache, teacher, tmp_path):
    from streamchar.distill.stage1 import distill_stage1

    cfg = _config(teacher, ["distill.pairs_dir=" + str(tmp_path / "pairs")])
    distill_stage1(cfg, cache, tmp_path / "straight", progress=False)
    assert (
        distill_stage1(cfg, cache, tmp_path / "resumed", max_steps=3, progress=False)["step"] == 3
    )  # into DMD
    assert distill_stage1(cfg, cache, tmp_path / "resumed", progress=False)["step"] == 4
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_stage2_needs_a_stage1_student_then_rolls_out_and_exports(cache, teacher, tmp_path):
    from streamchar.checkpoints import CheckpointError
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import distill_stage2
    from streamchar.loaders import read_distilled

    with pytest.raises(CheckpointError, match="distill.init"):
        distill_stage2(_config(teacher), cache, tmp_path / "s2", progress=False)
    distill_stage1(_config(teacher), cache, tmp_path / "s1", progress=False)
    summary = distill_stage2(_config(teacher, [f"distill.init={tmp_path / 's1'}"]), cache, tmp_path / "s2",
                             progress=False)  # fmt: skip
    assert summary["finished"] and summary["rollout_chunks"] == 2
    assert math.isfinite(summary["last"]["dmd"]) and math.isfinite(summary["last"]["fake_flow"])
    assert read_distilled(tmp_path / "s2")["stage"] == "stage2"
    # trained to make only the timbre of its audio correction (what engine.audio_correction=timbre plays): the
    # distribution match sees another sample, so the student takes other steps
    timbre = distill_stage2(_config(teacher, [f"distill.init={tmp_path / 's1'}", "distill.audio_correction=timbre"]),
                            cache, tmp_path / "s2-timbre", progress=False)  # fmt: skip
    assert timbre["finished"] and timbre["last"]["dmd"] != summary["last"]["dmd"]
    whole, only_timbre = _weights(tmp_path / "s2")["model"], _weights(tmp_path / "s2-timbre")["model"]
    assert any(not torch.equal(whole[k], only_timbre[k]) for k in whole)
    with pytest.raises(ValueError, match="distill.audio_correction"):
        distill_stage2(_config(teacher, [f"distill.init={tmp_path / 's1'}", "distill.audio_correction=speech_timbre"]),
                       cache, tmp_path / "s2-bad", progress=False)  # fmt: skip
    assert not (tmp_path / "s2-bad").exists()  # refused before the run folder was made


def _stage_worker(
    rank: int, world: int, port: int, cache: str, teacher: str, run: str, stage: str, extra: list
):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    _run_stage(stage, _config(teacher, extra), cache, run)


def _run_stage(stage, cfg, cache, run):
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import distill_stage2

    return (distill_stage1 if stage == "stage1" else distill_stage2)(cfg, cache, run, progress=False)


@pytest.mark.parametrize("stage,strategy", [("stage1", "ddp"), ("stage2", "ddp"), ("stage1", "fsdp")])
def test_two_processes_take_the_step_of_one_process_with_the_combined_batch(
    cache, teacher, tmp_path, stage, strategy
):
    """`accelerate launch --num_processes 2` in miniature (gloo; DDP replicates, FSDP2 shards): regression and
    DMD steps of stage 1, rollout steps of stage 2; student, fake score and both optimisers must match one
    process with the combined batch."""
    extra = [
        "distill.batch_size=1",
        f"distill.pairs_dir={tmp_path / 'pairs'}",
        f"distill.fsdp={strategy == 'fsdp'}",
    ]
    if stage == "stage2":
        _run_stage("stage1", _config(teacher, ["distill.regression_steps=1", "distill.dmd_steps=0"]), cache,
                   tmp_path / "s1")  # fmt: skip
        extra += [f"distill.init={tmp_path / 's1'}"]
    _run_stage(stage, _config(teacher, extra + ["distill.batch_size=2"]), cache, tmp_path / "one")
    mp.spawn(_stage_worker, args=(2, _free_port(), str(cache), str(teacher), str(tmp_path / "two"), stage, extra),
             nprocs=2, join=True)  # fmt: skip
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["strategy"] == strategy
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])
    print(f"{stage} {strategy}: 2 processes x 1 vs 1 process x 2, max difference {worst:.2e}")
    assert worst < 1e-5


def test_engine_runs_a_student_with_its_own_steps_and_no_guidance_branches(cache, teacher, tmp_path):
    from types import SimpleNamespace

    from streamchar.distill.stage1 import distill_stage1
    from streamchar.engine.engine import Engine
    from streamchar.loaders import read_distilled

    cfg = _config(teacher, ["distill.student_steps=2"])
    distill_stage1(cfg, cache, tmp_path / "s1", progress=False)
    engine = Engine(cfg, SimpleNamespace(timeline=None), None, None)
    assert engine.sampler().guidance.num_branches == 4  # a teacher: the engine's guidance
    engine.distilled = read_distilled(tmp_path / "s1" / "student")  # what Engine.from_config reads
    sampler = engine.sampler()
    assert sampler.steps == 2 and sampler.guidance.num_branches == 1
    assert engine.sampler(steps=1).steps == 1


def test_compare_and_drift_reports(cache, teacher, tmp_path):
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.eval.protocols.distill import compare_samplers, drift_session, parse_contenders

    cfg = _config(teacher, [f"video_codec.path={cache.parent / 'codec'}", "sample.mixed_precision=no"])
    distill_stage1(cfg, cache, tmp_path / "s1", progress=False)
    student = str(tmp_path / "s1" / "student")
    models = parse_contenders([f"teacher8={teacher}@8", f"teacher2={teacher}@2", f"student={student}"], cfg)
    assert [m.sampler.guidance.num_branches for m in models] == [4, 4, 1] and models[2].sampler.steps == 2
    result = compare_samplers(cfg, models, cache, tmp_path / "cmp", windows=2)
    rows = result["samplers"]
    assert result["reference"] == "teacher8" and rows["teacher8"]["video_mse_to_reference"] == 0
    assert rows["teacher2"]["steps"] == 2 and rows["student"]["speedup_vs_reference"] > 1  # 2 calls vs 32
    assert (tmp_path / "cmp" / "compare_sheet.png").is_file() and "| student |" in (
        tmp_path / "cmp" / "compare.md"
    ).read_text()
    drift = drift_session(cfg, parse_contenders([f"s={student}", f"s_nosink={student}:nosink"], cfg), cache,
                          tmp_path / "drift", chunks=3, segment=1)  # fmt: skip
    assert len(drift["curves"]["s"]["identity_l1"]) == 3 and not drift["curves"]["s_nosink"]["sink"]
    assert (
        drift["curves"]["s"]["identity_l1"][0] == drift["curves"]["s_nosink"]["identity_l1"][0]
    )  # no sink yet
    assert (tmp_path / "drift" / "drift.png").is_file()
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_contenders(["just-a-path"], cfg)


def test_stage2_rollouts_planned_by_the_orchestrator_with_pointer_realignment(cache, teacher, tmp_path):
    from streamchar.data.latents import LatentCache
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import PlannedConditions, distill_stage2

    cfg = _config(teacher)
    lc = LatentCache(cache)
    planner = PlannedConditions(cfg, lc)
    assert planner.probe_scores["per"] < 0.1  # the evaluation suite's recognizer (distill.phoneme_reader)
    fallback = PlannedConditions(_config(teacher, ["distill.phoneme_reader=null"]), lc)
    assert fallback.probe_scores["train_accuracy"] > 0.3  # without it: a frame probe fitted on ground truth
    keys = [e["key"] for e in lc.entries("train")[:2]]
    sessions = planner.start(keys)
    L_a = cfg.timeline.chunk_audio_tokens
    speaking = 0
    for _ in range(4):
        units, talk = planner.plan(sessions, "cpu")
        assert units.shape == talk.shape == (2, L_a)
        speaking += int(talk.sum())
        before = [s.pointer for s in sessions]
        lags = planner.realign(sessions, torch.randn(2, L_a, lc.tensor(lc.entries()[0], "audio").shape[1]))
        assert all(lag >= 0 for lag in lags) and all(
            s.pointer >= b for s, b in zip(sessions, before, strict=True)
        )
    assert speaking > 0  # the transcripts are being spoken
    distill_stage1(cfg, cache, tmp_path / "s1", progress=False)
    planned = _config(teacher, [f"distill.init={tmp_path / 's1'}", "distill.rollout_conditions=orchestrator"])
    summary = distill_stage2(planned, cache, tmp_path / "s2", progress=False)
    assert summary["rollout_conditions"] == "orchestrator" and math.isfinite(summary["last"]["pointer_lag"])


def test_frame_phoneme_loss_is_the_masked_mean_cross_entropy():
    from streamchar.distill.losses import frame_phoneme_loss

    g = torch.Generator().manual_seed(0)
    logits, phonemes = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 1]])
    naive = []
    for b in range(2):
        terms = [-torch.log_softmax(logits[b, t], -1)[phonemes[b, t]] for t in range(5) if mask[b, t]]
        naive.append(sum(terms) / len(terms))
    torch.testing.assert_close(frame_phoneme_loss(logits, phonemes, mask), torch.stack(naive))


def test_stage2_phoneme_loss_reads_the_chunks_phonemes_and_trains_the_student(cache, teacher, tmp_path):
    from streamchar.data.latents import LatentCache
    from streamchar.distill.stage1 import distill_stage1
    from streamchar.distill.stage2 import PhonemeTarget, distill_stage2

    lc = LatentCache(cache)
    target = PhonemeTarget(lc, "cpu")
    for entry in lc.entries()[:4]:  # units -> phonemes is the cache's own per-token phoneme ids
        units, ids = lc.tensor(entry, "units").long(), lc.tensor(entry, "phoneme_ids").long()
        n = min(len(units), len(ids))
        assert torch.equal(units[:n] // target.unit_size, ids[:n])
    distill_stage1(_config(teacher), cache, tmp_path / "s1", progress=False)
    runs = {}
    for weight in (0.0, 1.0):
        cfg = _config(teacher, [f"distill.init={tmp_path / 's1'}", f"distill.phoneme_weight={weight}"])
        runs[weight] = distill_stage2(cfg, cache, tmp_path / f"s2-{weight}", progress=False)
    assert runs[0.0]["phoneme_loss"] is None and "phoneme_ce" not in runs[0.0]["last"]
    assert runs[1.0]["phoneme_loss"]["weight"] == 1.0 and math.isfinite(runs[1.0]["last"]["phoneme_ce"])
    a, b = _weights(tmp_path / "s2-0.0")["model"], _weights(tmp_path / "s2-1.0")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the loss reaches the student
    assert runs[0.0]["last"]["dmd"] == pytest.approx(runs[1.0]["last"]["dmd"], rel=0.5)  # dmd logged alone


def test_chunk_mean_loss_compares_the_frame_means_over_weighted_cells():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    cells = torch.rand(5, 5, generator=g)
    naive = []
    for i in range(2):
        total = weight = 0.0
        for c in range(3):
            for y in range(5):
                for x in range(5):
                    d = sum(a[i, c, f, y, x] - b[i, c, f, y, x] for f in range(4)) / 4
                    total, weight = total + cells[y, x] * d**2, weight + cells[y, x]
        naive.append(total / weight)
    torch.testing.assert_close(chunk_mean_loss(a, b, cells), torch.stack(naive))
    torch.testing.assert_close(chunk_mean_loss(a, b), (a.mean(2) - b.mean(2)).pow(2).flatten(1).mean(1))
    # frames that differ from the target only around the same mean cost nothing
    shuffled = b[:, :, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(chunk_mean_loss(shuffled, b), torch.zeros(2))


def test_stage2_video_mean_regression_reaches_the_student_and_bad_weights_are_refused(
    cache, teacher, tmp_path
):
    from streamchar.distill.stage2 import distill_stage2

    runs = {}
    for weight in (0.0, 1.0):
        cfg = _config(teacher, [f"distill.init={teacher}", f"distill.video_mean_weight={weight}"])
        runs[weight] = distill_stage2(cfg, cache, tmp_path / f"s2-{weight}", progress=False)
    assert "video_mean" not in runs[0.0]["last"] and runs[1.0]["video_mean_weight"] == 1.0
    assert math.isfinite(runs[1.0]["last"]["video_mean"]) and runs[1.0]["last"]["video_mean"] > 0
    a, b = _weights(tmp_path / "s2-0.0")["model"], _weights(tmp_path / "s2-1.0")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="distill.video_mean_weight"):
        distill_stage2(_config(teacher, [f"distill.init={teacher}", "distill.video_mean_weight=-1"]), cache,
                       tmp_path / "s2-bad", progress=False)  # fmt: skip
    assert not (tmp_path / "s2-bad").exists()  # refused before the run folder was made


class _TimeSpy(torch.nn.Module):
    """A denoiser that records the ``(t_video, t_audio)`` of every call and returns the wrapped model's."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.times, self.num_units = model, [], model.num_units

    def forward(self, video, audio, t, *args):
        self.times.append((t[0].clone(), t[1].clone()))
        return self.model(video, audio, t, *args)


def test_two_start_student_is_the_euler_sampler_on_each_modalitys_grid():
    """A student of a teacher with two starts: its clean prediction after the last step equals the sampler with
    the same two starts (tested against a naive loop in test_residual), and from its first step, the naive one-step
    prediction from each modality's own start and time."""
    from streamchar.denoiser.flow import EulerSampler
    from streamchar.distill.objective import DistillObjective
    from tests.denoiser_helpers import random_window, tiny_dit

    model = tiny_dit()
    model.sample_start, model.sample_start_video = 0.3, 1.0
    video, audio, _, cond, ctx = random_window()
    mask = torch.ones(audio.shape[:2], dtype=torch.bool)
    obj = DistillObjective(steps=2, guidance=Guidance(), start=0.3, start_video=1.0)
    assert obj.grid_video == [1.0, 0.5, 0.0] and obj.grid == pytest.approx([0.3, 0.15, 0.0])
    with torch.no_grad():
        x0 = obj.student_x0(model, (video, audio), cond, ctx, mask)
        reference = EulerSampler(steps=2).sample(model, video, audio, cond, ctx, audio_valid=mask)
        torch.testing.assert_close(x0[0], reference[0])
        torch.testing.assert_close(x0[1], reference[1])
        first = obj.student_x0(model, (video, audio), cond, ctx, mask, exit_step=0)
        b = video.shape[0]
        v_video, v_audio = model(video, 0.3 * audio, (torch.ones(b), torch.full((b,), 0.3)), cond, ctx, mask)
        torch.testing.assert_close(first[0], video - v_video)
        torch.testing.assert_close(first[1], 0.3 * audio - 0.3 * v_audio)


def test_two_start_draws_add_the_videos_own_times_and_keep_one_start_draws_as_they_were():
    from streamchar.denoiser.flow import video_noise
    from streamchar.distill.objective import DistillObjective
    from tests.denoiser_helpers import random_batch

    batch = random_batch(b=3)
    shape_v, shape_a = (3, *batch["video"].shape[1:]), (3, *batch["audio"].shape[1:])
    one = DistillObjective(t_min=0.02, t_max=0.5, fake_updates=2).draw(
        batch, torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)  # the naive replay of one start's draws
    naive = {"noise_video": torch.randn(shape_v, generator=g), "noise_audio": torch.randn(shape_a, generator=g),
             "t": 0.02 + 0.48 * torch.rand(3, generator=g), "renoise_video": torch.randn(shape_v, generator=g),
             "renoise_audio": torch.randn(shape_a, generator=g)}  # fmt: skip
    for i in range(2):
        naive[f"fake_t{i}"] = 0.02 + 0.48 * torch.rand(3, generator=g)
        naive[f"fake_video{i}"], naive[f"fake_audio{i}"] = (
            torch.randn(shape_v, generator=g),
            torch.randn(shape_a, generator=g),
        )
    naive["exit"] = torch.randint(0, 2, (1,), generator=g)
    assert one.keys() == naive.keys()
    for k in naive:
        torch.testing.assert_close(one[k], naive[k])

    two = DistillObjective(t_min=0.02, t_max=0.5, fake_updates=2, start=0.3, start_video=1.0, t_max_video=0.98,
                           video_noise_share=0.5).draw(batch, torch.Generator().manual_seed(5))  # fmt: skip
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(two["noise_video"], video_noise(shape_v, g, 0.5))
    for k in ("t_video", "fake_t_video0", "fake_t_video1"):
        assert two[k].shape == (3,) and ((two[k] >= 0.02) & (two[k] <= 0.98)).all()
    assert not torch.equal(two["t_video"], two["t"]) and (two["t"] <= 0.5).all()


def test_dmd_and_the_fake_score_renoise_each_modality_at_its_own_time():
    from streamchar.distill.objective import DistillObjective
    from tests.denoiser_helpers import random_batch, tiny_dit

    batch = random_batch(b=2)
    obj = DistillObjective(guidance=Guidance(), t_max=0.5, start=0.3, start_video=1.0, t_max_video=0.98)
    draws = obj.draw(batch, torch.Generator().manual_seed(2))
    real, fake = _TimeSpy(tiny_dit(seed=1)), _TimeSpy(tiny_dit(seed=2))
    x0 = (torch.randn_like(batch["video"]), torch.randn_like(batch["audio"]))
    obj.dmd(x0, real, fake, batch, draws)
    obj.fake_score(fake, x0, batch, draws, 0)
    for spy in (real, fake):
        torch.testing.assert_close(spy.times[0][0], draws["t_video"])
        torch.testing.assert_close(spy.times[0][1], draws["t"])
    torch.testing.assert_close(fake.times[1][0], draws["fake_t_video0"])
    torch.testing.assert_close(fake.times[1][1], draws["fake_t0"])


def test_the_students_objective_follows_the_teachers_starts_and_training_record(tmp_path):
    from streamchar.distill.objective import DistillObjective
    from streamchar.distill.trainer import objective_for_teacher
    from tests.denoiser_helpers import tiny_dit

    model = tiny_dit(residual_scales=(0.5, 0.5))
    model.sample_start = 0.3
    (tmp_path / "train_teacher.json").write_text(json.dumps({"max_t": 0.5, "max_t_video": 1.0,
                                                             "video_noise_share": 0.5}))  # fmt: skip
    one = objective_for_teacher(DistillObjective(t_max=0.98), model, str(tmp_path))
    assert (one.start, one.t_max, one.start_video, one.t_max_video) == (0.3, 0.5, None, None)
    model.sample_start_video = 1.0  # the video sampled from noise, the audio shallowly
    two = objective_for_teacher(DistillObjective(t_max=0.98), model, str(tmp_path))
    assert (two.start, two.t_max, two.start_video, two.t_max_video, two.video_noise_share) == (
        0.3, 0.5, 1.0, 0.98, 0.5)  # fmt: skip
    # a one-start student of another teacher keeps its start; the re-noising follows this teacher
    from streamchar.checkpoints import CheckpointError
    from streamchar.distill.trainer import check_student_state

    own = tiny_dit(residual_scales=(0.5, 0.5))
    own.sample_start = 0.3
    kept = objective_for_teacher(DistillObjective(t_max=0.98), model, str(tmp_path), own)
    assert (kept.start, kept.start_video, kept.video_start, kept.t_max, kept.t_max_video) == (
        0.3,
        None,
        0.3,
        0.5,
        0.98,
    )
    check_student_state(own, model, "student")
    with pytest.raises(CheckpointError, match="distill.init"):
        check_student_state(tiny_dit(), model, "plain student")


def test_a_two_start_teachers_pair_trajectory_ends_where_its_sampler_does():
    """The pair trajectory of a teacher with two starts ends where its sampler does, each modality from its own
    start (the sampler is tested against a naive loop in test_residual)."""
    from streamchar.denoiser.flow import EulerSampler
    from streamchar.distill.pairs import PairSpec, teacher_trajectory
    from tests.denoiser_helpers import random_batch, tiny_dit

    model = tiny_dit()
    model.sample_start, model.sample_start_video = 0.5, 1.0
    batch = random_batch(b=2)
    noise = (torch.randn_like(batch["video"]), torch.randn_like(batch["audio"]))
    spec = PairSpec(teacher_steps=4, record_steps=2, guidance=(1.5, 1.0, 1.0), start=0.5, start_video=1.0)
    with torch.no_grad():
        path = teacher_trajectory(model, spec, batch, noise)
        sampler = EulerSampler(steps=4, guidance=Guidance(1.5, 1.0, 1.0))
        end = sampler.sample(model, *noise, Conditions.of(batch), TeacherObjective.context(batch),
                             audio_valid=batch["audio_mask"])  # fmt: skip
    torch.testing.assert_close(path["video_x0"], end[0])
    torch.testing.assert_close(path["audio_x0"], end[1])
    torch.testing.assert_close(path["video_0"], noise[0])  # the video from t = 1, the audio from 0.5
    torch.testing.assert_close(path["audio_0"], 0.5 * noise[1])
    assert "start_video" not in PairSpec().record()  # one start's pairs.json is as before
    assert spec.record()["start_video"] == 1.0


def test_an_audio_teacher_scores_the_audio_and_the_teacher_the_video():
    """distill.audio_teacher: the audio's real score is the second teacher's, read at the audio's time for both
    modalities (a naive recomputation); the video's part is the teacher's as without it."""
    from streamchar.checkpoints import CheckpointError
    from streamchar.denoiser.flow import FlowMatching
    from streamchar.distill.objective import DistillObjective
    from streamchar.distill.trainer import check_audio_teacher
    from tests.denoiser_helpers import random_batch, tiny_dit

    batch = random_batch(b=2)
    obj = DistillObjective(guidance=Guidance(), t_max=0.5, start=0.3, start_video=1.0, t_max_video=0.98)
    draws = obj.draw(batch, torch.Generator().manual_seed(4))
    teacher, audio_teacher, fake = _TimeSpy(tiny_dit(seed=1)), _TimeSpy(tiny_dit(seed=2)), tiny_dit(seed=3)
    x0 = (torch.randn_like(batch["video"]), torch.randn_like(batch["audio"]))
    with torch.no_grad():
        _, parts = obj.dmd(x0, teacher, fake, batch, draws, audio_teacher=audio_teacher)
        _, alone = obj.dmd(x0, teacher, fake, batch, draws)
        t, tv, flow = draws["t"], draws["t_video"], FlowMatching()
        torch.testing.assert_close(audio_teacher.times[0][0], t)
        torch.testing.assert_close(teacher.times[0][0], tv)
        cond, ctx, mask = Conditions.of(batch), TeacherObjective.context(batch), batch["audio_mask"]
        audio_t = flow.interpolate(x0[1], draws["renoise_audio"], t)
        video_t = flow.interpolate(x0[0], draws["renoise_video"], tv)
        _, real = audio_teacher.model(
            flow.interpolate(x0[0], draws["renoise_video"], t), audio_t, (t, t), cond, ctx, mask
        )
        _, fake_a = fake(video_t, audio_t, (tv, t), cond, ctx, mask)
        expected = dmd_loss(x0[1], flow.predict_x0(audio_t, real, t), flow.predict_x0(audio_t, fake_a, t),
                            mask.float()[..., None])  # fmt: skip
    torch.testing.assert_close(parts["audio"], expected)
    torch.testing.assert_close(parts["video"], alone["video"])
    assert not torch.allclose(parts["audio"], alone["audio"])

    residual = tiny_dit(residual_scales=(0.5, 0.5))
    check_audio_teacher(tiny_dit(residual_scales=(0.5, 0.5)), residual, "same")
    with pytest.raises(CheckpointError, match="distill.audio_teacher"):
        check_audio_teacher(tiny_dit(), residual, "plain")


def test_a_tied_audio_score_reads_the_video_at_the_audios_time():
    """distill.audio_score_tied: the audio's real and fake scores both read the video re-noised at the audio's time
    (a naive recomputation); the video's part is as without it."""
    from streamchar.denoiser.flow import FlowMatching
    from streamchar.distill.objective import DistillObjective
    from tests.denoiser_helpers import random_batch, tiny_dit

    batch = random_batch(b=2)
    plain = DistillObjective(guidance=Guidance(), t_max=0.5, start=0.3, start_video=1.0, t_max_video=0.98)
    tied = replace(plain, audio_score_tied=True)
    draws = plain.draw(batch, torch.Generator().manual_seed(5))
    teacher, fake = tiny_dit(seed=1), _TimeSpy(tiny_dit(seed=3))
    x0 = (torch.randn_like(batch["video"]), torch.randn_like(batch["audio"]))
    with torch.no_grad():
        _, parts = tied.dmd(x0, teacher, fake, batch, draws)
        assert len(fake.times) == 2  # the fake at both times, once each
        torch.testing.assert_close(
            fake.times[1][0], draws["t"]
        )  # the fake's second call: the video at t_audio
        _, alone = plain.dmd(x0, teacher, fake.model, batch, draws)
        t, flow = draws["t"], FlowMatching()
        cond, ctx, mask = Conditions.of(batch), TeacherObjective.context(batch), batch["audio_mask"]
        audio_t = flow.interpolate(x0[1], draws["renoise_audio"], t)
        video_ta = flow.interpolate(x0[0], draws["renoise_video"], t)
        _, real = teacher(video_ta, audio_t, (t, t), cond, ctx, mask)
        _, fake_a = fake.model(video_ta, audio_t, (t, t), cond, ctx, mask)
        expected = dmd_loss(x0[1], flow.predict_x0(audio_t, real, t), flow.predict_x0(audio_t, fake_a, t),
                            mask.float()[..., None])  # fmt: skip
    torch.testing.assert_close(parts["audio"], expected)
    torch.testing.assert_close(parts["video"], alone["video"])
    assert not torch.allclose(parts["audio"], alone["audio"])


def test_timbre_loss_compares_the_mean_spectra_over_the_kept_frames():
    from streamchar.distill.losses import timbre_loss

    g = torch.Generator().manual_seed(0)
    b, t, bins, per = 3, 5, 4, 2
    x, y = torch.randn(b, t, bins * per, generator=g), torch.randn(b, t, bins * per, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = timbre_loss(x, y, mask, bins)
    for i in range(b):
        frames_x = [x[i, k, j * bins : (j + 1) * bins] for k in range(t) if mask[i, k] for j in range(per)]
        frames_y = [y[i, k, j * bins : (j + 1) * bins] for k in range(t) if mask[i, k] for j in range(per)]
        if not frames_x:
            assert got[i] == 0
            continue
        expected = (torch.stack(frames_x).mean(0) - torch.stack(frames_y).mean(0)).pow(2).mean()
        torch.testing.assert_close(got[i], expected)
    # a change of the spectrum within the chunk that keeps its mean costs nothing
    shifted = y.clone()
    shifted[:, 0, :bins] += 1.0
    shifted[:, 1, :bins] -= 1.0
    torch.testing.assert_close(
        timbre_loss(shifted, y, torch.ones(b, t, dtype=torch.bool), bins), torch.zeros(b)
    )


def test_stage2_timbre_regression_reaches_the_student_and_bad_weights_are_refused(cache, teacher, tmp_path):
    from streamchar.distill.stage2 import distill_stage2

    cfg = _config(teacher, [f"distill.init={teacher}", "distill.audio_timbre_weight=1.0"])
    run = distill_stage2(cfg, cache, tmp_path / "s2-timbre", progress=False)
    assert run["audio_timbre_weight"] == 1.0 and math.isfinite(run["last"]["audio_timbre"])
    plain = distill_stage2(
        _config(teacher, [f"distill.init={teacher}"]), cache, tmp_path / "s2", progress=False
    )
    assert "audio_timbre" not in plain["last"]
    a, b = _weights(tmp_path / "s2")["model"], _weights(tmp_path / "s2-timbre")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="distill.audio_timbre_weight"):
        distill_stage2(_config(teacher, [f"distill.init={teacher}", "distill.audio_timbre_weight=-1"]), cache,
                       tmp_path / "s2-bad", progress=False)  # fmt: skip
    assert not (tmp_path / "s2-bad").exists()
