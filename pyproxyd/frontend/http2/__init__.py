"""The HTTP/2 client side, on the `h2` state machine: h2 by ALPN on TLS
listeners, h2c with prior knowledge on plain ones (the HTTP/1.1 frontend
hands a connection over when it sees the preface). Each stream is a
`Request` of the protocol-free pipeline (proxy/interface.py)."""

from .front import Http2Frontend

__all__ = ["Http2Frontend"]
