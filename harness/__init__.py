"""Real parts for the test suite, the fuzzer and the benchmarks: aiohttp and
raw-socket backends, the gateway started in process or as a process, a
redis-server on a free port, JWT signing keys and tokens.

Not part of the installed gateway. scripts/test.sh puts the checkout on the
development venv's path (a .pth file), so scripts import it as they import
pyproxyd.
"""
