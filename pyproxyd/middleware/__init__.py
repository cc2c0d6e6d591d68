"""The middleware chain (the onion model): built-in and python middlewares
compiled into a plain list of steps per route.

models.py holds the config tables (inert data, read by compile.py only);
the rest is what a request runs through.
"""
