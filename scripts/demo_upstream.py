#!/usr/bin/env python3
"""A tiny demo backend: answers every request with what it received, as JSON.

    python scripts/demo_upstream.py --port 9101 --name alpha

    $ curl -s localhost:9101/users/7
    {"backend": "alpha", "method": "GET", "path": "/users/7", "headers": {...}}

`path` is the path and query exactly as the backend received them, so behind
the gateway it shows what strip_prefix or rewrite sent upstream.
"""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        await request.read()  # drain the body so the connection can be reused
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.raw_path,
                "headers": headers,
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="demo", help="reported as 'backend' in every answer")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    web.run_app(
        make_app(args.name),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda _: print(
            f"demo upstream {args.name!r} on http://{args.host}:{args.port}", flush=True
        ),
    )


if __name__ == "__main__":
    main()
