"""The explorer's HTTP API as plain functions: ``handle(explorer, method, path, query, body)``.

Kept apart from the server so that every endpoint is testable without a socket or a browser.
Every error a request can cause (a bad parameter, an unreadable upload, an unknown class, a
network the engine refuses) comes back as ``{"error": message}`` with status 400; anything else
as status 500 with the exception's message.  Neither stops the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from .arrays import decode_image
from .session import Explorer

__all__ = ["Response", "handle", "safe_name", "STATIC_FILES"]

#: The page's files (package data); nothing else is ever read from disk for a request.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_UPLOAD = 8 * 1024 * 1024


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


def safe_name(name: str) -> str:
    """A display name for an upload: its last path component, harmless characters only.

    Uploads are decoded in memory and never written anywhere, so the name is only a label; this
    still strips ``../`` and the like so that nothing path-like is ever shown or reused.
    """
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    return base[:80] or "upload"


_REQUIRED = object()


def _int(query: dict[str, str], key: str, default: Any = _REQUIRED) -> Any:
    """An integer parameter; ``default`` when absent or empty (an error if there is none)."""
    value = query.get(key)
    if value is None or value == "":
        if default is _REQUIRED:
            raise ValueError(f"missing parameter {key!r}")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"parameter {key!r} must be an integer, got {value!r}") from None


def _pixel(ex: Explorer, q: dict[str, str]) -> dict:
    index = _int(q, "image")
    summary = ex.summary(index)
    (h, w), (_, ho, wo) = summary["row_space"][1:], summary["column_space"]
    y, x = _int(q, "y"), _int(q, "x")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {w}x{h} input")
    oy, ox = _int(q, "oy", y * ho // h), _int(q, "ox", x * wo // w)
    channel = ex.unit_channel(q.get("class") or None, _int(q, "channel", None))
    return ex.pixel(index, (channel, oy, ox), (y, x))


def _upload(ex: Explorer, q: dict[str, str], body: bytes) -> dict:
    name = safe_name(q.get("name", "upload"))
    if len(body) > MAX_UPLOAD:
        raise ValueError(f"{name} is larger than {MAX_UPLOAD // (1024 * 1024)} MB")
    index = ex.add_image(decode_image(body, name), name)
    return {"id": index, "name": name, "images": ex.info()["images"]}


def _atlas(ex: Explorer, q: dict[str, str]) -> dict:
    if ex.atlas is None:
        raise ValueError("no neuron atlas was computed for this session (start the server with --atlas-layer)")
    unit = q.get("unit")
    if unit is None:
        return ex.atlas.overview()
    with ex.lock:
        return ex.atlas.unit_view(ex.model, int(unit))


ROUTES: dict[str, Callable[[Explorer, dict[str, str]], Any]] = {
    "/api/info": lambda ex, q: ex.info(),
    "/api/summary": lambda ex, q: ex.summary(_int(q, "image")),
    "/api/explanation": lambda ex, q: ex.explanation(_int(q, "image"), q.get("class", "")),
    "/api/delta": lambda ex, q: ex.delta(_int(q, "image"), q.get("a", ""), q.get("b", "")),
    "/api/pixel": _pixel,
    "/api/residual": lambda ex, q: ex.residual(_int(q, "image"), q.get("class") or None),
    "/api/svd": lambda ex, q: ex.svd(_int(q, "image"), _int(q, "k", 4)),
    "/api/atlas": _atlas,
}


def handle(ex: Explorer, method: str, path: str, query: str = "", body: bytes = b"") -> Response:
    """Answer one request; never raises."""
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        if method == "GET" and path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            return Response(200, content_type, resources.files(__package__).joinpath("static", name).read_bytes())
        if method == "POST" and path == "/api/upload":
            return _json(_upload(ex, q, body))
        if method == "GET" and path in ROUTES:
            return _json(ROUTES[path](ex, q))
        return _json({"error": f"no such endpoint: {method} {path}"}, 404)
    except (ValueError, IndexError, KeyError, TypeError, RuntimeError) as err:
        return _json({"error": _message(err)}, 400)
    except Exception as err:  # noqa: BLE001 - the server must keep serving whatever a request does
        return _json({"error": f"{type(err).__name__}: {_message(err)}"}, 500)


def _message(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__
