"""The command line: thin wrappers that build objects and call them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile

import click

from . import __version__
from .config import Config
from .config_load import ConfigError, Loaded, load, log_file


def _load_or_exit(path: str) -> Loaded:
    try:
        return load(path)
    except ConfigError as e:
        for line in e.lines():
            click.echo(line, err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyproxyd")
def main() -> None:
    """pyproxyd: a config-driven API gateway."""


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False))
def validate(path: str) -> None:
    """Parse, validate and compile FILE without binding ports."""
    from .compile import compile_snapshot, unsupported, warnings

    loaded = _load_or_exit(path)
    try:
        compile_snapshot(loaded)
    except (ValueError, OSError) as e:
        click.echo(f"{path}: (compile): {e}", err=True)
        sys.exit(1)
    cfg = loaded.config
    for p in [*unsupported(cfg), *warnings(cfg)]:
        click.echo(f"{path}: {p.path}: warning: {p.message}", err=True)
    click.echo(
        f"{path}: ok: {len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams, "
        f"{len(cfg.rate_limits)} rate-limit policies"
    )


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--no-watch", is_flag=True, help="reload on SIGHUP only, not on file changes")
def run(path: str, no_watch: bool) -> None:
    """Run the gateway in the foreground."""
    loaded = _load_or_exit(path)
    multiproc_dir = None
    if (loaded.config.server.workers or os.cpu_count() or 1) > 1 and not os.environ.get(
        "PYPROXYD_WORKER"
    ):
        # prometheus-client picks its storage when first imported (compile
        # imports it): the workers' metrics and the supervisor's own must go to
        # files that the supervisor's /metrics adds up.
        multiproc_dir = tempfile.mkdtemp(prefix="pyproxyd-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    try:
        _run(loaded, path, watch=not no_watch)
    finally:
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def _run(loaded: Loaded, path: str, *, watch: bool) -> None:
    from .compile import unsupported
    from .observe.logging import configure
    from .server import CannotStart

    problems = unsupported(loaded.config)
    if problems:
        for p in problems:
            click.echo(p.format(path), err=True)
        sys.exit(1)
    lc = loaded.config.logging
    log_path = log_file(loaded.config, loaded.path.parent)
    try:
        configure(lc.format, lc.level, str(log_path) if log_path else None)
    except OSError as e:  # validate checks the folder; permissions it cannot know
        click.echo(f"{path}: logging.file: cannot open {log_path}: {e.strerror}", err=True)
        sys.exit(1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    try:
        asyncio.run(_serve(loaded, watch=watch))
    except CannotStart as e:
        click.echo(f"{path}: {e}", err=True)
        sys.exit(1)


async def _serve(loaded: Loaded, *, watch: bool = True) -> None:
    from . import sdnotify
    from .observe.logging import get_logger
    from .server import Gateway
    from .supervisor import WORKER_ENV, WORKER_SOCKET_ENV, Supervisor, stop_with_supervisor

    log = get_logger("pyproxyd.server")
    worker = os.environ.get(WORKER_ENV) is not None
    workers = loaded.config.server.workers or (os.cpu_count() or 1)
    if workers > 1 and not worker:
        await Supervisor(loaded, workers, watch=watch).run()
        return
    from .shm.zone import from_env

    gateway = Gateway(
        loaded,
        admin=not worker,
        reuse_port=worker,
        worker_socket=os.environ.get(WORKER_SOCKET_ENV) if worker else None,
        zone=from_env() if worker else None,
    )
    await gateway.start()
    reloader = gateway.reloader
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # A worker's lines are named worker_*: the instance's shutdown and stopped
    # are its supervisor's; a worker's own say what it drained.
    prefix = "worker_" if worker else ""
    fields: dict[str, object] = {"worker": int(os.environ[WORKER_ENV])} if worker else {}

    def stopping(reason: str) -> None:
        if stop.is_set():
            return
        stop.set()
        log.info(f"{prefix}shutdown", signal=reason, **fields,
                 graceful_timeout=gateway.snapshot.server.graceful_timeout)  # fmt: skip
        sdnotify.stopping()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping, sig.name)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
    if worker:
        stop_with_supervisor(lambda: stopping("supervisor_gone"))
    # A worker is told to reload by its supervisor; a single process watches itself.
    watcher = asyncio.create_task(reloader.watch(stop)) if watch and not worker else None
    sdnotify.ready()
    await stop.wait()
    started = loop.time()
    drained = await gateway.stop()
    if watcher is not None:
        await watcher
    log.info(f"{prefix}stopped", **fields, in_flight=drained.in_flight,
             finished=drained.finished, cut=drained.cut,
             seconds=round(loop.time() - started, 3))  # fmt: skip


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False))
@click.argument("method")
@click.argument("request_path", metavar="PATH")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value'")
@click.option("--ip", default="127.0.0.1", help="client address")
@click.option(
    "--claim",
    "claims",
    multiple=True,
    help="'name=value': a claim of the (assumed verified) token; repeat a name for a list",
)
def explain(
    path: str,
    method: str,
    request_path: str,
    headers: tuple[str, ...],
    ip: str,
    claims: tuple[str, ...],
) -> None:
    """Say which route takes METHOD PATH, and why the others did not."""
    from .explain import explain_request

    loaded = _load_or_exit(path)
    text, matched = explain_request(loaded, method, request_path, headers, ip, claims)
    click.echo(text)
    sys.exit(0 if matched else 1)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the config file."""
    click.echo(json.dumps(Config.model_json_schema(), indent=2))


@main.command("hash-key")
def hash_key() -> None:
    """Read an API key on stdin; print the api_key_sha256 line for [consumers.*]."""
    key = sys.stdin.readline().strip()
    if not key:
        click.echo("no key on stdin", err=True)
        sys.exit(1)
    click.echo(f'api_key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"')


if __name__ == "__main__":  # pragma: no cover
    main()
