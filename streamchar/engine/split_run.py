"""Launching a split run (:func:`run_split`): the engine in one process, its decoders
(:mod:`streamchar.engine.disagg`) served by a second, both spawned here and shut down together.

    frames = run_split(cfg, main, "Hello there.")    # NCCL with two GPUs, else gloo through the host
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from streamchar.engine.disagg import (
    SERVER_RANK,
    DecoderClient,
    DecoderServerError,
    serve_decoders,
    split_decoders,
)
from streamchar.engine.engine import Engine

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SplitRunError(RuntimeError):
    """A process of :func:`run_split` failed; ``remote_traceback`` holds its traceback."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


# -- the launcher -------------------------------------------------------------------------------------------
def choose_backend(backend: str | None = None) -> str:
    """``nccl`` or ``gloo``: as asked (checked), else NCCL when two CUDA devices are visible."""
    gpus = torch.cuda.device_count()
    if backend is None:
        backend = "nccl" if gpus >= 2 and dist.is_nccl_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"Unknown backend '{backend}'; use nccl (two GPUs) or gloo (any devices).")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("This PyTorch build has no NCCL; use backend='gloo' or install a CUDA build.")
    if backend == "nccl" and gpus < 2:
        raise ValueError(f"NCCL needs two CUDA devices (the denoiser's and the decoders') but {gpus} "
                         "is visible; use backend='gloo' or make a second GPU visible.")  # fmt: skip
    return backend


def _split_devices(cfg, backend: str, server_device: str | None) -> tuple[int | None, torch.device]:
    """(rank 0's CUDA index under NCCL or None, the decoders' device)."""
    if backend == "gloo":
        return None, torch.device(server_device or "cpu")
    engine_device = str(cfg.engine.device)
    if engine_device in ("auto", "cuda"):
        engine_device = "cuda:0"
    engine_device = torch.device(engine_device)
    if engine_device.type != "cuda":
        raise ValueError(f"NCCL carries CUDA tensors but engine.device is {engine_device}; set it to a GPU "
                         "or use backend='gloo'.")  # fmt: skip
    index = engine_device.index or 0
    if server_device is None:
        server_device = f"cuda:{next(i for i in range(torch.cuda.device_count()) if i != index)}"
    decoders = torch.device(server_device)
    if decoders.type != "cuda" or decoders.index in (None, index):
        raise ValueError(f"Under NCCL the decoders need a GPU other than the engine's {engine_device}, got "
                         f"{server_device}; pass another server_device.")  # fmt: skip
    return index, decoders


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_split(cfg, main: Callable[..., T], *args: Any, backend: str | None = None,
              server_device: str | None = None, denoiser_path: str | None = None,
              with_orchestrator: bool = True, timeout: float = 120.0, random_init: bool = False) -> T:  # fmt: skip
    """Run ``main(engine, *args)`` in a process whose engine decodes on a second process, and return its
    result.

    Two processes start (spawned: ``main``, ``args`` and the result must pickle; define ``main`` at module
    level). Rank 0 builds ``Engine.from_config(cfg, denoiser_path, with_orchestrator)`` on
    ``engine.device``, splits its decoders off (:func:`split_decoders`) and calls ``main``; rank 1 serves
    the decoders (:func:`serve_decoders`) on ``server_device`` (default: another GPU under NCCL, the CPU
    under gloo). Both shut down cleanly when ``main`` returns or raises.

    Args:
        backend: ``nccl`` or ``gloo`` (default: NCCL when two CUDA devices are visible, else gloo).
        timeout: seconds one decoder request may take before the server counts as gone.
        random_init: random weights on both ranks (``bench stream --random-init --split``).

    Raises:
        ValueError: the backend or devices cannot work (NCCL with fewer than two GPUs, say).
        SplitRunError: ``main`` raised, or a process failed (its traceback in ``remote_traceback``).
    """
    import torch.multiprocessing as mp

    backend = choose_backend(backend)
    engine_index, decoders = _split_devices(cfg, backend, server_device)
    with tempfile.TemporaryDirectory(prefix="streamchar-split-") as folder:
        spec = _SplitSpec(cfg, main, args, backend, engine_index, str(decoders), denoiser_path,
                          with_orchestrator, timeout, _free_port(), folder, random_init)  # fmt: skip
        try:
            mp.start_processes(_split_worker, args=(spec,), nprocs=2, join=True, start_method="spawn")
        except mp.ProcessExitedException as err:
            role = "the engine (rank 0)" if err.error_index == 0 else "the decoder server (rank 1)"
            raise SplitRunError(f"{role} died with exit code {err.exit_code} before it could report; see "
                                "its output above.") from err  # fmt: skip
        except mp.ProcessRaisedException as err:
            raise SplitRunError(
                f"A process of the split run failed: {str(err).splitlines()[-1]}", str(err)
            ) from err
        outcomes = [_read_outcome(Path(folder), rank) for rank in (0, 1)]
    (engine_ok, engine_value, engine_tb), (server_ok, server_value, server_tb) = outcomes
    if not engine_ok:
        note = f"; the decoder server failed too: {server_value}" if not server_ok else ""
        error = SplitRunError(f"{getattr(main, '__name__', 'main')} failed in the split run's engine "
                              f"process: {engine_value}{note}.", engine_tb)  # fmt: skip
        raise error from _RemoteTraceback(engine_tb)
    if not server_ok:
        raise SplitRunError(f"The split run's decoder server failed: {server_value}.", server_tb) from (
            _RemoteTraceback(server_tb)
        )
    return engine_value


@dataclass(frozen=True)
class _SplitSpec:
    """What both processes of :func:`run_split` are told."""

    cfg: Any
    main: Callable
    args: tuple
    backend: str
    engine_index: int | None  # rank 0's CUDA device under NCCL
    server_device: str
    denoiser_path: str | None
    with_orchestrator: bool
    timeout: float
    port: int
    folder: str  # where each rank leaves its outcome
    random_init: bool = False  # random weights on both ranks (Engine.random_init)


class _RemoteTraceback(Exception):
    """The traceback text of a failure in another process (shown as the cause)."""

    def __str__(self) -> str:
        return "\n" + (self.args[0] if self.args else "")


def _split_worker(rank: int, spec: _SplitSpec) -> None:
    """One process of :func:`run_split`; leaves ``(ok, result or error summary, traceback)`` in a file."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec.port))
    outcome: tuple[bool, Any, str] = (True, None, "")
    try:
        if spec.backend == "nccl":
            torch.cuda.set_device(spec.engine_index if rank == 0 else torch.device(spec.server_device))
        dist.init_process_group(
            spec.backend, rank=rank, world_size=2, timeout=timedelta(seconds=spec.timeout)
        )
        if rank == SERVER_RANK:
            serve_decoders(
                spec.cfg,
                client_rank=0,
                device=spec.server_device,
                timeout=spec.timeout,
                random_init=spec.random_init,
            )
        else:
            outcome = (True, _run_engine(spec), "")
    except BaseException as err:
        outcome = (False, f"{type(err).__name__}: {err}", traceback.format_exc())
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception as err:  # the outcome above still counts
            logger.warning("rank %d: destroying the process group: %s", rank, err)
    path = Path(spec.folder) / f"rank{rank}.pkl"
    try:
        path.write_bytes(pickle.dumps(outcome))
    except Exception as err:  # an unpicklable result
        path.write_bytes(pickle.dumps((False, f"its result could not be pickled ({err})", "")))


def _run_engine(spec: _SplitSpec) -> Any:
    """Rank 0: the engine, its decoders split off, then ``main``; the server is stopped however it ends."""
    try:
        if spec.random_init:
            engine = Engine.random_init(spec.cfg)
        else:
            engine = Engine.from_config(
                spec.cfg, spec.denoiser_path, with_orchestrator=spec.with_orchestrator
            )
    except BaseException:
        try:  # the server is waiting to report READY: take it and stop the server
            DecoderClient(SERVER_RANK, spec.timeout).shutdown()
        except DecoderServerError as err:
            logger.warning("stopping the decoder server after the engine failed: %s", err)
        raise
    client = split_decoders(engine, SERVER_RANK, spec.timeout)
    try:
        return spec.main(engine, *spec.args)
    finally:
        client.shutdown()


def _read_outcome(folder: Path, rank: int) -> tuple[bool, Any, str]:
    path = folder / f"rank{rank}.pkl"
    if not path.is_file():
        return False, f"rank {rank} left no outcome", ""
    return pickle.loads(path.read_bytes())
