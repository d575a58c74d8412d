"""One engine shared by the partitions a worker scores at once, with their batches merged.

A GPU worker runs several partitions in parallel threads (``--threads-per-worker``): each thread
fetches and cuts its stamps, then hands the uint8 stamps (196 KB per object; the inner engine
resizes, normalises and makes the views on its device) to :class:`SharedBatchEngine`.  Dispatcher
threads merge whatever is waiting (up to ``batch`` stamps, waiting at most ``max_wait_s`` for more)
into one engine call, so the accelerator sees big batches even when a partition's last batch is
small, and the CPU threads keep cutting while it infers.  Two dispatchers for GPU backends: one
merged batch's host-to-device copy overlaps the other's compute.  The queue is bounded by
construction: each calling thread waits for its own result, so at most one batch per thread is in
flight.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from .base import Engine
from .registry import gpu_backends


class SharedBatchEngine(Engine):
    def __init__(self, inner: Engine, batch: int = 256, max_wait_s: float = 0.003, dispatchers: int | None = None):
        super().__init__(inner.info)
        self.inner, self.batch, self.max_wait_s = inner, max(1, int(batch)), max_wait_s
        self.backend, self.precision = inner.backend, inner.precision
        self.calls = self.requests = 0  # engine calls made, batches asked for
        self._count = threading.Lock()
        self._q: queue.Queue = queue.Queue()
        self._closed = False
        n = dispatchers or (2 if inner.backend in gpu_backends() else 1)
        self._threads = [
            threading.Thread(target=self._loop, name=f"mergerscan-batcher-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    @property
    def info(self):
        return self.inner.info

    @info.setter
    def info(self, value):
        if hasattr(self, "inner"):
            self.inner.info = value

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.inner.logits(x)  # prepared batches (parity checks) are not merged

    @property
    def has_representation(self):
        return self.inner.has_representation

    def stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        return self.stamp_outputs(stamps)[0]

    def stamp_outputs(self, stamps: np.ndarray):
        """The inner engine's (logit, embedding, domain score), merged with other threads' batches."""
        if len(stamps) == 0:
            return self.inner.stamp_outputs(stamps)
        if self._closed:
            raise RuntimeError("engine closed")
        fut: Future = Future()
        self._q.put((np.ascontiguousarray(stamps), fut))
        return fut.result()

    def _loop(self):
        while True:
            item = self._q.get()
            if item is None:
                self._q.put(None)  # wake the other dispatchers too
                return
            items, n = [item], len(item[0])
            deadline = time.monotonic() + self.max_wait_s
            while n < self.batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                items.append(nxt)
                n += len(nxt[0])
            self._run(items)

    def _run(self, items):
        with self._count:
            self.calls += 1
            self.requests += len(items)
        try:
            outs = self.inner.stamp_outputs(np.concatenate([x for x, _ in items]) if len(items) > 1 else items[0][0])
        except BaseException as exc:
            if len(items) == 1:
                items[0][1].set_exception(exc)
                return
            for x, fut in items:
                self._settle(fut, lambda x=x: self.inner.stamp_outputs(x))
            return
        at = 0
        for x, fut in items:
            fut.set_result(tuple(None if o is None else o[at : at + len(x)] for o in outs))
            at += len(x)

    @staticmethod
    def _settle(fut: Future, fn):
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    def close(self):
        if not self._closed:
            self._closed = True
            self._q.put(None)
            for t in self._threads:
                t.join(timeout=10)
            self.inner.close()
