"""The status page: three small files shipped inside the package (``http/static/``).

No build step and nothing from a CDN: the page works on an air-gapped network. The files
are read once when the app is built and served from memory with an ETag; the page may
only run its own script and style (the Content-Security-Policy set in ``app.py``), and
builds every upstream string into the DOM as text.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

from batchscope import __version__

#: name → content type of every file the page may load.
ASSETS: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    def response(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        if self.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body, content_type=self.content_type,
                            charset="utf-8" if self.content_type != "image/svg+xml" else None,
                            headers=headers)


def load_assets() -> dict[str, Asset]:
    """Every page file, read from the installed package."""
    folder = resources.files("batchscope.http") / "static"
    out = {}
    for name, content_type in ASSETS.items():
        body = (folder / name).read_bytes()
        if name == "index.html":
            # Our own version string, escaped all the same; ?v= makes a new release's
            # script and style bypass any cache.
            body = body.replace(b"{{version}}", html.escape(__version__).encode())
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out[name] = Asset(body, content_type, etag)
    return out
