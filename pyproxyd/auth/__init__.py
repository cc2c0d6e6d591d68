"""Identity at the edge: JWT, API keys and consumers (see auth/route.py)."""

from .apikey import APIKeyAuth
from .identity import Consumer, Consumers, Identity
from .jwks import KeySet, RemoteKeys, StaticKeys
from .jwt import JWTVerifier
from .route import NO_AUTH, Authenticator, AuthRuntime, ClientIdAuth, JWTAuth, TokenMemo

__all__ = [
    "NO_AUTH",
    "APIKeyAuth",
    "AuthRuntime",
    "Authenticator",
    "ClientIdAuth",
    "Consumer",
    "Consumers",
    "Identity",
    "JWTAuth",
    "JWTVerifier",
    "KeySet",
    "RemoteKeys",
    "StaticKeys",
    "TokenMemo",
]
