"""The session's helpers: a device timer and the one-thread worker its chunks are decoded on."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import torch


class DeviceTimer:
    """Device time of the work queued between its creation and :meth:`stop`: CUDA events on a GPU (read
    without a synchronisation once the work is known to be done), the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start, self.end = time.perf_counter(), None

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.end = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000
        return self.end - self.start


class Worker:
    """One daemon thread running submitted calls in order (a daemon, so a session nobody closed never
    holds up the interpreter's exit the way a ``ThreadPoolExecutor`` worker would), with ``threads`` torch
    intra-op threads (0: torch's default)."""

    def __init__(self, name: str, threads: int = 0) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._threads = threads
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)  # this thread's; the caller's stay as they are
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:
                future.set_exception(err)

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Cancel what has not started, let the running call finish (it sees the session's stop flag)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
