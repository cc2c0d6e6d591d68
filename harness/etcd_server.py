"""Real etcd processes for tests: free loopback ports, a data folder of their
own, stopped by PID. One member, or a cluster of three (static
--initial-cluster). EtcdAdmin writes through the v3 HTTP API with urllib, so
tests set the stage without the client under test; TcpProxy cuts and
restores the path to etcd without touching etcd itself.

A missing `etcd` binary is a test failure, not a skip (scripts/test.sh
installs Debian's etcd-server).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.gateway import free_port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: apt-get install -y etcd-server etcd-client")
    return path


class EtcdMember:
    """One etcd process. start() again after stop() restarts it on the same
    ports and data, as a member that crashed and came back."""

    def __init__(self, directory: Path, name: str = "m0") -> None:
        self.directory = directory
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.initial_cluster = f"{name}={self.peer_url}"
        self.cluster_token = f"t{self.peer_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [_binary("etcd"), "--name", self.name, "--data-dir", str(self.directory / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", self.cluster_token,
             # Fast elections: a killed leader is replaced in about a second.
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "warn"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"etcd {self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"etcd {self.name} not healthy on {self.url}: {self.log_tail()}")

    def start(self) -> EtcdMember:
        self.launch()
        self.wait_ready()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        try:
            return (self.directory / f"{self.name}.log").read_text()[-2000:]
        except OSError:
            return ""


class EtcdCluster:
    """Three members on loopback, started together (each waits for a quorum)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.members = [EtcdMember(directory / f"m{i}", f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
            m.cluster_token = self.members[0].cluster_token

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_ready()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()


@contextmanager
def etcd_member(directory: Path) -> Iterator[EtcdMember]:
    member = EtcdMember(directory).start()
    try:
        yield member
    finally:
        member.stop()


@contextmanager
def etcd_cluster(directory: Path, size: int = 3) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(directory, size)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


class EtcdAdmin:
    """Blocking writes through the v3 HTTP API, to whichever endpoint
    answers (a cluster may be missing a member or electing a leader)."""

    def __init__(self, endpoints: list[str], timeout: float = 10) -> None:
        self.endpoints = endpoints
        self.timeout = timeout

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        last = ""
        while time.monotonic() < deadline:
            for endpoint in self.endpoints:
                req = urllib.request.Request(
                    endpoint + path, json.dumps(body).encode(), method="POST",
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=2) as r:
                        data: dict[str, Any] = json.loads(r.read())
                        return data
                except urllib.error.HTTPError as exc:
                    last = f"{endpoint}: {exc.code} {exc.read()[:200]!r}"
                    if exc.code < 500:
                        raise AssertionError(last) from None
                except OSError as exc:
                    last = f"{endpoint}: {exc}"
            time.sleep(0.05)
        raise AssertionError(f"etcd {path} failed: {last}")

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def grant(self, ttl: int) -> int:
        """A lease of ttl seconds, kept alive by nobody: it expires."""
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Drop the history before revision (default: the current one)."""
        rev = revision or self.revision()
        self.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def etcdctl(self, *args: str) -> str:
        """etcdctl against these endpoints (auth setup and the like)."""
        return subprocess.run(
            [_binary("etcdctl"), "--endpoints", ",".join(self.endpoints), *args],
            check=True, capture_output=True, text=True, timeout=20,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        ).stdout  # fmt: skip


class TcpProxy:
    """A loopback TCP relay in the test's event loop. stop() closes the
    listener and every relayed connection (a network cut); start() listens
    on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
