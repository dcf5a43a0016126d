"""What the web apps (labeling, studio) share: security headers, the CSRF check, the waitress server.

Imports Flask only when an app is built; no torch.

- `CSP`: no inline script, nothing from another origin (the pages work offline,
  and a rendering mistake could not run a response's `<script>`);
- `add_security_headers(app)`: CSP, nosniff, no framing, no referrer, and
  `Cache-Control: no-store` on everything but static files;
- `csrf_problem(...)`: why a state-changing request is refused (wrong token,
  another origin), or None;
- `make_waitress(app, ...)`: a bound waitress server that ignores clients'
  X-Forwarded-* headers.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def security_headers(resp, *, cache: bool = False):
    """Set the headers every response of our apps carries; `cache`: a static file (may be cached)."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not cache:
        resp.headers["Cache-Control"] = "no-store"
    return resp


def add_security_headers(app, static_prefix: str = "/static/") -> None:
    """`security_headers` on every response of `app`."""
    from flask import request

    @app.after_request
    def _headers(resp):
        return security_headers(resp, cache=request.path.startswith(static_prefix))


def csrf_problem(sent: str | None, expected: str | None, origin: str | None, host: str) -> str | None:
    """Why a POST is refused (CSRF token missing or wrong, or sent from another origin), None when it is fine."""
    if not expected or not hmac.compare_digest((sent or "").encode(), expected.encode()):
        return "CSRF token missing or wrong; reload the page"
    if origin and origin != "null" and urlsplit(origin).netloc != host:
        return "cross-origin request refused"
    return None


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1, localhost: only this machine can connect."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_waitress(app, *, host: str, port: int, threads: int, ident: str, stream: bool = False):
    """A waitress server for `app`, bound but not yet serving (`.effective_port`, `.run()`, `.close()`).

    `stream`: send what a response yields at once; waitress otherwise holds back a running response's
    output until 18,000 bytes have gathered, which would deliver a streamed answer all at the end."""
    from waitress.server import create_server

    # clear_untrusted_proxy_headers: X-Forwarded-* from clients are ignored.
    at_once = {"send_bytes": 1} if stream else {}
    return create_server(app, host=host, port=port, threads=threads, ident=ident,
                         clear_untrusted_proxy_headers=True, connection_limit=200, **at_once)
