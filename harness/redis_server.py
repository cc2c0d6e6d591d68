"""Real redis-server processes for tests, on free ports, stopped by PID.

A missing `redis-server` binary is a test failure, not a skip: the rate-limit
tests are only meaningful against the real thing (scripts/test.sh installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness.gateway import free_port


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: apt-get install -y redis-server")
    return path


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def cluster_create(ports: list[int]) -> None:
    nodes = [f"127.0.0.1:{p}" for p in ports]
    subprocess.run(
        [_binary("redis-cli"), "--cluster", "create", *nodes,
         "--cluster-replicas", "0", "--cluster-yes"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    pending = list(ports)
    while pending and time.monotonic() < deadline:  # every node must agree the slots are served
        info = subprocess.run(
            [_binary("redis-cli"), "-p", str(pending[0]), "cluster", "info"],
            capture_output=True, text=True, timeout=5,
        ).stdout  # fmt: skip
        if "cluster_state:ok" in info:
            pending.pop(0)
        else:
            time.sleep(0.05)
    if pending:
        raise AssertionError(f"cluster not ok on ports {pending}")
