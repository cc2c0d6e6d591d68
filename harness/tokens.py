"""Test keys (made here with cryptography) and tokens signed with them.

Keys are generated once per process: RSA 2048 generation is the slow part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import cache
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

T0 = 1_700_000_000  # the injected clock's "now" in unit tests
ISSUER = "https://idp.test"
AUDIENCE = "api-gateway"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@cache
def rsa_key(name: str = "rsa") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(name: str = "ec", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())


@cache
def ed_key(name: str = "ed") -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: PrivateKey, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    """The public half of `key` as a JWK dict (what an IdP publishes)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    return dict(jwk)


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def claims(now: float = T0, **extra: Any) -> dict[str, Any]:
    """Valid claims at `now`, overridable (None removes a claim)."""
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 600,
        "roles": ["user"],
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: PrivateKey | bytes, alg: str, payload: dict[str, Any], kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], kid: str | None = "rsa-1", alg: str = "none") -> str:
    """alg "none": a token with an empty signature."""
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str) -> str:
    """The classic confusion attack: HMAC-SHA256 keyed with the RSA *public* key (PEM)."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def rs256_with_header(key: rsa.RSAPrivateKey, header: dict[str, Any], payload: Any) -> str:
    """RS256 over any header and payload, even ones PyJWT would refuse to encode."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(sig)}"


def tamper(token: str) -> str:
    """The same header and payload with another signature."""
    head, payload, sig = token.split(".")
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    return f"{head}.{payload}.{flipped}"


class JWKSServer:
    """A real JWKS endpoint on 127.0.0.1:0 whose key list the test changes."""

    def __init__(self, *keys: dict[str, Any], cache_control: str = "max-age=300"):
        self.keys = list(keys)
        self.cache_control = cache_control
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": self.keys}, headers={"Cache-Control": self.cache_control})

    async def start(self, port: int = 0) -> JWKSServer:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> JWKSServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
