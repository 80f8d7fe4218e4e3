"""Reading ahead and building beside the caller: a reader thread fetches entries, a builder
thread turns each into an item, the caller takes built items.

The reader keeps fetching while the builder works (a fetch is I/O: it waits without the GIL),
never more than `buffered` entries ahead of what was taken nor `buffered_bytes` ahead of what
was built. The builder
works in fetch order and hands its items out in chunks: what one fetch returned, cut after
`handout_bytes` of input, so a small item is not held back by a large one fetched with it and
the items of a small batch come out together. `take` only waits for built items, never for a
fetch or a build.

A failure of either thread is raised by the next `take` once nothing built is left before it.
The reader stops on `close()` or once nobody has called `take` for `idle_stop_s` (the next
`take` starts it again), so a forgotten instance does not read on; the builder then idles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")  # a fetched entry
T = TypeVar("T")  # a built item

PAUSE = None  # what `fetch` returns to pause the reader until `resume()`


@dataclass(frozen=True)
class Limits:
    buffered: int = 256  # entries fetched and not yet taken: the reader waits beyond this
    buffered_bytes: int = 64 << 20  # input bytes fetched and not yet built (a fetch may pass it)
    fetch_count: int = 256  # entries one fetch may return at most
    handout_bytes: int = 1 << 20  # a chunk of built items is handed out past this much input
    idle_stop_s: float = 2.0  # the reader stops when nobody has taken for this long


class ReadAhead(Generic[E, T]):
    """`fetch(count)` returns up to `count` entries (waiting a little for them), or PAUSE;
    `build(entry)` returns an item, or None for an entry that yields nothing; `size(entry)` is
    its input bytes."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[int], list[E] | None],
        build: Callable[[E], T | None],
        size: Callable[[E], int],
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self._fetch, self._build, self._size = fetch, build, size
        self.limits = limits or Limits()
        self._lock = threading.Condition()
        self._ready: deque[T] = deque()
        self._held = self._held_bytes = 0  # fetched, not yet taken (nor built into nothing)
        self._failure: BaseException | None = None
        self._paused = self._closed = False
        self._last_take = time.monotonic()
        self._reader: threading.Thread | None = None
        self._builder = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-builder")

    def take(self, block_s: float, count: int) -> list[T]:
        """Up to `count` built items, waiting up to `block_s` for the first."""
        deadline = time.monotonic() + block_s
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: take() after close()")
            self._last_take = time.monotonic()
            if self._reader is None and self._failure is None:
                self._reader = threading.Thread(
                    target=self._read_on, name=f"{self.name}-reader", daemon=True
                )
                self._reader.start()
            while not self._ready and self._failure is None and not self._paused:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            if not self._ready and self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            items = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
            self._held -= len(items)
            self._lock.notify_all()  # room for the reader
            return items

    @property
    def paused(self) -> bool:
        return self._paused

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def close(self) -> None:
        """Stop reading and building; what was fetched and not taken is dropped."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            reader = self._reader
        if reader is not None:
            reader.join(timeout=10)
        self._builder.shutdown(wait=True, cancel_futures=True)

    def _stopping(self) -> bool:
        idle = time.monotonic() - self._last_take > self.limits.idle_stop_s
        return self._closed or idle

    def _room(self) -> int:
        """Entries the reader may fetch now (0: wait)."""
        limits = self.limits
        if self._paused or self._held_bytes >= limits.buffered_bytes:
            return 0
        return min(limits.fetch_count, limits.buffered - self._held)

    def _read_on(self) -> None:
        try:
            while True:
                with self._lock:
                    room = self._room()
                    while room <= 0 and not self._stopping():
                        self._lock.wait(0.2)
                        room = self._room()
                    if self._stopping():
                        self._reader = None  # under the lock: the next take() starts another
                        return
                entries = self._fetch(room)
                with self._lock:
                    if entries is PAUSE:
                        self._paused = True
                        self._lock.notify_all()  # a waiting take() returns, to resume us
                        continue
                    if not entries:
                        continue
                    self._held += len(entries)
                    self._held_bytes += sum(map(self._size, entries))
                self._builder.submit(self._build_all, entries)
        except BaseException as exc:
            with self._lock:
                self._reader = None
            self._fail(exc)

    def _build_all(self, entries: list[E]) -> None:
        chunk: list[T] = []
        chunk_entries = chunk_bytes = 0
        for at, entry in enumerate(entries):
            try:
                item = self._build(entry)
            except BaseException as exc:
                self._publish(chunk, chunk_entries, chunk_bytes)
                rest = entries[at:]
                self._publish([], len(rest), sum(map(self._size, rest)))
                self._fail(exc)
                return
            if item is not None:
                chunk.append(item)
            chunk_entries += 1
            chunk_bytes += self._size(entry)
            if chunk_bytes >= self.limits.handout_bytes:
                self._publish(chunk, chunk_entries, chunk_bytes)
                chunk, chunk_entries, chunk_bytes = [], 0, 0
        self._publish(chunk, chunk_entries, chunk_bytes)

    def _publish(self, items: list[T], entries: int, size: int) -> None:
        """Items built from `entries` entries of `size` input bytes become takeable."""
        with self._lock:
            self._ready.extend(items)
            self._held -= entries - len(items)  # the items themselves count until taken
            self._held_bytes -= size
            self._lock.notify_all()

    def _fail(self, exc: BaseException) -> None:
        log.error("%s stopped: %s: %s", self.name, type(exc).__name__, exc, exc_info=exc)
        with self._lock:
            self._failure = exc
            self._lock.notify_all()
