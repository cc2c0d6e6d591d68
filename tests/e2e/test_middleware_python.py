"""`python` middlewares through the whole gateway: real modules written to a
temp folder on server.python_path, in front of a real echo backend.

What a middleware changes, how it ends a request, what happens when it
raises, hangs or answers nonsense (a 500 or 504, a log line, and a client
connection that stays usable), the onion order, the headers it cannot
forge, and the metrics it leaves.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.backends import Backend
from harness.gateway import config, fetch, gateway, url
from tests.e2e.test_frontend import client, error_of, get, read_response
from tests.e2e.test_metrics import value
from tests.e2e.test_middleware import bearer, echoed, jwt_auth, route, upstream

# Records each hook it runs: as a header on both sides, and as a line in the
# file of option "log" (so a hook that ran on a request never sent shows too).
TAG = """
def make(options):
    return Tag(options["name"], options.get("log"))

class Tag:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def _note(self, what):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{self.name}.{what}\\n")

    def on_request(self, req):
        self._note("on_request")
        req.headers.add("X-Order", self.name)

    def on_response(self, req, resp):
        self._note("on_response")
        resp.headers.add("X-Order", self.name)
"""


def module(tmp_path: Path, code: str) -> str:
    """Write `code` as a module under tmp_path/mw (the python_path); its name.
    Names are unique: modules stay in sys.modules for the whole test run."""
    folder = tmp_path / "mw"
    folder.mkdir(exist_ok=True)
    name = f"mw_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(code))
    return name


def python(mw: str, factory: str, **options: str | int) -> str:
    """A [middlewares.*] table of type python; options of strings and ints."""
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    return f"""
[middlewares.{mw}]
type = "python"
factory = "{factory}"
options = {{ {inline} }}
"""


def with_path(body: str, server: str = "") -> str:
    return config(body, server=f'python_path = ["mw"]\n{server}')


def events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [line for line in lines if line["event"] == name]


# -- what a middleware changes ------------------------------------------------------

VIEW = """
import json

def make(options):
    return Viewer(options["status"])

class Viewer:
    def __init__(self, status):
        self.status = status

    def on_request(self, req):
        req.headers["X-From-Middleware"] = "hello " + req.headers.get("X-Client", "?")
        req.headers.remove("X-Secret")

    def on_response(self, req, resp):
        seen = {k: getattr(req, k) for k in ("method", "path", "query", "route", "upstream",
                                              "request_id", "client_ip", "host")}
        seen["sub"] = (req.claims or {}).get("sub")
        seen["upstream_status"] = resp.status
        resp.status = self.status
        resp.headers["X-Seen"] = json.dumps(seen)
        resp.headers["X-Backend"] = "masked"
        resp.headers.remove("X-Conn-Id")
"""


def viewer(tmp_path: Path, b: Backend) -> str:
    mod = module(tmp_path, VIEW)
    body = upstream(b) + python("view", f"{mod}:make", status=203) + jwt_auth(tmp_path)
    body += route("viewed", "/v", '["view"]', 'upstream = "app"\nauth = "optional_jwt"')
    return with_path(body)


async def test_a_middleware_changes_the_request_headers_the_backend_sees(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, viewer(tmp_path, b)) as gw:
        sent = {"X-Client": "web", "X-Secret": "s3cret", "X-Kept": "1"}
        status, _, body = await fetch(url(gw, "/v/echo"), headers=sent)
    assert status == 203
    seen = echoed(body)
    assert seen["x-from-middleware"] == ["hello web"]
    assert "x-secret" not in seen
    assert seen["x-kept"] == ["1"]


async def test_a_middleware_changes_the_response_status_and_headers(tmp_path: Path) -> None:
    async with Backend(name="b1") as b, gateway(tmp_path, viewer(tmp_path, b)) as gw:
        status, headers, _ = await fetch(url(gw, "/v/status/404?x=1"), headers=bearer())
    assert status == 203
    assert headers["X-Backend"] == "masked" and "X-Conn-Id" not in headers
    assert json.loads(headers["X-Seen"]) == {
        "method": "GET", "path": "/v/status/404", "query": "x=1", "route": "viewed",
        "upstream": "app", "request_id": headers["X-Request-ID"], "client_ip": "127.0.0.1",
        "host": urlsplit(url(gw, "/")).netloc, "sub": "alice", "upstream_status": 404,
    }  # fmt: skip


# A python middleware between two `headers` steps: it reads what the outer
# one added (whose constant lines wait apart from the list until something
# reads it) and adds its own, and the inner one removes a name both set.
READER = """
def make(options):
    return Reader()

class Reader:
    def on_request(self, req):
        req.headers.add("X-Seen", "first=" + req.headers.get("X-First", "none"))
"""

BETWEEN = """
[middlewares.first]
type = "headers"
request = { set = { "X-First" = "1", "X-Both" = "first" } }
[middlewares.second]
type = "headers"
request = { set = { "X-Second" = "2" }, remove = ["X-Both"] }
[middlewares.third]
type = "headers"
request = { set = { "X-Both" = "third" } }
"""


async def test_built_in_request_headers_keep_their_order_and_show_to_python_ones(
    tmp_path: Path,
) -> None:
    mod = module(tmp_path, READER)
    async with Backend() as b:
        body = upstream(b) + BETWEEN + python("reader", f"{mod}:make")
        body += route("mixed", "/m", '["first", "reader", "second"]', 'upstream = "app"')
        body += route("built", "/b", '["first", "second", "third"]', 'upstream = "app"')
        async with gateway(tmp_path, with_path(body)) as gw:
            sent = {"X-Client": "web", "X-Both": "client"}
            _, _, mixed = await fetch(url(gw, "/m/echo"), headers=sent)
            _, _, built = await fetch(url(gw, "/b/echo"), headers=sent)
    names = ["x-client", "x-both", "x-first", "x-seen", "x-second"]
    got = [(k.lower(), v) for k, v in json.loads(mixed)["headers"] if k.lower() in names]
    assert got == [("x-client", "web"), ("x-first", "1"), ("x-seen", "first=1"),
                   ("x-second", "2")]  # fmt: skip
    got = [(k.lower(), v) for k, v in json.loads(built)["headers"] if k.lower() in names]
    assert got == [("x-client", "web"), ("x-first", "1"), ("x-second", "2"),
                   ("x-both", "third")]  # fmt: skip


# -- order and short circuits ---------------------------------------------------------


async def test_three_middlewares_run_in_onion_order(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    tag = module(tmp_path, TAG)
    async with Backend() as b:
        body = upstream(b) + "".join(
            python(n, f"{tag}:make", name=n, log=str(log)) for n in ("s", "a", "b", "c")
        )
        body += route("ordered", "/o", '["a", "b", "c"]', 'upstream = "app"\nauth = "jwt"')
        body += jwt_auth(tmp_path)
        async with gateway(tmp_path, with_path(body, 'middlewares = ["s"]')) as gw:
            status, headers, data = await fetch(url(gw, "/o/echo"), headers=bearer())
            calls = log.read_text().split()
            refused, refused_headers, _ = await fetch(url(gw, "/o/echo"))
    assert status == 200
    assert echoed(data)["x-order"] == ["s", "a", "b", "c"]  # on_request, outermost first
    assert headers.getall("X-Order") == ["c", "b", "a", "s"]  # on_response, in reverse
    assert calls == [f"{n}.on_request" for n in "sabc"] + [f"{n}.on_response" for n in "cbas"]
    # The gateway's own 401 passes every on_response too.
    assert refused == 401
    assert refused_headers.getall("X-Order") == ["c", "b", "a", "s"]


STOP = """
def make(options):
    return Stop()

class Stop:
    def on_request(self, req):
        return {"status": 418, "headers": [("X-Stopped", req.route)], "body": "short and stout"}

    def on_response(self, req, resp):
        resp.headers.add("X-Order", "stop")  # the answering step's own: not run
"""


async def test_a_middleware_that_answers_ends_the_request_there(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    tag, stop = module(tmp_path, TAG), module(tmp_path, STOP)
    async with Backend() as b:
        body = upstream(b) + python("stop", f"{stop}:make")
        body += python("outer", f"{tag}:make", name="outer", log=str(log))
        body += python("inner", f"{tag}:make", name="inner", log=str(log))
        body += route("stopped", "/s", '["outer", "stop", "inner"]', 'upstream = "app"')
        async with gateway(tmp_path, with_path(body)) as gw:
            status, headers, data = await fetch(url(gw, "/s/echo"))
    assert (status, data) == (418, b"short and stout")
    assert headers["X-Stopped"] == "stopped" and headers["X-Request-ID"]
    assert headers.getall("X-Order") == ["outer"]
    assert log.read_text().split() == ["outer.on_request", "outer.on_response"]
    assert b.hits == 0


# -- faults ---------------------------------------------------------------------------

FAULTY = """
import asyncio

def make(options):
    return Faulty()

class NotAResponse:
    status = "200"

class Faulty:
    def on_request(self, req):
        if req.path.endswith("/raise"):
            raise RuntimeError("secret-detail-42")
        if req.path.endswith("/int"):
            return 42
        if req.path.endswith("/dict"):
            return {"status": 1000}
        if req.path.endswith("/object"):
            return NotAResponse()
        if req.path.endswith("/hang"):
            return self.hang()

    async def hang(self):
        await asyncio.sleep(30)

    def on_response(self, req, resp):
        if req.path.endswith("/late"):
            raise ValueError("late-detail")
"""


def faulty(tmp_path: Path, b: Backend) -> str:
    body = upstream(b) + python("faulty", f"{module(tmp_path, FAULTY)}:make")
    body += python("outer", f"{module(tmp_path, TAG)}:make", name="outer")
    extra = 'upstream = "app"\ntimeout = "1s"'
    return with_path(body + route("fragile", "/f", '["outer", "faulty"]', extra))


async def test_a_middleware_that_raises_gets_a_500_and_the_connection_stays_usable(
    tmp_path: Path, log_file: Path
) -> None:
    async with (
        Backend() as b,
        gateway(tmp_path, faulty(tmp_path, b)) as gw,
        client(gw) as (reader, writer),
    ):
        answers = []
        for path in ("/f/raise", "/f/raise", "/f/echo/late", "/f/echo"):
            writer.write(get(path))
            answers.append(await read_response(reader))
    raised, again, late, after = answers
    for resp in (raised, again, late):
        assert resp.status == 500
        err = error_of(resp)
        assert err["error"] == "internal_error"
        assert err["message"] == "middleware 'faulty' failed"
        assert b"detail" not in resp.body and b"Traceback" not in resp.body
        assert resp.headers.get("Connection", "").lower() != "close"
        assert resp.headers.getall("X-Order") == ["outer"]  # the outer step still ran
    assert after.status == 200  # the same keep-alive connection
    assert b.hits == 2  # /late reached the upstream; /raise did not
    # Logged once per distinct error and second: the second raise adds no line.
    faults = events(log_file, "middleware_error")
    assert [(e["middleware"], e["route"]) for e in faults] == [("faulty", "fragile")] * 2
    assert faults[0]["request_id"] == raised.headers["X-Request-ID"]
    assert "RuntimeError: secret-detail-42" in faults[0]["traceback"]
    assert "ValueError: late-detail" in faults[1]["traceback"]


async def test_a_middleware_that_returns_a_non_response_gets_a_500(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, faulty(tmp_path, b)) as gw:
        for path in ("/f/int", "/f/dict", "/f/object"):
            status, _, body = await fetch(url(gw, path))
            assert status == 500, path
            assert json.loads(body)["error"] == "internal_error"
            assert json.loads(body)["message"] == "middleware 'faulty' failed"
        assert b.hits == 0


async def test_a_hanging_middleware_gets_a_504_at_the_route_timeout(
    tmp_path: Path, log_file: Path
) -> None:
    async with (
        Backend() as b,
        gateway(tmp_path, faulty(tmp_path, b)) as gw,
        client(gw) as (reader, writer),
    ):
        started = time.monotonic()
        writer.write(get("/f/hang"))
        hung = await read_response(reader)
        elapsed = time.monotonic() - started
        writer.write(get("/f/echo"))
        after = await read_response(reader)
    assert hung.status == 504
    assert error_of(hung)["error"] == "upstream_timeout"
    assert 0.9 < elapsed < 2.5
    assert hung.headers.getall("X-Order") == ["outer"]
    assert after.status == 200
    assert [e["middleware"] for e in events(log_file, "middleware_timeout")] == ["faulty"]
    assert b.hits == 1


ASYNC = """
import asyncio

def make(options):
    return Slowly()

class Slowly:
    async def on_request(self, req):
        await asyncio.sleep(0.01)
        req.headers["X-Async"] = "in"

    async def on_response(self, req, resp):
        await asyncio.sleep(0.01)
        resp.headers["X-Async"] = "out " + str(resp.status)
        resp.status = 299
"""


async def test_async_on_request_and_on_response(tmp_path: Path) -> None:
    async with Backend() as b:
        body = upstream(b) + python("slowly", f"{module(tmp_path, ASYNC)}:make")
        body += '[middlewares.canned]\ntype = "respond"\nstatus = 202\nbody = "canned"\n'
        body += route("awaited", "/a", '["slowly"]', 'upstream = "app"\nauth = "jwt"')
        body += route("answered", "/r", '["slowly", "canned"]') + jwt_auth(tmp_path)
        async with gateway(tmp_path, with_path(body)) as gw:
            status, headers, data = await fetch(url(gw, "/a/echo"), headers=bearer())
            refused, refused_headers, _ = await fetch(url(gw, "/a/echo"))
            canned, canned_headers, text = await fetch(url(gw, "/r/x"))
    assert status == 299
    assert echoed(data)["x-async"] == ["in"]
    assert headers["X-Async"] == "out 200"
    assert (refused, refused_headers["X-Async"]) == (299, "out 401")  # the gateway's own error
    assert (canned, canned_headers["X-Async"], text) == (299, "out 202", b"canned")


# -- what a middleware cannot do --------------------------------------------------------

FORGE = """
def make(options):
    return Forge()

class Forge:
    def on_request(self, req):
        req.headers["X-User-ID"] = "mallory"
        req.headers["X-Forwarded-For"] = "6.6.6.6"
        req.headers["X-Request-ID"] = "forged-id"
        req.headers["X-Forwarded-Host"] = "evil.test"
        req.headers["X-Other"] = "kept"
"""


async def test_a_middleware_cannot_forge_identity_or_forwarded_headers(tmp_path: Path) -> None:
    async with Backend() as b:
        body = upstream(b) + python("forge", f"{module(tmp_path, FORGE)}:make")
        body += route("guarded", "/g", '["forge"]', 'upstream = "app"\nauth = "optional_jwt"')
        body += jwt_auth(tmp_path)
        async with gateway(tmp_path, with_path(body)) as gw:
            _, headers, data = await fetch(url(gw, "/g/echo"), headers=bearer())
            _, anonymous_headers, anonymous = await fetch(url(gw, "/g/echo"))
            front = f"127.0.0.1:{gw.ports[0]}"
    seen = echoed(data)
    assert seen["x-user-id"] == ["alice"]  # forward_claims, set after the middleware ran
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-request-id"] == [headers["X-Request-ID"]]
    assert seen["x-forwarded-host"] == [front]
    assert seen["x-other"] == ["kept"]
    # No token: the forged identity header is dropped, not passed on.
    seen = echoed(anonymous)
    assert "x-user-id" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-request-id"] == [anonymous_headers["X-Request-ID"]]


# -- metrics ---------------------------------------------------------------------------


async def test_metrics_count_middleware_time_and_errors(tmp_path: Path) -> None:
    async with Backend() as b:
        body = upstream(b) + python("failing", f"{module(tmp_path, FAULTY)}:make")
        body += python("tag", f"{module(tmp_path, TAG)}:make", name="tag")
        body += route("metered-mw", "/m", '["tag", "failing"]', 'upstream = "app"')
        async with gateway(tmp_path, with_path(body)) as gw:
            metrics = f"http://127.0.0.1:{gw.admin_port}/metrics"
            before = (await fetch(metrics))[2].decode()
            for path in ("/m/echo", "/m/echo", "/m/raise", "/m/int"):
                await fetch(url(gw, path))
            after = (await fetch(metrics))[2].decode()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pyproxyd_middleware_seconds_total", route="metered-mw") > 0
    errors = "pyproxyd_middleware_errors_total"
    assert delta(errors, route="metered-mw", middleware="failing") == 2
    assert delta(errors, route="metered-mw", middleware="tag") == 0


# -- loading ------------------------------------------------------------------------


async def test_a_module_is_loaded_from_the_folder_python_path_names_now(tmp_path: Path) -> None:
    """Two configs, two folders, one module name: the second gateway must not
    be handed the module the first one imported."""
    name = f"mw_{uuid.uuid4().hex[:12]}"
    answers = []
    async with Backend() as b:
        for folder in ("one", "two"):
            here = tmp_path / folder
            (here / "mw").mkdir(parents=True)
            answer = f"""
def make(options):
    return Answer()

class Answer:
    def on_request(self, req):
        return {{"status": 200, "headers": {{}}, "body": {folder!r}}}
"""
            (here / "mw" / f"{name}.py").write_text(answer)
            body = upstream(b) + python("which", f"{name}:make")
            body += route("which", "/w", '["which"]', 'upstream = "app"')
            async with gateway(here, with_path(body)) as gw:
                answers.append((await fetch(url(gw, "/w/x")))[2])
    assert answers == [b"one", b"two"]
