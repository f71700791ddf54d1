"""Fully sharded training helpers (PyTorch FSDP2, ``fully_shard``), with full-tensor checkpoints.

Parameters of a sharded module are DTensors: each process holds a slice. Checkpoints stay in the same
single-file safetensors format as unsharded runs: every process takes part in gathering each tensor
(``full_tensor`` is a collective, so all processes call these functions in the same order) and the main
process writes. Loading goes the other way: the full tensors are loaded into the unsharded module before
sharding, and optimiser state is re-sliced to match each parameter.
"""

from __future__ import annotations

import torch
from torch import nn


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered across processes when ``t`` is sharded (a collective)."""
    return t.full_tensor() if _is_dtensor(t) else t


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out like ``like`` (a DTensor shard or a plain tensor)."""
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)
    return value.to(like.device)


def shard_module(module: nn.Module, blocks: nn.ModuleList | None = None) -> nn.Module:
    """``fully_shard`` each transformer block, then the root (so its small remaining parameters shard too)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks if blocks is not None else []:
        fully_shard(block)
    fully_shard(module)
    return module


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a whole CPU tensor (a collective for sharded modules)."""
    return {name: full(t).detach().cpu().contiguous() for name, t in module.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with sharded state tensors gathered (a collective)."""
    state = optimizer.state_dict()
    gathered = {}
    for param_id, entries in state["state"].items():
        gathered[param_id] = {
            k: (full(v).cpu() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in entries.items()
        }
    return {"state": gathered, "param_groups": state["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimiser state into an optimiser over (possibly sharded) parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    resliced = {}
    for param_id, entries in state["state"].items():
        like = params[int(param_id)]
        resliced[int(param_id)] = {
            k: (shard_like(v, like) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in entries.items()
        }
    optimizer.load_state_dict({"state": resliced, "param_groups": state["param_groups"]})
