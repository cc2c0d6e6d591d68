"""Upstream side: connection pool, HTTP/1.1 client, balancers."""
