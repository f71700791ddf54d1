"""Checkpoints: atomic, resumable, exact."""

import json

import pytest
import torch

from streamchar.checkpoints import (
    CheckpointError,
    guard_run_config,
    list_checkpoints,
    load_checkpoint,
    resume_latest,
    save_checkpoint,
)
from streamchar.training import cosine_lr


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, opt, steps):
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_resume_is_exact(tmp_path):
    model, opt = _model_and_opt()
    _train(model, opt, 5)
    save_checkpoint(tmp_path, 5, model, opt, state={"note": "x"})
    _train(model, opt, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    model2, opt2 = _model_and_opt(seed=1)
    state = resume_latest(tmp_path, model2, opt2)
    assert state["step"] == 5 and state["note"] == "x"
    _train(model2, opt2, 5)  # same RNG stream and optimiser moments as the first run
    for a, b in zip(reference, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_keep_and_damaged_fallback(tmp_path):
    model, opt = _model_and_opt()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, opt, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000003", "step-00000004"]
    (list_checkpoints(tmp_path)[-1] / "model.safetensors").write_bytes(b"garbage")
    state = resume_latest(tmp_path, *_model_and_opt())
    assert state["step"] == 3  # fell back past the damaged one


def test_wrong_architecture_is_refused(tmp_path):
    model, opt = _model_and_opt()
    save_checkpoint(tmp_path, 1, model, opt)
    other = torch.nn.Linear(4, 1)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        resume_latest(tmp_path, other)
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        load_checkpoint(tmp_path / "nothing", model)


def test_run_config_guard(tmp_path):
    guard_run_config(tmp_path, "codec", {"a": 1, "b": 2})
    guard_run_config(tmp_path, "codec", {"a": 1, "b": 2})
    with pytest.raises(CheckpointError, match="b changed"):
        guard_run_config(tmp_path, "codec", {"a": 1, "b": 3})
    assert json.loads((tmp_path / "codec.json").read_text()) == {"a": 1, "b": 2}


def test_cosine_schedule():
    assert cosine_lr(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)


def test_instrument_fit_runs_on_the_loop_and_resumes_exactly(tmp_path):
    """An evaluation instrument trains on the one loop: stopped after a checkpoint and run again, it ends with
    the weights of an uninterrupted run (and of one without a run folder)."""
    import shutil

    from torch import nn

    from streamchar.checkpoints import list_checkpoints
    from streamchar.eval.instruments.base import fit

    def make():
        torch.manual_seed(0)
        model, w = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)), torch.randn(8, 1)

        def loss_fn(generator):
            x = torch.randn(32, 8, generator=generator)
            return ((model(x) - x @ w) ** 2).mean(), {}

        return model, loss_fn

    whole = fit(*make(), 60, tmp_path / "whole", lr=1e-2, warmup=10, checkpoint_every=25, seed=3, desc="toy")
    first = list_checkpoints(tmp_path / "whole")[0]
    assert first.name.endswith("25")
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    shutil.copytree(first, tmp_path / "cut" / "checkpoints" / first.name)  # as if stopped after step 25
    shutil.copy(tmp_path / "whole" / "instrument.json", tmp_path / "cut")
    resumed = fit(*make(), 60, tmp_path / "cut", lr=1e-2, warmup=10, checkpoint_every=25, seed=3, desc="toy")
    bare = fit(*make(), 60, None, lr=1e-2, warmup=10, checkpoint_every=25, seed=3, desc="toy")
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value) and torch.equal(bare.state_dict()[name], value)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["finished"]
