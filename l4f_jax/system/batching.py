"""A batching queue: items submitted by many threads share one call of a batch function.

  queue = BatchQueue(lambda items: [f(x) for x in items], max_batch=16, max_wait_s=0.005,
                     max_queue=64)
  future = queue.submit(item)      # from any thread; QueueFull when max_queue items wait
  result = future.result(timeout)  # a concurrent.futures.Future
  queue.close()

One worker thread takes the first waiting item, then collects more for up to `max_wait_s` (or
until `max_batch` items), and calls `fn` once on the list; `fn` returns one result per item, in
order. While `fn` runs, new items wait in the queue, so under load the next batch fills at once
(the wait only matters when the queue is nearly idle). An item whose future was cancelled before
its batch started (its caller timed out) is dropped. An exception of `fn` is set on every future
of that batch; the worker carries on. All device work of a server happens on this one thread, so
jitted programs are never called concurrently. `stats()` counts batches and items.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import Callable

_STOP = object()


class QueueFull(Exception):
  """`max_queue` items are already waiting."""


class BatchQueue:
  """See the module docstring."""

  def __init__(self, fn: Callable[[list], list], max_batch: int, max_wait_s: float,
               max_queue: int, name: str = "batch-queue"):
    if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
      raise ValueError(f"BatchQueue: max_batch={max_batch}, max_queue={max_queue} must be >= 1 "
                       f"and max_wait_s={max_wait_s} >= 0")
    self._fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
    self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
    self._lock = threading.Lock()
    self._stats = {"batches": 0, "items": 0, "largest_batch": 0, "failed_batches": 0}
    self._closed = False
    self._thread = threading.Thread(target=self._work, name=name, daemon=True)
    self._thread.start()

  def submit(self, item) -> concurrent.futures.Future:
    """Queues `item`; its future gets fn's result for it. Raises QueueFull (nothing queued)."""
    if self._closed:
      raise RuntimeError("BatchQueue.submit after close")
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
      self._queue.put_nowait((item, future))
    except queue.Full:
      raise QueueFull(f"{self._queue.maxsize} items are waiting") from None
    return future

  def waiting(self) -> int:
    return self._queue.qsize()

  def stats(self) -> dict:
    """{'batches', 'items', 'largest_batch', 'failed_batches'} so far."""
    with self._lock:
      return dict(self._stats)

  def close(self, timeout: float = 10.0) -> None:
    """Stops the worker after the batch it is running; items still waiting are cancelled."""
    if self._closed:
      return
    self._closed = True
    while True:
      try:
        _, future = self._queue.get_nowait()
        future.cancel()
      except queue.Empty:
        break
    self._queue.put(_STOP)
    self._thread.join(timeout)

  def _collect(self, first) -> list:
    batch = [first]
    deadline = time.monotonic() + self.max_wait_s
    while len(batch) < self.max_batch:
      try:
        remaining = deadline - time.monotonic()
        nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if nxt is _STOP:
        self._queue.put(_STOP)  # seen again by the next loop, after this batch
        break
      batch.append(nxt)
    return batch

  def _work(self) -> None:
    while True:
      first = self._queue.get()
      if first is _STOP:
        return
      live = [(item, f) for item, f in self._collect(first) if f.set_running_or_notify_cancel()]
      if not live:
        continue
      try:
        results = self._fn([item for item, _ in live])
        if len(results) != len(live):
          raise RuntimeError(f"batch function returned {len(results)} results for "
                             f"{len(live)} items")
      except BaseException as e:  # pylint: disable=broad-except  # each caller gets the error
        with self._lock:
          self._stats["failed_batches"] += 1
        for _, f in live:
          f.set_exception(e)
        continue
      with self._lock:
        self._stats["batches"] += 1
        self._stats["items"] += len(live)
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(live))
      for (_, f), r in zip(live, results):
        f.set_result(r)
