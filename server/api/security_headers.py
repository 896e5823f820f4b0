"""The headers that keep content where it belongs: user files never run as active content on darkroom's
origin, and darkroom's own pages declare what they may load.

User files (``/files/...``, uploads, the editor's relayed ``view`` and user data): every answer carries
``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: default-src 'none'; sandbox`` (no
script, no plugin, no form, an opaque origin even if a browser renders it). The type comes from the
file's first bytes: a recognised image, video or audio format is served inline as that type; anything
else (HTML, SVG, XML, text, models, unknown bytes) as ``application/octet-stream`` with
``Content-Disposition: attachment``, whatever name or type the uploader claimed. So an uploaded page or
SVG opened by a signed-in browser is downloaded, not run with the session's cookie.

Pages (the sign-in page, dashboard, playground, docs): a CSP without inline script (``script-src
'self'``), ``frame-ancestors 'none'``, ``nosniff`` and ``Referrer-Policy: same-origin`` (no referrer
leaves the origin, yet the browser still sends the Origin the CSRF checks read: ``no-referrer`` would
make it "null" and refuse every form and fetch). The editor's page is ComfyUI's frontend, relayed:
its policy (``EDITOR_CSP``) allows eval'd script, which its bundles use (``new Function``), but still no
inline script, with the same framing, referrer and sniffing rules; tests/e2e/test_editor_browser.py
runs the editor under it and fails on any refused script or style.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from server.media.inputs import sniff

USER_FILE_CSP = "default-src 'none'; sandbox"
# The media types a browser renders without running anything, when the bytes say so.
INLINE_TYPES = frozenset(
    {
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/tiff",
        "image/heic", "video/mp4", "video/webm", "video/quicktime", "video/x-msvideo", "audio/mpeg",
        "audio/flac", "audio/ogg", "audio/wav",
    }
)  # fmt: skip
SNIFF_BYTES = 32
_SHARED = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
# Media may come from anywhere a request named (an https image_url, a data: URI, a separate files origin).
_MEDIA = "img-src * data: blob:; media-src * data: blob:"
PAGE_CSP = (
    f"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; {_MEDIA}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
EDITOR_CSP = (
    f"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    f"{_MEDIA}; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
_ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml")


def user_file_headers(head: bytes, name: str) -> dict[str, str]:
    """The headers for a user file whose first bytes are ``head`` (at least ``SNIFF_BYTES`` of them,
    unless the file is shorter), named ``name``."""
    headers = {**_SHARED, "Content-Security-Policy": USER_FILE_CSP}
    sniffed = sniff(head)
    if sniffed in INLINE_TYPES:
        return {**headers, "Content-Type": sniffed}
    return {
        **headers,
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
    }


def is_active(content_type: str) -> bool:
    """Whether a browser runs script in content of this type when it opens it (HTML, SVG, XML)."""
    return content_type.split(";")[0].strip().lower() in _ACTIVE_TYPES


def relayed_headers(tail: str, content_type: str) -> dict[str, str]:
    """The policy for something the editor relays from ComfyUI (``tail``: its path there): the editor's
    page its own, any other page or SVG the user files' (ComfyUI serves what users put in its folders)."""
    if tail == "":
        return {"Content-Security-Policy": EDITOR_CSP}
    return {"Content-Security-Policy": USER_FILE_CSP} if is_active(content_type) else {}


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: nosniff and no referrer; a page (HTML) without a policy of its own gets darkroom's
    pages' CSP."""
    for name, value in _SHARED.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers and is_active(response.content_type):
        response.headers["Content-Security-Policy"] = PAGE_CSP
