"""Google Drive answers large files with an HTML "virus scan warning" page whose form (fields ``id``, ``export``,
``confirm``, ``uuid``) has to be submitted to get the bytes; older pages had a confirm link or cookie. This module
finds where that page leads, and tells Drive's own pages (quota, not shared) from the file."""
from __future__ import annotations

import html.parser
import urllib.parse

__all__ = ["confirm_target", "is_google"]


class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                               "inputs": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def confirm_target(page: str, page_url: str, cookies: dict) -> tuple[str | None, str]:
    """The URL that the Drive "download anyway" form (or older confirm link/cookie) leads to, and the page title."""
    parser = _FormParser()
    try:
        parser.feed(page)
    except Exception:  # a malformed page simply has no usable form
        return None, ""
    title = " ".join(parser.title.split())
    for form in parser.forms:
        if "confirm" in form["inputs"] and form["method"] == "get":
            action = urllib.parse.urljoin(page_url, form["action"] or page_url)
            parts = urllib.parse.urlsplit(action)
            query = urllib.parse.urlencode(form["inputs"])
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), title
    if parser.links:  # the pre-2024 page: <a href="/uc?export=download&confirm=XXXX&id=...">
        return urllib.parse.urljoin(page_url, parser.links[0]), title
    for name, value in cookies.items():  # the oldest flow: the token is only in a download_warning cookie
        if name.startswith("download_warning"):
            parts = urllib.parse.urlsplit(page_url)
            query = dict(urllib.parse.parse_qsl(parts.query))
            query["confirm"] = value
            return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query))), title
    return None, title


def is_google(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "google.com" or host.endswith(".google.com") or host.endswith(".googleusercontent.com")
