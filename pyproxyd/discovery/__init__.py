"""Where an upstream's targets come from when they are not a static list:
etcd (etcd.py) or DNS (dns.py). A source only finds instances and says so;
what the upstream does with them (balancers, pools, draining), the log
events and the metrics belong to the runner (runner.py) and the upstream.

A source is an object with `name` (for logs and /admin/upstreams, e.g.
"etcd /services/user-service/") and `async run(report)`, a coroutine that
runs until cancelled and never raises out (a registry that goes away is a
`report.failed`, then a retry with backoff):

    report.found(instances)  # the whole current set, after every change
                             # (an empty list is an answer: no instances)
    report.failed(reason)    # the registry could not be asked or did not
                             # answer; the last set stays in use
    report.skipped(key, reason)  # one entry that does not parse (logged)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Found:
    """One discovered instance: an http:// or https:// URL with host and
    port, and its balancing weight."""

    url: str
    weight: int = 1


class Report(Protocol):
    def found(self, instances: list[Found]) -> None: ...

    def failed(self, reason: str) -> None: ...

    def skipped(self, key: str, reason: str) -> None: ...


class Source(Protocol):
    name: str

    async def run(self, report: Report) -> None: ...
