"""A real S3-speaking server on loopback for the artifact store's tests: moto's standalone server.

`python -m moto.server` in its own process, on a free port, for the whole session (as the
session's redis-server is). Clients reach it only through the standard AWS variables
(`S3Server.env`: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION),
exactly as the API and the workers reach AWS S3 or MinIO in production, so the tests also
prove that nothing but those variables is needed. Each test takes a bucket of its own.

Why moto is close enough: it implements the S3 REST API the store uses (PutObject,
GetObject, HeadObject, ListObjectsV2, multipart upload) over real HTTP, with S3's status
codes and errors, so s3fs/botocore run their real code paths. It keeps objects in memory
and does not emulate eventual consistency, which S3 no longer has: since December 2020 S3
gives strong read-after-write consistency for every PUT and LIST, the guarantee that the
store's "manifest last" protocol relies on. It does not test IAM policies, throttling or
cross-region latency.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.stack.redis_server import free_port
from tests.support.processes import ROOT, log_tail, stop_process

S3_START_TIMEOUT_S = 30.0


class S3Server:
    """`python -m moto.server` on 127.0.0.1 (a child process), logging to `log`."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables a client (this process or a child) needs to reach the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> S3Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while True:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1.0)
                return self
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto server did not start:\n{log_tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10.0)

    def make_bucket(self) -> str:
        """A new empty bucket; returns its name."""
        import boto3  # s3fs's dependency botocore ships with moto[server]

        name = f"unkd-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's moto S3 server; skipped (with the reason) where moto or s3fs is missing."""
    for module in ("moto.server", "s3fs", "boto3"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[dev]')")
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's process reaches the session's S3 server through the AWS variables;
    returns them (give them to child processes too)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.env
