"""Training batches prepared in a background thread while the model computes.

An epoch's batch order and every batch's augmentation are pure functions of
``(seed, phase, epoch, batch)``: the producer thread seeds one generator per batch, so the
batches are the same whether they come from this loader, from the main thread, or from a run
resumed at that epoch (a resume only needs the epoch number, not a generator's position).
The queue is bounded, so at most ``prefetch`` prepared batches wait in memory.  numpy and the
torch kernels used here release the GIL, so preparation really overlaps the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from ..cutouts.preprocess import PreprocessSpec, prepare_batch
from .data import augment


class LoaderError(RuntimeError):
    """Preparing a batch failed; the message is one line naming the batch and the cause."""


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence: different tuples give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, phase: int, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled batches of ``indices`` (each sorted, for memory-map locality);
    a last batch of one object is dropped (batch norm needs two)."""
    gen = torch.Generator().manual_seed(_seed(seed, phase, epoch, 0))
    perm = np.asarray(indices)[torch.randperm(len(indices), generator=gen).numpy()]
    batches = [np.sort(perm[i : i + batch_size]) for i in range(0, len(perm), batch_size)]
    return [b for b in batches if len(b) >= 2]


def make_batch(
    stamps,
    labels: np.ndarray,
    idx: np.ndarray,
    spec: PreprocessSpec,
    seed: int,
    channels_last: bool = False,
    augmentation: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented, preprocessed model input and float labels for the objects ``idx``."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.from_numpy(np.asarray(stamps[idx]))
    x = torch.from_numpy(prepare_batch(augment(raw, gen, augmentation).numpy(), spec))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(labels[idx].astype(np.float32))


_DONE = object()


class BatchLoader:
    """Iterate ``(x, y)`` over one epoch, prepared ``prefetch`` batches ahead in a thread.

    ``for x, y in BatchLoader(...)``; leaving the loop early (an exception in the training step)
    stops the thread.  An exception while preparing a batch is raised in the consumer as
    :class:`LoaderError` with one line naming the batch."""

    def __init__(
        self,
        stamps,
        labels: np.ndarray,
        batches: list[np.ndarray],
        spec: PreprocessSpec,
        seed: int,
        phase: int,
        epoch: int,
        prefetch: int = 2,
        channels_last: bool = False,
        threaded: bool = True,
        augmentation: str = "standard",
    ):
        self.stamps, self.labels, self.batches, self.spec = stamps, np.asarray(labels), batches, spec
        self.seeds = [_seed(seed, phase, epoch, b + 1) for b in range(len(batches))]
        self.channels_last, self.threaded, self.augmentation = channels_last, threaded, augmentation
        self.where = f"phase {phase} epoch {epoch + 1}"
        self._q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self.batches)

    def _make(self, b: int):
        return make_batch(
            self.stamps, self.labels, self.batches[b], self.spec, self.seeds[b], self.channels_last, self.augmentation
        )

    def _fail(self, b: int, exc: BaseException) -> LoaderError:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return LoaderError(f"preparing batch {b + 1}/{len(self)} ({self.where}): {type(exc).__name__}: {msg}")

    def _produce(self) -> None:
        # one intra-op thread here, so preparation does not oversubscribe the cores the step uses
        # (torch keeps the count per OpenMP thread but also as the default for new threads: restored)
        default = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._produce_all()
        finally:
            torch.set_num_threads(default)

    def _produce_all(self) -> None:
        for b in range(len(self.batches)):
            if self._stop.is_set():
                return
            try:
                item = self._make(b)
            except BaseException as exc:  # forwarded to the consumer as one line
                item = self._fail(b, exc)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, LoaderError):
                return
        self._q.put(_DONE)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.threaded:  # the same batches, prepared in the caller's thread
            for b in range(len(self.batches)):
                try:
                    item = self._make(b)
                except Exception as exc:
                    raise self._fail(b, exc) from None
                yield item
            return
        worker = threading.Thread(target=self._produce, name="mergerscan-batch-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = self._q.get()
                if item is _DONE:
                    return
                if isinstance(item, LoaderError):
                    raise item
                yield item
        finally:
            self._stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
