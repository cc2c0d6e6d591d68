"""The files a VM install needs beside the package: `pyproxyd files` writes them out.

A wheel carries them in pyproxyd/share/ (setup.py copies them there from the
checkout, where they live as etc/, systemd/, docs/); a checkout, editable install
included, reads them in place. The JSON Schema is written from the models, so it
always describes the config this install reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHARE = PACKAGE / "share"  # in an installed wheel
SCHEMA = "gateway.schema.json"


@dataclass(frozen=True)
class Shipped:
    name: str  # where `pyproxyd files --write DIR` puts it, under DIR
    source: str  # where it lives in the checkout
    about: str


SHIPPED = (
    Shipped(
        "gateway.toml", "etc/gateway.toml", "example config: copy to /etc/pyproxyd/gateway.toml"
    ),
    Shipped(
        "pyproxyd.service", "systemd/pyproxyd.service", "systemd unit: copy to /etc/systemd/system/"
    ),
    Shipped(
        "grafana/pyproxyd-dashboard.json",
        "etc/grafana/pyproxyd-dashboard.json",
        "Grafana dashboard (Dashboards -> New -> Import)",
    ),
    Shipped("prometheus/alerts.yml", "etc/prometheus/alerts.yml", "Prometheus alert rules"),
    Shipped(
        "prometheus/alerts_test.yml",
        "etc/prometheus/alerts_test.yml",
        "their unit tests: promtool test rules prometheus/alerts_test.yml",
    ),
    Shipped("README.md", "README.md", "the manual (the unit's Documentation=)"),
    Shipped("configuration.md", "docs/configuration.md", "every config key"),
)


class NotShipped(Exception):
    """Neither an installed wheel nor a checkout holds the files."""


def locate(item: Shipped, share: Path = SHARE, checkout: Path = PACKAGE.parent) -> Path:
    """The file to copy for `item`: the wheel's copy, else the checkout's."""
    for path in (share / item.name, checkout / item.source):
        if path.is_file():
            return path
    raise NotShipped(f"{item.name}: not in this install ({share}) nor a checkout ({checkout})")


def schema_text() -> str:
    from .config import Config

    return json.dumps(Config.model_json_schema(), indent=2) + "\n"


def listing() -> list[tuple[str, str]]:
    """(name, what it is) of every file `write` writes."""
    return [(s.name, s.about) for s in SHIPPED] + [
        (SCHEMA, "JSON Schema of gateway.toml (for editors; also `pyproxyd schema`)")
    ]


def write(dest: Path, *, force: bool = False, share: Path = SHARE) -> list[Path]:
    """Write every file under `dest` and return their paths. Nothing is written
    when one exists already, unless `force`: FileExistsError names them all."""
    sources = {s.name: locate(s, share) for s in SHIPPED}
    targets = [dest / name for name, _ in listing()]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(t) for t in existing))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        name = target.relative_to(dest).as_posix()
        data = schema_text().encode() if name == SCHEMA else sources[name].read_bytes()
        target.write_bytes(data)
    return targets
