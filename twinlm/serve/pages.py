"""The web pages twinlm serves (the chat page of `twinlm serve`, the review page): their files, under web/
in this package, and the headers each is sent with."""

from __future__ import annotations

from importlib import resources

# A page loads nothing from anywhere else and runs no inline script (model and chat text is never markup),
# is framed by no other site, and is fetched again on each load (an upgrade's new page, not a cached one).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def web_file(name: str) -> bytes:
    """The bytes of web/NAME (`name` one of the page's own file names, never a path from a request)."""
    return (resources.files("twinlm.serve") / "web" / name).read_bytes()
