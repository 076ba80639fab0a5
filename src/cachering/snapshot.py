"""Values computed on the event loop, handed to other threads.

A Prometheus scrape runs in prometheus-client's thread, but a cluster's state (the
router's suspects, the loop's clock, the control plane) belongs to its event loop and
must be read there. :class:`LoopSnapshot` is the hand-off: its :meth:`~LoopSnapshot.run`
task (started in the cluster's task group) waits for requests on a worker thread of its
own and computes each answer on the loop; :meth:`~LoopSnapshot.get` posts a request and
waits for the answer, at most ``timeout`` seconds (a blocked loop cannot answer). It
works the same on asyncio and trio, through anyio's public API only.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

__all__ = ["LoopSnapshot"]

T = TypeVar("T")


class LoopSnapshot(Generic[T]):
    """Answers ``take()`` on the loop for callers on any thread (a service: start ``run``)."""

    def __init__(self, take: Callable[[], T]) -> None:
        self._take = take
        self._requests: queue.SimpleQueue[concurrent.futures.Future[T] | None] = queue.SimpleQueue()
        self._loop_thread: int | None = None
        self._running = False

    def get(self, timeout: float) -> T:
        """``take()`` run on the loop; on the loop's own thread it simply runs.

        Raises :class:`RuntimeError` when :meth:`run` is not running and
        :class:`TimeoutError` when the loop does not answer within ``timeout`` seconds.
        """
        if not self._running:
            raise RuntimeError("not running")
        if self._loop_thread == threading.get_ident():
            return self._take()
        request: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._requests.put(request)
        try:
            return request.result(timeout)
        except concurrent.futures.TimeoutError:
            request.cancel()
            raise TimeoutError(f"the event loop did not answer within {timeout}s") from None
        except concurrent.futures.CancelledError:
            raise RuntimeError("stopped during the request") from None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer requests until cancelled.

        The waiting is done by a worker thread under a limiter of one, so the
        application's thread pool loses no capacity.
        """
        limiter = anyio.CapacityLimiter(1)
        self._loop_thread = threading.get_ident()
        self._running = True
        task_status.started()
        try:
            while True:
                request = await anyio.to_thread.run_sync(
                    self._requests.get, abandon_on_cancel=True, limiter=limiter
                )
                if request is None:
                    return
                if request.set_running_or_notify_cancel():  # False: the caller gave up
                    try:
                        request.set_result(self._take())
                    except Exception as exc:  # handed to the caller, who raises it
                        request.set_exception(exc)
        finally:
            self._running = False
            self._requests.put(None)  # lets the abandoned worker thread return
