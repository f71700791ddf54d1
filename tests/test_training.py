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
