"""Run folders and their checkpoints: atomic, resumable safetensors checkpoints and the run folder's
config guard (the base layer: every trainer, instrument and loader reads and writes them through here).

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN`` holding ``model.safetensors`` (and
``ema.safetensors`` when there is an EMA), ``optimizer.safetensors`` (the optimiser's tensors,
with its structure as JSON metadata) and ``state.json`` (step, RNG states, anything else the
trainer keeps). It is written under a temporary name and renamed when complete, so a run killed
mid-save leaves the previous checkpoint intact; resuming takes the newest checkpoint that loads.
No pickle is involved, so checkpoints load with ``weights_only`` safety by construction.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A run folder or checkpoint that cannot be used; the message says what to do."""


# -- optimiser state <-> flat tensors --------------------------------------------------------------
def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton_state: dict[str, dict] = {}
    for param_id, entries in state["state"].items():
        skeleton_state[str(param_id)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"state.{param_id}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                skeleton_state[str(param_id)][name] = {"tensor": key}
            else:
                skeleton_state[str(param_id)][name] = {"value": value}
    return tensors, {"state": skeleton_state, "param_groups": state["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state: dict[int, dict] = {}
    for param_id, entries in skeleton["state"].items():
        state[int(param_id)] = {
            name: tensors[spec["tensor"]] if "tensor" in spec else spec["value"]
            for name, spec in entries.items()
        }
    return {"state": state, "param_groups": skeleton["param_groups"]}


# -- checkpoints --------------------------------------------------------------------------------------
def _tensors(obj: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module's state dict (or an already-gathered one) as contiguous CPU tensors."""
    state = obj if isinstance(obj, dict) else obj.state_dict()
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu()
        shared = v.untyped_storage().data_ptr() in seen  # tied weights: safetensors stores each once
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v.clone() if shared else v.contiguous()
    return out


def read_optimizer_state(path: str | Path, name: str = "optimizer") -> dict | None:
    """The optimiser ``state_dict()`` stored in checkpoint folder ``path`` as ``NAME.safetensors`` (None if
    it has none)."""
    from safetensors import safe_open

    file = Path(path) / f"{name}.safetensors"
    if not file.is_file():
        return None
    with safe_open(str(file), framework="pt") as f:
        skeleton = json.loads(f.metadata()["skeleton"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unflatten_optimizer_state(tensors, skeleton)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict | None = None,
    ema: torch.nn.Module | dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 3,
    extra_optimizers: dict[str, torch.optim.Optimizer | dict] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints.

    ``model`` / ``ema`` may be modules or already-gathered state dicts, and ``optimizer`` an optimiser or
    its (gathered) ``state_dict()``: sharded runs gather on every process and save on one.
    ``extra_optimizers`` are written as ``optimizer-NAME.safetensors`` (read back with
    ``read_optimizer_state(path, "optimizer-NAME")``).
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_tensors(ema), str(tmp / "ema.safetensors"))
    optimizers = {"optimizer": optimizer} if optimizer is not None else {}
    optimizers.update({f"optimizer-{k}": v for k, v in (extra_optimizers or {}).items()})
    for name, opt in optimizers.items():
        tensors, skeleton = flatten_optimizer_state(opt if isinstance(opt, dict) else opt.state_dict())
        save_file(tensors, str(tmp / f"{name}.safetensors"), metadata={"skeleton": json.dumps(skeleton)})
    rng = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        rng["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": rng, **(state or {})}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: torch.nn.Module | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load one checkpoint into the given objects; returns its ``state.json``."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path} is incomplete or corrupt ({err}).") from err
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this model ({len(missing)} missing and {len(unexpected)} unexpected "
            f"tensors, e.g. {(list(missing) + list(unexpected))[:2]}); it was trained with another architecture, "
            "so use a new run folder or the config it was made with."
        )
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    if optimizer is not None and (optimizer_state := read_optimizer_state(path)) is not None:
        optimizer.load_state_dict(optimizer_state)
    if restore_rng and "rng" in state:
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["rng"]["cuda"]])
    return state


def resume_latest(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: torch.nn.Module | None = None,
) -> dict[str, Any] | None:
    """Load the newest checkpoint that loads (falling back past damaged ones); ``None`` if none."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, model, optimizer, ema)
        except CheckpointError as err:
            if "does not fit this model" in str(err):
                raise
            logger.warning("skipping damaged checkpoint: %s", err)
            continue
        logger.info("resumed from %s (step %d)", path, state["step"])
        return {**state, "checkpoint": str(path)}
    return None


# -- run folder guard ---------------------------------------------------------------------------
def guard_run_config(run_dir: str | Path, section_name: str, section: dict) -> None:
    """Record ``section`` in the run folder; refuse to resume a run made with a different one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{section_name}.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != section:
            changed = sorted(k for k in set(previous) | set(section) if previous.get(k) != section.get(k))
            raise CheckpointError(
                f"{run_dir} was started with a different {section_name} ({', '.join(changed)} changed); resume with "
                "the same settings or use a new --out folder."
            )
    else:
        path.write_text(json.dumps(section, indent=1, sort_keys=True) + "\n")
