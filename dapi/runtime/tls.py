"""One shared TLS context for the HTTP clients the project makes."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client we make.

    httpx builds a fresh one (loading the CA bundle, ~20 ms) for each AsyncClient otherwise, which adds
    up when every node, or every test, gets its own client.
    """
    return httpx.create_ssl_context()
