"""One audit line per sampled request, with the caller's `sub` (docs/middleware.md)."""

import random
from typing import Any

import structlog

log = structlog.get_logger("acme.audit")  # the gateway's log: same format, same file


def make(options: dict[str, Any]) -> "Audit":
    return Audit(float(options.get("sample", 1.0)), str(options.get("topic", "audit")))


class Audit:
    def __init__(self, sample: float, topic: str) -> None:
        self.sample, self.topic = sample, topic

    def on_request(self, req: Any) -> None:
        req.headers["X-Audit-Topic"] = self.topic  # sent upstream with the request

    def on_response(self, req: Any, resp: Any) -> None:
        if random.random() < self.sample:
            sub = (req.claims or {}).get("sub")  # None without a verified token
            log.info("audit", topic=self.topic, sub=sub, route=req.route, method=req.method,
                     path=req.path, status=resp.status, request_id=req.request_id)  # fmt: skip
