"""The evaluation suite: front-ends, error rates and word decoding against naive references, the sync
measure's offset convention, the Fréchet distance, resumable instrument training, and the protocols."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from streamchar.eval.instruments.recognizer import Lexicon
from streamchar.eval.metrics import features as F
from streamchar.eval.metrics.error_rates import edit_distance, error_rate, normalise_words
from streamchar.orchestrator import reader
from streamchar.orchestrator.reader import greedy_phonemes

EAGER = [
    "engine.compile=off"
]  # protocol runs here do not pay for compiling the step (tests/test_fastpath.py does)


# -- front-ends -----------------------------------------------------------------------------------
def test_front_ends_have_the_documented_shapes_and_reject_bad_input():
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    mel = reader.log_mel(audio)
    assert mel.shape == (100, reader.MEL_BANDS)
    assert torch.allclose(mel.mean(0), torch.zeros(reader.MEL_BANDS), atol=1e-4)  # per-utterance normalised
    frames = np.random.default_rng(0).integers(0, 255, (3, 128, 128, 3), dtype=np.uint8)
    assert F.mouth_crops(frames).shape == (3, *F.MOUTH_SHAPE)
    assert F.face_views(frames).shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="RGB frames"):
        F.mouth_crops(frames[..., 0])
    with pytest.raises(ValueError, match="resample"):
        reader.log_mel(audio, sample_rate=22050)


# -- error rates and decoding ---------------------------------------------------------------------
def _naive_edit_distance(a, b):
    """Exhaustive recursion (exponential; fine for tiny inputs)."""
    if not a or not b:
        return len(a) + len(b)
    return min(_naive_edit_distance(a[1:], b) + 1, _naive_edit_distance(a, b[1:]) + 1,
               _naive_edit_distance(a[1:], b[1:]) + (a[0] != b[0]))  # fmt: skip


def test_edit_distance_matches_the_naive_recursion():
    rng = np.random.default_rng(1)
    for _ in range(40):
        a, b = list(rng.integers(0, 3, rng.integers(0, 6))), list(rng.integers(0, 3, rng.integers(0, 6)))
        assert edit_distance(a, b) == _naive_edit_distance(a, b)
    assert error_rate([([1, 2, 3, 4], [1, 3, 4]), (["a"], ["a", "b"])]) == pytest.approx(2 / 5)


def test_text_normalisation_and_greedy_ctc():
    assert normalise_words("Hello, World! It's 'fine'-ish.") == ["hello", "world", "it's", "fine'", "ish"]
    log_probs = torch.log(torch.eye(5)[[0, 3, 3, 0, 3, 2, 2, 0]] * 0.9 + 0.02)
    assert greedy_phonemes(log_probs) == [3, 3, 2]


def _brute_force_decode(lexicon: Lexicon, phonemes, penalty, skip):
    """Every segmentation of the hypothesis into words or skipped phonemes (exponential)."""
    best = (float("inf"), None)
    n = len(phonemes)

    def walk(position, cost, words):
        nonlocal best
        if cost >= best[0]:
            return
        if position == n:
            best = (cost, list(words))
            return
        walk(position + 1, cost + skip, words)
        for end in range(position + 1, n + 1):
            costs = [edit_distance(p, phonemes[position:end]) + penalty for p in lexicon.pronunciations]
            w = int(np.argmin(costs))
            walk(end, cost + costs[w], [*words, lexicon.words[w]])

    walk(0, 0.0, [])
    return best


def test_lexicon_decoding_finds_the_optimal_segmentation():
    lexicon = Lexicon(["cat", "at", "tack", "a"], [[5, 1, 8], [1, 8], [8, 1, 5], [1]])
    assert lexicon.decode([5, 1, 8, 8, 1, 5]) == ["cat", "tack"]
    assert lexicon.decode([5, 2, 8, 1, 8], word_penalty=0.5) == [
        "cat",
        "at",
    ]  # a substitution: still the nearest word
    rng = np.random.default_rng(2)
    for _ in range(25):
        hyp = [int(x) for x in rng.choice([1, 5, 8, 9], rng.integers(1, 7))]
        words = lexicon.decode(hyp, word_penalty=1.0, skip_cost=1.0)
        cost, _ = _brute_force_decode(lexicon, hyp, 1.0, 1.0)
        # the decoder's segmentation costs exactly the brute-force optimum
        assert _segmentation_cost(lexicon, hyp, words) == pytest.approx(cost)


def _segmentation_cost(lexicon, hyp, words):
    """The cheapest way to explain ``hyp`` with exactly ``words`` in order (skips allowed)."""
    prons = [lexicon.pronunciations[lexicon.words.index(w)] for w in words]
    best = {(0, 0): 0.0}
    for i, k in itertools.product(range(len(hyp) + 1), range(len(prons) + 1)):
        if (i, k) not in best:
            continue
        c = best[(i, k)]
        if i < len(hyp):
            best[(i + 1, k)] = min(best.get((i + 1, k), np.inf), c + 1.0)
        if k < len(prons):
            for end in range(i + 1, len(hyp) + 1):
                v = c + edit_distance(prons[k], hyp[i:end]) + 1.0
                best[(end, k + 1)] = min(best.get((end, k + 1), np.inf), v)
    return best[(len(hyp), len(prons))]


def test_lexicon_round_trips_through_its_file(tmp_path):
    lexicon = Lexicon(["hello", "world"], [[10, 3, 14], [29, 45]])
    lexicon.save(tmp_path / "lexicon.tsv.gz")
    back = Lexicon.load(tmp_path / "lexicon.tsv.gz")
    assert back.words == lexicon.words and back.pronunciations == lexicon.pronunciations


# -- sync measure -----------------------------------------------------------------------------------
class _CodeExpert:
    """A stand-in expert: the video window's embedding is its mean mouth brightness code, the audio
    window's the mean of its mel code; both see the same per-frame code, so sync is exact."""

    def embed_video(self, mouths):
        return mouths.float().mean(dim=(2, 3))  # [B, 5]

    def embed_audio(self, mel):
        return mel[..., 0].reshape(len(mel), 5, 4).mean(-1)  # [B, 5]


def test_sync_measure_finds_the_applied_shift_with_the_documented_sign():
    from streamchar.eval.instruments.sync_expert import shift_audio, sync_scores

    code = torch.from_numpy(np.random.default_rng(3).integers(0, 200, 80)).float()  # [T]
    mouth = code[:, None, None].expand(80, 24, 32).to(torch.uint8)
    mel = code.repeat_interleave(4)[:, None].expand(320, reader.MEL_BANDS).clone()
    aligned = sync_scores(_CodeExpert(), mouth, mel)
    assert aligned["offset"] == 0 and aligned["sync_c0"] == pytest.approx(aligned["sync_c"])
    for k in (-7, -2, 3, 10):
        scores = sync_scores(_CodeExpert(), mouth, shift_audio(mel, k))
        assert scores["offset"] == k  # audio delayed by k frames -> offset +k
        assert scores["sync_c"] > 0 and scores["sync_d"] == pytest.approx(0.0, abs=1e-4)
        assert scores["sync_c0"] < scores["sync_c"]  # the confidence at the nominal alignment falls
    with pytest.raises(ValueError, match="at least"):
        sync_scores(_CodeExpert(), mouth[:20], mel[:80])


# -- encoders' measures ------------------------------------------------------------------------------
def test_frechet_block_sd_matches_the_spread_over_fresh_samples():
    from streamchar.eval.metrics.statistics import frechet_block_sd, frechet_distance

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4000, 4))
    fresh = [frechet_distance(rng.normal(0.3, 1.0, size=(300, 4)), reference) for _ in range(200)]
    sample = rng.normal(0.3, 1.0, size=(300, 4))
    # independent rows: blocks of one are the plain bootstrap, whose spread is the sampling spread
    assert frechet_block_sd(sample, reference, block=1, draws=300) == pytest.approx(np.std(fresh), rel=0.3)
    # rows that come in runs of 10 equal copies: blocks of 10 see the larger spread that blocks of 1 miss
    runs = np.repeat(sample[:30], 10, axis=0)
    assert frechet_block_sd(runs, reference, block=10) > 2 * frechet_block_sd(runs, reference, block=1)
    with pytest.raises(ValueError, match="smaller block"):
        frechet_block_sd(sample[:15], reference, block=10)


def test_frechet_block_sd_paired_sees_through_what_two_rows_share():
    from streamchar.eval.metrics.statistics import frechet_block_sd

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(4000, 4))
    shared = rng.normal(0.3, 1.0, size=(300, 4))  # the clips both models make frames of
    a, other = shared + rng.normal(0, 0.05, shared.shape), shared + rng.normal(0, 0.05, shared.shape)
    alone = np.hypot(frechet_block_sd(a, reference, 5), frechet_block_sd(other, reference, 5))
    paired = frechet_block_sd(a, reference, 5, minus=other)
    assert paired < 0.3 * alone  # what the rows share cancels in the difference
    assert frechet_block_sd(a, reference, 5, minus=a) == 0.0
    # independent rows: the paired spread is the two spreads added in quadrature
    independent = rng.normal(0.3, 1.0, size=(300, 4))
    both = frechet_block_sd(a, reference, 1, draws=300, minus=independent)
    assert both == pytest.approx(
        np.hypot(
            frechet_block_sd(a, reference, 1, draws=300),
            frechet_block_sd(independent, reference, 1, draws=300),
        ),
        rel=0.3,
    )
    with pytest.raises(ValueError, match="aligned rows"):
        frechet_block_sd(a, reference, 5, minus=other[:-1])


def test_frechet_distance_matches_the_closed_form():
    from streamchar.eval.metrics.statistics import frechet_distance

    rng = np.random.default_rng(4)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(0, 1, (4000, 3)) * np.array([1.0, 2.0, 3.0]) + np.array([1.0, 0.0, 0.0])
    # diagonal covariances: |mu|^2 + sum (s_a - s_b)^2
    assert frechet_distance(a, b) == pytest.approx(1.0 + 0 + 1 + 4, rel=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_pair_auc_is_one_for_separated_clusters_and_a_half_for_noise():
    from streamchar.eval.metrics.statistics import pair_auc

    labels = [0] * 10 + [1] * 10
    clustered = torch.nn.functional.normalize(torch.eye(2)[labels] + 0.05 * torch.randn(20, 2), dim=-1)
    assert pair_auc(clustered, labels) == 1.0
    noise = torch.nn.functional.normalize(
        torch.randn(400, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    assert abs(pair_auc(noise, [i % 4 for i in range(400)]) - 0.5) < 0.05


def test_mouth_reader_learns_opening_and_planned_opening_follows_phonemes():
    from streamchar.data.phonemes import PHONEME_TO_ID
    from streamchar.eval.instruments.mouth_probe import (
        load_mouth_reader,
        planned_mouth_open,
        train_mouth_reader,
    )
    from streamchar.loaders import InstrumentError

    rng = np.random.default_rng(5)
    opening = rng.uniform(0, 1, 1200)
    rows = np.arange(24)[None, :, None]
    mouths = np.where(np.abs(rows - 12) < 1 + 8 * opening[:, None, None], 40, 200).repeat(32, 2)  # a dark gap
    mouths = (mouths + rng.normal(0, 4, mouths.shape)).clip(0, 255).astype(np.uint8)
    reader = train_mouth_reader(
        torch.from_numpy(mouths[:1000]), torch.from_numpy(opening[:1000]), steps=150, batch=64
    )
    assert np.corrcoef(reader.predict(mouths[1000:]), opening[1000:])[0, 1] > 0.9
    plan = np.array([0] * 10 + [PHONEME_TO_ID["aa"]] * 10 + [PHONEME_TO_ID["m"]] * 5 + [0] * 10)
    open_track = planned_mouth_open(plan, 25)
    assert open_track[13:18].mean() > 0.3 > open_track[:5].mean()
    assert open_track[21:24].mean() < open_track[13:18].mean()  # lips close on /m/
    with pytest.raises(InstrumentError, match="config.json"):
        load_mouth_reader("/nonexistent/mouth")


# -- training loop and instrument folders ------------------------------------------------------------------
def test_fit_resumes_to_the_same_weights(tmp_path):
    from streamchar.eval.instruments.base import fit

    def run(steps, run_dir):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)

        def loss_fn(g):
            x = torch.randn(8, 4, generator=g)
            return (model(x).float() - x.sum(1, keepdim=True)).square().mean(), {}

        return fit(model, loss_fn, steps, run_dir, checkpoint_every=3, warmup=2, desc="t")

    straight = run(6, None)
    run(3, tmp_path / "run")  # stops after its checkpoint at step 3
    resumed = run(6, tmp_path / "run")
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_instrument_folders_round_trip_and_name_what_is_missing(tmp_path):
    from streamchar.eval.instruments.encoders import IdentityEncoder, load_identity_encoder, save_encoder
    from streamchar.loaders import InstrumentError

    model = IdentityEncoder().eval()
    save_encoder(model, tmp_path / "identity", {"roc_auc": 0.5}, "card")
    back = load_identity_encoder(tmp_path / "identity")
    faces = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    assert torch.allclose(back(faces), model(faces), atol=1e-5)
    with pytest.raises(InstrumentError, match="config.json"):
        load_identity_encoder(tmp_path / "missing")
    (tmp_path / "identity" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InstrumentError, match="corrupt"):
        load_identity_encoder(tmp_path / "identity")


# -- end to end on the tiny corpus ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def instruments(tiny_corpus, tmp_path_factory):
    """Every instrument trained for a few steps on the tiny corpus (too short to be good; enough to run)."""
    from streamchar.eval.instruments.train import train_instrument

    root = tmp_path_factory.mktemp("eval")
    F.build_eval_cache(tiny_corpus, root / "cache")
    for name in ("recognizer", "sync", "identity", "speaker", "mouth"):
        train_instrument(name, root / "cache", root / "instruments", steps=3, run_root=root / "runs")
    return root


def test_instruments_train_prove_and_report(instruments, tmp_path):
    from streamchar.eval.protocols.proofs import prove_instruments

    result = prove_instruments(
        instruments / "cache", instruments / "instruments", tmp_path / "proof", heldout_voices=2
    )
    assert {"recognizer", "sync", "identity", "speaker", "frechet", "mouth_probe"} <= set(result)
    assert set(result["sync"]["per_shift"]) == {0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 7, -7, 10, -10}
    for suffix in (".json", ".md"):
        assert (tmp_path / f"proof{suffix}").is_file()
    assert (tmp_path / "proof.png").is_file()
    assert (instruments / "instruments" / "recognizer" / "lexicon.tsv.gz").is_file()


def test_short_protocol_runs_a_student_through_the_engine(instruments, tiny_corpus, tmp_path):
    import json

    from streamchar.config import load_config
    from streamchar.eval.protocols.heldout import run_protocol

    s2 = "checkpoints/tiny/student-s2-2step"
    # without realignment both rows follow one plan, so their frames pair up for the Fréchet difference
    result = run_protocol(load_config(None, EAGER), "short", [f"s2={s2}:norealign", f"priors={s2}:prioronly:norealign"],
                          tmp_path, corpus=tiny_corpus, eval_cache=instruments / "cache",
                          instruments=instruments / "instruments", clips=1)  # fmt: skip
    student, truth = result["models"]["s2"], result["models"]["ground_truth"]
    priors = result["models"]["priors"]
    assert (
        student["frechet_sd"] > 0 and priors["frechet_sd"] > 0 and "frechet_minus_prior_alone" not in priors
    )
    assert student["frechet_minus_prior_alone"] == pytest.approx(
        student["frechet"] - priors["frechet"], abs=2e-5
    )
    assert 0 < student["frechet_minus_prior_alone_sd"]
    # one clip: no standard error, so no per-clip comparison (test_paired_with_the_priors_alone checks it)
    assert "per" not in student["minus_prior_alone"] and "minus_prior_alone" not in priors
    assert student["clips"] == truth["clips"] == 1
    for key in (
        "wer",
        "per",
        "identity_sim",
        "frechet",
        "time_to_first_frame_s",
        "real_time_factor",
        "chunk_latency_s",
    ):
        assert key in student, key
    assert set(student["chunk_latency_s"]) == {"p50", "p95", "p99"}
    assert [c["key"] for c in student["per_clip"]] == result["clips"]  # each clip's own figures
    assert {"phoneme_edits", "phonemes", "identity_sim", "real_time_factor"} <= set(student["per_clip"][0])
    assert json.loads((tmp_path / "report.json").read_text())["protocol"] == "short"
    assert "| s2 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "latency.png").is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        run_protocol(load_config(None, EAGER), "short", ["nowhere/ckpt"], tmp_path)
    with pytest.raises(ValueError, match="skip-clips"):  # a development set past the held-out clips
        run_protocol(load_config(None, EAGER), "short", ["checkpoints/tiny/student-s2-2step"], tmp_path,
                     corpus=tiny_corpus, eval_cache=instruments / "cache", instruments=instruments / "instruments",
                     skip_clips=10_000)  # fmt: skip


def test_paired_with_the_priors_alone():
    from streamchar.eval.protocols.heldout import paired_with

    def clips(edits, voice):
        return [{"key": f"c{i}", "phoneme_edits": e, "phonemes": 10, "voice_sim": v, "mouth_r": 0.9}
                for i, (e, v) in enumerate(zip(edits, voice, strict=True))]  # fmt: skip

    models = {"priors": {"per_clip": clips([1, 2, 3], [0.70, 0.71, 0.72])},
              "s2": {"per_clip": clips([2, 2, 5], [0.72, 0.74, 0.75])},
              "other_clips": {"per_clip": clips([1, 1], [0.7, 0.7])}}  # fmt: skip
    paired_with(models, "priors")
    d = models["s2"]["minus_prior_alone"]
    edits = np.array([1, 0, 2])  # against a naive reckoning: 3 more edits over 30 phonemes
    assert d["per"] == pytest.approx([3 / 30, np.sqrt(3) * edits.std(ddof=1) / 30], abs=1e-5)
    voice = np.array([0.02, 0.03, 0.03])
    assert d["voice_sim"] == pytest.approx([voice.mean(), voice.std(ddof=1) / np.sqrt(3)], abs=1e-5)
    assert d["mouth_r"] == pytest.approx([0.0, 0.0], abs=1e-9) and "sync_c" not in d
    assert "minus_prior_alone" not in models["priors"] and "minus_prior_alone" not in models["other_clips"]


def test_a_ckpt_spec_names_its_ablations_and_settings():
    from streamchar.eval.protocols.speak import parse_ckpt

    spec = parse_ckpt("s2=checkpoints/tiny/student-s2-2step:keepall:nosink")
    assert spec.name == "s2" and spec.switches == {
        "sink": False, "keep_correction": [1.0, 1.0], "audio_correction": "whole",
        "video_correction": "whole", "video_correction_feedback": True,
        "video_correction_detail": 0, "video_correction_skip": 0}  # fmt: skip
    with pytest.raises(ValueError, match=":keepall"):
        parse_ckpt("checkpoints/tiny/student-s2-2step:keepnone")


def test_long_protocol_reports_every_segment(instruments, tiny_corpus, tmp_path):
    import json

    from streamchar.config import load_config
    from streamchar.eval.protocols.heldout import run_protocol

    result = run_protocol(load_config(None, EAGER), "long", ["checkpoints/tiny/student-s2-2step"], tmp_path,
                          corpus=tiny_corpus, eval_cache=instruments / "cache", instruments=instruments / "instruments",
                          minutes=0.4, segment_seconds=10)  # fmt: skip
    model = result["models"]["student-s2-2step"]
    assert [s["start_s"] for s in model["segments"]] == [0, 10]
    assert {"identity_sim", "frechet", "wer"} <= set(model["drift"])
    assert all(s["frechet_sd"] > 0 for s in model["segments"]) and model["drift"]["frechet"]["change_sd"] > 0
    session = model["sessions"][0]
    assert session["stats"]["media_seconds"] >= 24 and session["stats"]["deadline_misses"] >= 0
    assert json.loads((tmp_path / "report.json").read_text())["protocol"] == "long"
    assert (tmp_path / "drift.png").is_file() and (tmp_path / "latency.png").is_file()
    # a contact sheet per session: the reference and the middle frame of each segment
    from PIL import Image

    sheet = Image.open(tmp_path / f"sheet_student-s2-2step_char{session['char_id']}.png")
    assert sheet.width == 3 * (sheet.height - 14)  # one row of three square frames under 14-pixel captions
    assert "_sheets" not in json.loads((tmp_path / "report.json").read_text())
    # a character named keeps the session it has in the full order (its script and seed)
    again = run_protocol(load_config(None, EAGER), "long", ["checkpoints/tiny/student-s2-2step"], tmp_path / "again",
                         corpus=tiny_corpus, eval_cache=instruments / "cache", instruments=instruments / "instruments",
                         minutes=0.4, segment_seconds=10, characters=[session["char_id"]])  # fmt: skip
    assert again["characters"] == [session["char_id"]]
    assert again["models"]["student-s2-2step"]["sessions"][0]["segments"][0]["transcript"] == (
        session["segments"][0]["transcript"])  # fmt: skip
    with pytest.raises(ValueError, match="not held-out identities"):
        run_protocol(load_config(None, EAGER), "long", ["checkpoints/tiny/student-s2-2step"], tmp_path / "bad",
                     corpus=tiny_corpus, eval_cache=instruments / "cache", instruments=instruments / "instruments",
                     minutes=0.4, segment_seconds=10, characters=[10_000])  # fmt: skip
    with pytest.raises(ValueError, match="fewer than two"):
        run_protocol(
            load_config(None, EAGER), "long", ["checkpoints/tiny/student-s2-2step"], tmp_path, minutes=1.0
        )


def test_frame_change_is_the_mean_absolute_difference_of_consecutive_frames():
    """The short and long protocols' flicker figure, against a naive loop; a still clip changes by 0."""
    from streamchar.eval.protocols.measure import frame_change

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
    naive = [
        abs(int(frames[t + 1][idx]) - int(frames[t][idx])) for t in range(3) for idx in np.ndindex(3, 2, 3)
    ]
    assert frame_change(frames) == pytest.approx(sum(naive) / len(naive))
    assert frame_change(np.repeat(frames[:1], 5, 0)) == 0.0
    assert np.isnan(frame_change(frames[:1]))


def test_sharpness_is_the_mean_absolute_laplacian_of_the_luma():
    """Against a naive loop over pixels; a flat frame has none, and a blurred frame less than the original."""
    from streamchar.eval.protocols.measure import sharpness

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    naive = [abs(4 * luma[t, y, x] - luma[t, y - 1, x] - luma[t, y + 1, x] - luma[t, y, x - 1] - luma[t, y, x + 1])
             for t in range(2) for y in range(1, 4) for x in range(1, 5)]  # fmt: skip
    assert sharpness(frames, every=1) == pytest.approx(sum(naive) / len(naive), rel=1e-5)
    assert sharpness(np.full((3, 5, 6, 3), 77, np.uint8)) == 0.0
    blurred = ((frames[:, :-1].astype(np.float32) + frames[:, 1:]) / 2).astype(np.uint8)
    assert sharpness(blurred, every=1) < sharpness(frames[:, :-1], every=1)
