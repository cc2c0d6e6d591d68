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
from .config_load import ConfigError, Document, Loaded, load, log_file


def _load_or_exit(path: str, document: Document | None = None) -> Loaded:
    try:
        return load(path, document)
    except ConfigError as e:
        for line in e.lines():
            click.echo(line, err=True)
        sys.exit(1)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .compiled import IN_CHECKOUT, running

    build = running()
    click.echo(f"pyproxyd {__version__} ({build})")
    if build == "interpreted":
        how = ("scripts/compile.sh builds it in this checkout" if IN_CHECKOUT else
               "`pip install` makes it where gcc and the Python headers are installed "
               "(Debian: apt-get install gcc python3-dev)")  # fmt: skip
        click.echo(f"the request path runs as Python; the compiled build runs about 1.4x "
                   f"the req/s per core: {how}", err=True)  # fmt: skip
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and whether the request path runs compiled.")  # fmt: skip
def main() -> None:
    """pyproxyd: a config-driven API gateway."""


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--etcd", "with_etcd", is_flag=True, help="also read etcd.config_key and check both")
def validate(path: str, with_etcd: bool) -> None:
    """Parse, validate and compile FILE without binding ports."""
    from .compile import compile_snapshot, unsupported, warnings

    loaded = _load_or_exit(path)
    key = loaded.config.etcd.config_key if loaded.config.etcd is not None else None
    if key is not None and with_etcd:
        try:
            document = asyncio.run(_read_document(loaded))
        except Exception as e:
            click.echo(f"{path}: etcd.config_key: cannot read {key}: {e}", err=True)
            sys.exit(2)
        if document is not None:
            loaded = _load_or_exit(path, document)
    try:
        compile_snapshot(loaded)
    except (ValueError, OSError) as e:
        click.echo(f"{path}: (compile): {e}", err=True)
        sys.exit(1)
    cfg = loaded.config
    for p in [*unsupported(cfg), *warnings(cfg)]:
        click.echo(f"{path}: {p.path}: warning: {p.message}", err=True)
    if key is not None:
        what = (
            f"merged with {key} at revision {loaded.document.revision}"
            if loaded.document is not None
            else f"the file alone, without {key}" + ("" if with_etcd else " (--etcd reads it)")
        )
        click.echo(f"{path}: checked {what}")
    click.echo(
        f"{path}: ok: {len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams, "
        f"{len(cfg.rate_limits)} rate-limit policies"
    )


async def _read_document(loaded: Loaded) -> Document | None:
    from .discovery.build import etcd_client

    cfg = loaded.config
    assert cfg.etcd is not None and cfg.etcd.config_key is not None
    client = etcd_client(cfg, loaded.path.parent)
    try:
        _, value, mod_revision = await client.get(cfg.etcd.config_key)
    finally:
        await client.close()
    if value is None:
        return None
    return Document(cfg.etcd.config_key, value.decode("utf-8", "replace"), mod_revision)


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False))
@click.argument("doc", type=click.Path(dir_okay=False))
def push(path: str, doc: str) -> None:
    """Validate DOC merged with FILE, then write DOC to etcd.config_key, only
    if the key has not changed since it was read (exit 2 when it has)."""
    loaded = _load_or_exit(path)
    cfg = loaded.config
    if cfg.etcd is None or cfg.etcd.config_key is None:
        click.echo(f"{path}: etcd.config_key: push needs an [etcd] table with config_key",
                   err=True)  # fmt: skip
        sys.exit(1)
    try:
        text = open(doc, encoding="utf-8").read()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as e:
        click.echo(f"{doc}: (file): cannot read: {e}", err=True)
        sys.exit(1)
    key = cfg.etcd.config_key
    sys.exit(asyncio.run(_push(loaded, path, key, doc, text)))


async def _push(loaded: Loaded, path: str, key: str, doc: str, text: str) -> int:
    """Read the key's revision, validate, write with a compare on it: the exit code."""
    from .compile import compile_snapshot
    from .discovery.build import etcd_client

    client = etcd_client(loaded.config, loaded.path.parent)
    try:
        try:
            revision, _, mod_revision = await client.get(key)
        except Exception as e:
            click.echo(f"{path}: etcd: cannot read {key}: {e}", err=True)
            return 2
        try:
            merged = load(path, Document(doc, text, mod_revision))
            compile_snapshot(merged)
        except ConfigError as e:
            for line in e.lines():
                click.echo(line, err=True)
            return 1
        except (ValueError, OSError) as e:
            click.echo(f"{doc}: (compile): {e}", err=True)
            return 1
        try:
            written = await client.put_if_revision(key, text.encode(), mod_revision)
        except Exception as e:
            click.echo(f"{path}: etcd: cannot write {key}: {e}", err=True)
            return 2
    finally:
        await client.close()
    if written is None:
        click.echo(f"{path}: etcd: {key} changed since it was read (revision {revision}): "
                   "nothing written; read it again and retry", err=True)  # fmt: skip
        return 2
    click.echo(f"{key}: written at revision {written}")
    return 0


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
    from .fleet import DOCUMENT_ENV
    from .shm.zone import from_env

    gateway = Gateway(
        loaded,
        admin=not worker,
        reuse_port=worker,
        worker_socket=os.environ.get(WORKER_SOCKET_ENV) if worker else None,
        zone=from_env() if worker else None,
        document_file=os.environ.get(DOCUMENT_ENV) if worker else None,
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


@main.command()
@click.option("--write", "dest", type=click.Path(file_okay=False), metavar="DIR",
              help="write them under DIR (created if missing)")  # fmt: skip
@click.option("--force", is_flag=True, help="overwrite files that exist")
def files(dest: str | None, force: bool) -> None:
    """List the files a VM install needs beside the package (example config,
    systemd unit, Grafana dashboard, alert rules, docs, JSON Schema), or
    write them under DIR; an existing file is left alone without --force."""
    from pathlib import Path

    from .shipped import NotShipped, listing, write

    if dest is None:
        for name, about in listing():
            click.echo(f"{name:34} {about}")
        return
    try:
        written = write(Path(dest), force=force)
    except FileExistsError as e:
        click.echo(f"{dest}: exists already, nothing written (--force overwrites): {e}", err=True)
        sys.exit(1)
    except (NotShipped, OSError) as e:
        click.echo(f"{dest}: {e}", err=True)
        sys.exit(1)
    for path in written:
        click.echo(str(path))


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
