"""API keys: the SHA-256 of the key the client sent names a consumer."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from ..errors import InvalidAPIKey
from .identity import Consumers, Identity


class APIKeyAuth:
    """auth = "api_key": the key in `header` must hash to a consumer's api_key_sha256.

    The table is keyed by digest, so the lookup only ever sees a hash the
    client cannot steer byte by byte; the stored digest is then compared in
    constant time. The identity returned is the consumer's, built at compile.
    """

    __slots__ = ("by_digest", "header")

    def __init__(self, header: str, consumers: Consumers) -> None:
        self.header = header
        self.by_digest = consumers.by_key_digest

    def describe(self) -> str:
        return f"api_key (in {self.header})"

    def __call__(self, headers: Mapping[str, str], memo: object = None) -> Identity:
        key = headers.get(self.header)
        if not key:
            raise InvalidAPIKey(f"an API key is required in {self.header}", self.header)
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = self.by_digest.get(digest)
        if found is None or not hmac.compare_digest(digest, found[0]):
            raise InvalidAPIKey("invalid API key", self.header)
        return found[1]
