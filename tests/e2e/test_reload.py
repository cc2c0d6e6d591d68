"""Live reload, graceful stop, systemd notify and workers: the real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.backends import Backend, wait_for
from harness.gateway import GatewayProcess, alive, children, free_port, make_cert, served_cert
from harness.tokens import AUDIENCE, ISSUER, claims, jwks, public_jwk, rsa_key, sign

BASE = """
[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
graceful_timeout = "10s"
[admin]
listen = "127.0.0.1:{admin}"
[logging]
access_log = false
[upstreams.app]
targets = [{{ url = "{backend}" }}]

[[routes]]
id = "a"
path = "/a/**"
upstream = "app"
strip_prefix = 1
"""

ROUTE_B = """
[[routes]]
id = "b"
path = "/b/**"
upstream = "app"
strip_prefix = 1
"""


class Setup:
    def __init__(self, tmp_path: Path, backend: Backend, workers: int = 1):
        self.port, self.admin = free_port(), free_port()
        self.path = tmp_path / "gateway.toml"
        self.base = BASE.format(
            port=self.port, admin=self.admin, backend=backend.url, workers=workers
        )
        self.path.write_text(self.base)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def save_atomically(self, text: str) -> None:
        """What editors do: write a temp file, rename it over the config."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


async def status_of(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as r:
        await r.read()
        return r.status


async def eventually_status(s: aiohttp.ClientSession, url: str, want: int, within: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within:
        if await status_of(s, url) == want:
            return loop.time() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer {want} within {within}s")


async def test_file_edit_makes_a_new_route_live_in_the_same_process(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            assert await status_of(s, st.url("/b/echo")) == 404
            pid = gw.proc.pid  # type: ignore[union-attr]
            st.save_atomically(st.base + ROUTE_B)
            took = await eventually_status(s, st.url("/b/echo"), 200, within=2.0)
            assert took < 2.0
            assert gw.proc.pid == pid and gw.proc.returncode is None  # type: ignore[union-attr]
            # and a second atomic save is seen too (the watch survives the rename)
            st.save_atomically(st.base)
            await eventually_status(s, st.url("/b/echo"), 404, within=2.0)
            assert await gw.stop() == 0


async def test_invalid_edit_keeps_the_old_config_and_reports_it(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            st.save_atomically(st.base + ROUTE_B.replace("strip_prefix", "strip_prefx"))
            admin = f"http://127.0.0.1:{st.admin}/admin/config"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            info: dict[str, object] = {}
            while loop.time() < deadline:
                async with s.get(admin) as r:
                    info = await r.json()
                if info["last_reload_error"]:
                    break
                await asyncio.sleep(0.05)
            errors = info["last_reload_error"]
            assert isinstance(errors, list)
            assert any("routes[1].strip_prefx: unknown key" in e for e in errors)
            assert await status_of(s, st.url("/a/echo")) == 200  # still serving
            # a good file clears the error and applies
            st.save_atomically(st.base + ROUTE_B)
            await eventually_status(s, st.url("/b/echo"), 200, within=2.0)
            async with s.get(admin) as r:
                assert (await r.json())["last_reload_error"] is None
            assert await gw.stop() == 0
        log = gw.output.decode()
        assert '"event":"config_reload_failed"' in log.replace(" ", "")


JWT = f"""
[auth.jwt]
algorithms = ["RS256"]
jwks_file = "keys/jwks.json"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
"""


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_changed_jwks_file_alone_is_seen_by_the_watcher(
    tmp_path: Path, workers: int
) -> None:
    """jwks_file lives in another folder than the config; rotating it reloads."""
    keys = tmp_path / "keys" / "jwks.json"
    keys.parent.mkdir()
    keys.write_text(json.dumps(jwks(public_jwk(rsa_key(), "rsa-1"))))
    rotated = sign(rsa_key("next"), "RS256", claims(time.time()), "rsa-2")
    bearer = {"Authorization": f"Bearer {rotated}"}
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=workers)
        text = st.base.replace("[upstreams.app]", JWT + "[upstreams.app]")
        st.path.write_text(text.replace('upstream = "app"', 'upstream = "app"\nauth = "jwt"', 1))
        async with GatewayProcess(st.path) as gw:
            await gw.wait_ready(st.admin, timeout=20)
            async with aiohttp.ClientSession(headers=bearer) as s:
                assert await status_of(s, st.url("/a/echo")) == 401  # rsa-2 not known yet
            tmp = keys.with_suffix(".tmp")
            doc = jwks(public_jwk(rsa_key(), "rsa-1"), public_jwk(rsa_key("next"), "rsa-2"))
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, keys)  # the config file is not touched
            for _ in range(10):  # fresh connections: with two workers, both have it
                async with aiohttp.ClientSession(headers=bearer) as fresh:
                    await eventually_status(fresh, st.url("/a/echo"), 200, within=3.0)
            assert await gw.stop() == 0


async def test_a_renewed_certificate_is_picked_up_without_touching_the_config(
    tmp_path: Path,
) -> None:
    """certbot's layout: live/*.pem are symlinks, renewal swaps them for new targets."""
    live, archive = tmp_path / "live", tmp_path / "archive"
    live.mkdir()
    archive.mkdir()
    first = make_cert(archive / "cert1.pem", archive / "key1.pem", "first")
    for name, target in (("fullchain.pem", "cert1.pem"), ("privkey.pem", "key1.pem")):
        (live / name).symlink_to(Path("..") / "archive" / target)
    async with Backend() as b:
        st = Setup(tmp_path, b)
        tls = 'tls = { cert = "live/fullchain.pem", key = "live/privkey.pem" }\n'
        st.path.write_text(st.base.replace("[admin]", tls + "[admin]"))
        async with GatewayProcess(st.path) as gw:
            await gw.wait_ready(st.admin)
            assert await served_cert(st.port) == first
            renewed = make_cert(archive / "cert2.pem", archive / "key2.pem", "renewed")
            for name, target in (("privkey.pem", "key2.pem"), ("fullchain.pem", "cert2.pem")):
                tmp = live / f"{name}.new"
                tmp.symlink_to(Path("..") / "archive" / target)
                os.replace(tmp, live / name)

            async def renewed_served() -> bool:
                return await served_cert(st.port) == renewed

            await wait_for(renewed_served, timeout=3)
            assert await gw.stop() == 0


async def test_sighup_reloads(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path, "--no-watch") as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            st.path.write_text(st.base + ROUTE_B)
            await asyncio.sleep(0.6)
            assert await status_of(s, st.url("/b/echo")) == 404  # not watching
            gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            await eventually_status(s, st.url("/b/echo"), 200, within=2.0)
            assert await gw.stop() == 0


async def test_no_request_fails_while_the_file_is_rewritten_20_times(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            results: list[int] = []
            done = asyncio.Event()

            async def client() -> None:
                while not done.is_set():
                    results.append(await status_of(s, st.url("/a/echo")))

            clients = [asyncio.create_task(client()) for _ in range(4)]
            for i in range(20):
                extra = ROUTE_B.replace('id = "b"', f'id = "b{i}"') if i % 2 else ""
                st.save_atomically(st.base + extra + f"\n# edit {i}\n")
                await asyncio.sleep(0.15)
            await asyncio.sleep(1.0)  # let the last reloads land under load
            done.set()
            await asyncio.gather(*clients)
            assert len(results) > 100
            assert set(results) == {200}
            assert await gw.stop() == 0
        assert gw.output.decode().count("config_reloaded") >= 2


async def test_warm_upstream_connection_survives_an_unrelated_edit(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            assert await status_of(s, st.url("/a/echo")) == 200
            assert b.connections_opened == 1
            st.save_atomically(st.base + ROUTE_B)
            await eventually_status(s, st.url("/b/echo"), 200, within=2.0)
            for _ in range(5):
                assert await status_of(s, st.url("/a/echo")) == 200
            assert b.connections_opened == 1  # the pool and its connection were carried over
            assert await gw.stop() == 0


async def test_sigterm_lets_a_slow_request_finish_then_exits_0(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin)
            slow = asyncio.create_task(status_of(s, st.url("/a/sleep?s=1")))
            await wait_for(lambda: b.hits == 0 and b.open_connections == 1, timeout=3)
            await asyncio.sleep(0.1)
            gw.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert await slow == 200
            assert await gw.stop() == 0


async def test_ready_is_sent_on_notify_socket(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    async with Backend() as b:
        st = Setup(tmp_path, b)
        async with GatewayProcess(st.path, env={"NOTIFY_SOCKET": sock_path}) as gw:
            data = await asyncio.wait_for(loop.sock_recv(listener, 4096), 15)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            assert fields["READY"] == "1"
            assert int(fields["MAINPID"]) == gw.proc.pid  # type: ignore[union-attr]
            gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            assert await gw.stop() == 0
            messages = []
            while True:
                try:
                    messages.append(listener.recv(4096).decode())
                except BlockingIOError:
                    break
            assert any("STOPPING=1" in m for m in messages)
    listener.close()


async def test_two_workers_serve_survive_a_kill_and_reload_together(tmp_path: Path) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=2)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin, timeout=20)
            async with s.get(f"http://127.0.0.1:{st.admin}/readyz") as r:
                assert (await r.json())["ready_workers"] == 2
            pids = children(gw.proc.pid)  # type: ignore[union-attr]
            assert len(pids) == 2
            # fresh connections spread over both workers via SO_REUSEPORT; all succeed
            for _ in range(20):
                async with aiohttp.ClientSession() as fresh:
                    assert await status_of(fresh, st.url("/a/echo")) == 200
            # /metrics on the supervisor adds up both workers (multiprocess mode);
            # workers flush their tallies once a second
            line = 'pyproxyd_requests_total{route="a",status="200",upstream="app"} 20.0'
            texts: list[str] = []

            async def scrape() -> bool:
                async with s.get(f"http://127.0.0.1:{st.admin}/metrics") as r:
                    texts.append(await r.text())
                return line in texts[-1]

            for _ in range(30):
                if await scrape():
                    break
                await asyncio.sleep(0.1)
            assert line in texts[-1]
            os.kill(pids[0], signal.SIGKILL)
            await wait_for(lambda: len(children(gw.proc.pid)) == 2 and  # type: ignore[union-attr]
                           pids[0] not in children(gw.proc.pid), timeout=10)  # type: ignore[union-attr]  # fmt: skip
            await gw.wait_ready(st.admin, timeout=20)
            st.save_atomically(st.base + ROUTE_B)
            for _ in range(20):  # every worker has the new route
                async with aiohttp.ClientSession() as fresh:
                    await eventually_status(fresh, st.url("/b/echo"), 200, within=3.0)
            assert await gw.stop() == 0


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphan keeps serving the port unsupervised (PR_SET_PDEATHSIG)."""
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=2)
        async with GatewayProcess(st.path) as gw:
            await gw.wait_ready(st.admin, timeout=20)
            pids = children(gw.proc.pid)  # type: ignore[union-attr]
            assert len(pids) == 2
            gw.proc.kill()  # type: ignore[union-attr]
            try:
                await wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)
            finally:  # orphans of a failed run would outlive the test
                for pid in filter(alive, pids):
                    os.kill(pid, signal.SIGKILL)
            with socket.socket() as sock:  # nobody listens any more
                assert sock.connect_ex(("127.0.0.1", st.port)) != 0


async def test_a_supervisor_answers_admin_config_and_routes_and_counts_reloads_once(
    tmp_path: Path,
) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=2)
        admin = f"http://127.0.0.1:{st.admin}"
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin, timeout=20)

            async def get(path: str) -> tuple[int, Any]:
                async with s.get(admin + path) as r:
                    body = await r.json() if r.content_type == "application/json" else None
                    return r.status, body

            status, cfg = await get("/admin/config")
            assert status == 200 and cfg["file"] == str(st.path.resolve())
            assert cfg["last_reload_error"] is None
            status, routes = await get("/admin/routes")
            assert [r["id"] for r in routes["routes"]] == ["a"]
            for _ in range(10):  # fresh connections: both workers open upstream connections
                async with aiohttp.ClientSession() as fresh:
                    assert await status_of(fresh, st.url("/a/echo")) == 200
            status, ups = await get("/admin/upstreams")
            assert status == 200
            assert sorted(w["pid"] for w in ups["workers"]) == sorted(children(gw.proc.pid))  # type: ignore[union-attr]
            per_worker = [w["upstreams"]["app"]["targets"][0] for w in ups["workers"]]
            merged = ups["upstreams"]["app"]["targets"][0]
            assert merged["opened_total"] == sum(t["opened_total"] for t in per_worker) >= 1
            assert merged["idle"] == sum(t["idle"] for t in per_worker)
            stuck = ups["workers"][0]["pid"]
            os.kill(stuck, signal.SIGSTOP)  # a worker that does not answer is named, not waited on
            try:
                status, ups = await get("/admin/upstreams")
            finally:
                os.kill(stuck, signal.SIGCONT)
            assert status == 200
            assert "error" in ups["workers"][0] and "upstreams" not in ups["workers"][0]
            assert ups["upstreams"]["app"] == ups["workers"][1]["upstreams"]["app"]

            st.save_atomically(st.base + "[[routes]]\nid = 1\n")  # invalid

            async def failed() -> bool:
                return (await get("/admin/config"))[1]["last_reload_error"] is not None

            await wait_for(failed, timeout=3)
            st.save_atomically(st.base + ROUTE_B)
            await eventually_status(s, st.url("/b/echo"), 200, within=3.0)
            _, cfg = await get("/admin/config")
            assert cfg["last_reload_error"] is None
            assert cfg["reloads"] == {"success": 1, "error": 1}
            _, routes = await get("/admin/routes")
            assert [r["id"] for r in routes["routes"]] == ["a", "b"]
            async with s.get(admin + "/metrics") as r:
                text = await r.text()
            # once each: the two workers that reloaded too do not add theirs
            assert 'pyproxyd_config_reloads_total{result="success"} 1.0' in text
            assert 'pyproxyd_config_reloads_total{result="error"} 1.0' in text
            assert await gw.stop() == 0


class Notify:
    """A NOTIFY_SOCKET as systemd has it: a datagram socket the test reads."""

    def __init__(self, tmp_path: Path):
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    async def next(self, timeout: float = 20.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def pending(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def events(output: bytes) -> list[dict[str, Any]]:
    """The JSON log lines of a process (and its workers), in order."""
    out = []
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


RELOAD_EVENTS = ("config_reloaded", "config_unchanged", "config_reload_failed")


@pytest.mark.parametrize("workers", [1, 2])
async def test_every_sighup_is_answered_on_notify_socket_and_in_the_log(
    tmp_path: Path, workers: int
) -> None:
    notify = Notify(tmp_path)
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=workers)
        async with GatewayProcess(st.path, "--no-watch", env={"NOTIFY_SOCKET": notify.path}) as gw:
            assert (await notify.next())["READY"] == "1"
            await gw.wait_ready(st.admin, timeout=20)
            for text in (
                None,  # byte-identical: config_unchanged
                st.base + "[[routes]]\nid = 1\n",  # invalid: config_reload_failed
                st.base + ROUTE_B,  # config_reloaded
            ):
                if text is not None:
                    st.path.write_text(text)
                gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                assert "RELOADING" in await notify.next()
                ready = await notify.next()
                assert ready["READY"] == "1", ready
            assert await gw.stop() == 0
        assert [m for m in notify.pending() if "STOPPING" in m]
    notify.sock.close()
    answers = [e["event"] for e in events(gw.output) if e["event"] in RELOAD_EVENTS]
    assert answers == ["config_unchanged", "config_reload_failed", "config_reloaded"]


@pytest.mark.parametrize(("workers", "sig"), [(1, signal.SIGTERM), (1, signal.SIGINT),
                                              (2, signal.SIGTERM)])  # fmt: skip
async def test_a_stop_logs_shutdown_then_stopped_with_what_it_drained(
    tmp_path: Path, workers: int, sig: signal.Signals
) -> None:
    async with Backend() as b:
        st = Setup(tmp_path, b, workers=workers)
        async with GatewayProcess(st.path) as gw, aiohttp.ClientSession() as s:
            await gw.wait_ready(st.admin, timeout=20)
            slow = asyncio.create_task(status_of(s, st.url("/a/sleep?s=1")))
            await wait_for(lambda: b.open_connections == 1, timeout=5)
            await asyncio.sleep(0.1)  # the request has reached the backend
            gw.proc.send_signal(sig)  # type: ignore[union-attr]
            assert await slow == 200
            assert await gw.stop() == 0
    logged = events(gw.output)
    names = [e["event"] for e in logged]
    assert names.count("shutdown") == 1 and names.count("stopped") == 1
    assert names.index("shutdown") < names.index("stopped")
    shutdown = logged[names.index("shutdown")]
    assert shutdown["signal"] == sig.name
    drained = [e for e in logged if e["event"] == ("stopped" if workers == 1 else "worker_stopped")]
    assert len(drained) == workers
    assert sum(e["in_flight"] for e in drained) == 1
    assert sum(e["finished"] for e in drained) == 1
    assert sum(e["cut"] for e in drained) == 0
