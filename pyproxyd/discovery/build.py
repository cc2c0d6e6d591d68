"""Config -> the source of each discovered upstream, for compile.py.

One etcd client per process and settings is shared by every prefix (and by
the config_key watch); DNS sources share the [dns] resolver settings.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .relay import SOCKET_ENV, RelaySource, feed_id
from .runner import Discovered

if TYPE_CHECKING:
    from ..config import Config, UpstreamConfig
    from .models import DiscoveryConfig

SourceMaker = Callable[[str, "UpstreamConfig"], Discovered]
DEFAULT_WAIT = 2.0  # /readyz's wait for a first answer without an [etcd] table


def source_maker(cfg: Config, folder: Path) -> SourceMaker:
    wait = cfg.etcd.timeout if cfg.etcd is not None else DEFAULT_WAIT
    hub = os.environ.get(SOCKET_ENV)  # a worker's: its supervisor runs the sources

    def make(name: str, up: UpstreamConfig) -> Discovered:
        disc = up.discovery
        assert disc is not None
        if hub:
            relay = RelaySource(hub, feed_id(name, disc.model_dump(exclude_none=True)),
                                source_name(disc))  # fmt: skip
            discovered = Discovered(name, relay, wait, announce=False)
            discovered.preset(*relay.first())
            return discovered
        if disc.etcd is not None:
            from .etcd_source import EtcdSource

            return Discovered(name, EtcdSource(etcd_client(cfg, folder), disc.etcd), wait)
        from .dns import DnsSource

        nameservers = cfg.dns.nameservers or None
        if disc.dns is not None:
            scheme = "https" if disc.dns.startswith("https://") else "http"
            spec = disc.dns.removeprefix("https://").removeprefix("http://")
            return Discovered(name, DnsSource(spec, nameservers, False, scheme), wait)
        assert disc.dns_srv is not None
        return Discovered(name, DnsSource(disc.dns_srv, nameservers, True, "http"), wait)

    return make


def source_name(disc: DiscoveryConfig) -> str:
    """The name a source of these settings has (EtcdSource's, DnsSource's)."""
    if disc.etcd is not None:
        return f"etcd {disc.etcd}"
    if disc.dns is not None:
        return "dns " + disc.dns.removeprefix("https://").removeprefix("http://")
    return f"dns_srv {disc.dns_srv}"


_clients: dict[tuple[Any, ...], Any] = {}


async def close_clients() -> None:
    """At a gateway's stop: its loop ends, and a client's session with it."""
    clients = list(_clients.values())
    _clients.clear()
    for client in clients:
        await client.close()


def etcd_client(cfg: Config, folder: Path) -> Any:
    """The process's client for these etcd settings (made once, shared)."""
    from .etcd import EtcdClient

    e = cfg.etcd
    assert e is not None
    password = os.environ.get(e.password_env, "") if e.password_env else None
    key = (tuple(e.endpoints), e.timeout, e.username, password, e.tls)
    client = _clients.get(key)
    if client is None:
        context = None
        if e.tls is not None:
            context = ssl.create_default_context(
                cafile=str(folder / e.tls.ca) if e.tls.ca else None
            )
            if e.tls.cert and e.tls.key:
                context.load_cert_chain(str(folder / e.tls.cert), str(folder / e.tls.key))
        client = _clients[key] = EtcdClient(
            list(e.endpoints), e.timeout, username=e.username, password=password, ssl=context
        )
    return client
