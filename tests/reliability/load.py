"""A bounded loopback load generator: a few threads of httpx clients hitting the API.

Bounded twice, by a request budget and by a deadline, so a fault test can never turn into
an unbounded loop on the shared CPU cores. Every answer is kept with its send and receive
times, so a test can say which model answered when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Sample:
    sent: float  # time.monotonic() before the request
    received: float  # ... after the answer (or the error)
    status: int  # 0: no HTTP answer (connection error, timeout)
    model_id: str | None = None
    error: str | None = None


@dataclass
class Load:
    """Requests GET `path_for(i)` from `threads` threads until stop(), the deadline or the budget."""

    base_url: str
    path_for: Callable[[int], str]
    threads: int = 4
    max_requests: int = 20_000
    max_seconds: float = 60.0
    timeout_s: float = 10.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def _next(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return self._issued

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                i = self._next()
                if i is None:
                    return
                sent = time.monotonic()
                try:
                    r = client.get(self.path_for(i))
                    model = r.json().get("model_id") if r.status_code == 200 else None
                    sample = Sample(
                        sent,
                        time.monotonic(),
                        r.status_code,
                        model,
                        None if r.status_code == 200 else r.text[:200],
                    )
                except httpx.HTTPError as exc:
                    sample = Sample(sent, time.monotonic(), 0, None, repr(exc))
                with self._lock:
                    self.samples.append(sample)

    def start(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout_s + 5)
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def served(self) -> int:
        return sum(1 for s in self.samples if s.status == 200)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def served_between(self, start: float, end: float) -> int:
        return sum(
            1 for s in self.samples if s.status == 200 and start <= s.sent and s.received <= end
        )
