"""Example `python` middlewares for docs/gateway.toml (server.python_path = ["plugins"])."""
