"""A tiny JSON-over-HTTP client for the lab (stdlib only, proxies from the environment ignored).

Lab code polls local REST APIs in loops with deadlines; a failed request is an answer
("not yet"), so every helper returns a status instead of raising on HTTP errors.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_tls: dict[str, urllib.request.OpenerDirector] = {}  # URL prefix -> opener with that server's CA


def trust(url_prefix: str, ctx: ssl.SSLContext) -> None:
    """Use `ctx` (a lab CA, maybe a client certificate) for URLs starting with `url_prefix`."""
    _tls[url_prefix] = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=ctx))


def request(method: str, url: str, body: Any = None, timeout: float = 2.0,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Return (status, decoded JSON or text). Status 0 means no HTTP answer at all."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 - lab URLs
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        opener = next((o for prefix, o in _tls.items() if url.startswith(prefix)), _opener)
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, _decode(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())
    except (OSError, TimeoutError):
        return 0, None


def get(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    return request("GET", url, timeout=timeout)


def post(url: str, body: Any = None, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return request("POST", url, body if body is not None else {}, timeout=timeout, headers=headers)


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
