"""Which modules setup.py may compile with mypyc, and which this process runs compiled."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.machinery import ExtensionFileLoader
from pathlib import Path
from typing import Any

try:  # class options that only mypyc reads (acyclic, free_list_len)
    from mypy_extensions import mypyc_attr as mypyc_attr
except ImportError:  # an interpreted install without mypy: the options change nothing

    def mypyc_attr(*_flags: str, **_options: Any) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda cls: cls


# The request path: what runs per request or per header. Not here: modules
# with async generators (mypyc cannot compile them: bodies.py), config and
# CLI code (runs once), and anything tests patch at module level.
OWN = (
    "pyproxyd.forwarding",
    "pyproxyd.framing",
    "pyproxyd.keys",
    "pyproxyd.frontend.connection",
    "pyproxyd.frontend.request",
    "pyproxyd.frontend.http2.stream",  # (its H2Request subclasses the compiled Request)
    "pyproxyd.frontend.http2.headers",
    "pyproxyd.frontend.http2.connection",
    "pyproxyd.hpack_plain",
    "pyproxyd.proxy.interface",
    "pyproxyd.proxy.record",
    "pyproxyd.proxy.prepare",
    "pyproxyd.proxy.forward",
    "pyproxyd.proxy.relay",
    "pyproxyd.proxy.handler",
    "pyproxyd.routing",
    "pyproxyd.tracing",
    "pyproxyd.upstream.balance",
    "pyproxyd.upstream.connection",
    "pyproxyd.upstream.http1",
    "pyproxyd.upstream.h2response",
    "pyproxyd.upstream.h2stream",
    "pyproxyd.upstream.h2exchange",
    "pyproxyd.upstream.h2conn",
    "pyproxyd.upstream.h2check",
    "pyproxyd.upstream.h2pool",  # (tests/upstream/test_h2_pool_rules.py: real connections)
    "pyproxyd.upstream.pool",
    "pyproxyd.observe.logging",
    "pyproxyd.observe.metrics",
    "pyproxyd.snapshot",
    "pyproxyd.ratelimit.algorithms",
    "pyproxyd.ratelimit.local",
    "pyproxyd.ratelimit.policy",
    "pyproxyd.ratelimit.report",
    "pyproxyd.auth.jwt",
    "pyproxyd.auth.route",
    "pyproxyd.auth.identity",
    "pyproxyd.resilience.breaker",
    "pyproxyd.resilience.retry",
    "pyproxyd.split",
    "pyproxyd.middleware.views",
    "pyproxyd.middleware.edit",
    "pyproxyd.middleware.chain",
    "pyproxyd.middleware.template",
    "pyproxyd.middleware.builtins",
    "pyproxyd.middleware.cors",
)

# python-hyper's HTTP/2 stack, vendored to be compiled too (pyproxyd/_vendor/README.md
# lists the patches mypyc needed: hpack.hpack builds and holds its HeaderTuples as
# Any, which mypyc would otherwise unbox as plain tuples; h2.events declares its
# placeholder fields `X | Any`). Not here: hpack.struct (HeaderTuple subclasses
# tuple), hpack.huffman_table (its 4096-entry literal exhausts mypyc), h2.config
# (checks in __setattr__; read as plain attributes), h2.settings (read once a
# connection or a SETTINGS frame; Settings is a MutableMapping), the exceptions
# modules (a compiled exception class loses its class-level defaults:
# ProtocolError's error_code), h2.errors (nothing hot), h2._typing (types only),
# the packages' __init__.
VENDORED = (
    "pyproxyd._vendor.h2.connection",
    "pyproxyd._vendor.h2.events",
    "pyproxyd._vendor.h2.frame_buffer",
    "pyproxyd._vendor.h2.stream",
    "pyproxyd._vendor.h2.utilities",
    "pyproxyd._vendor.h2.windows",
    "pyproxyd._vendor.hpack.hpack",
    "pyproxyd._vendor.hpack.huffman",
    "pyproxyd._vendor.hpack.huffman_constants",
    "pyproxyd._vendor.hpack.huffman_decode",
    "pyproxyd._vendor.hpack.table",
    "pyproxyd._vendor.hyperframe.flags",
    "pyproxyd._vendor.hyperframe.frame",
)

MODULES = OWN + VENDORED


PACKAGE = Path(__file__).resolve().parent  # this module is never compiled: a true path
# An installed wheel writes its .py files after its .so files, so a newer .py
# means an unbuilt edit only in a checkout (where scripts/compile.sh builds).
IN_CHECKOUT = (PACKAGE.parent / "setup.py").exists()


def source(name: str, package: Path = PACKAGE) -> Path:
    """The .py file of module `name` (pyproxyd.x.y) under `package`."""
    *folders, stem = name.split(".")[1:]
    return package.joinpath(*folders, f"{stem}.py")


def status(
    modules: tuple[str, ...] = MODULES, package: Path = PACKAGE, checkout: bool = IN_CHECKOUT
) -> tuple[list[str], list[str]]:
    """(compiled, stale): modules loaded from an extension, and, in a checkout,
    those of them whose .py is newer than the build (an edit the running code
    does not have). Paths come from the package folder: a mypyc module's own
    __file__ depends on how its shared library was first found."""
    compiled, stale = [], []
    for name in modules:
        spec = importlib.import_module(name).__spec__
        if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
            continue
        compiled.append(name)
        py = source(name, package)
        builds = list(py.parent.glob(f"{py.stem}.*.so")) + list(py.parent.glob(f"{py.stem}.*.pyd"))
        built = max((b.stat().st_mtime for b in builds), default=None)
        if checkout and built is not None and py.exists() and py.stat().st_mtime > built:
            stale.append(name)
    return compiled, stale


def describe(compiled: int, stale: int, total: int = len(MODULES)) -> str:
    """Which build runs, for `pyproxyd --version`: `compiled 35/35`, `interpreted`,
    or a partial or stale build named as such."""
    if not compiled:
        return "interpreted"
    text = f"compiled {compiled}/{total}"
    if stale:
        text += f", {stale} stale: scripts/compile.sh rebuilds"
    return text


def running() -> str:
    """describe() of this process."""
    compiled, stale = status()
    return describe(len(compiled), len(stale))
