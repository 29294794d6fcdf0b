"""Helpers for the real-browser tests: find Chromium, serve a folder on 127.0.0.1, and
visit a page the way a reader does while recording everything that went wrong.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``), driven by Playwright's
Python package through ``executable_path``; Playwright's own browser downloads are never
used. Without them the browser tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
#: Where screenshots and browser metrics land (a CI artifact); ``DISSECT_ARTIFACTS`` overrides.
ARTIFACTS = Path(os.environ.get("DISSECT_ARTIFACTS") or Path(__file__).resolve().parent.parent / "artifacts")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def chromium_path() -> str | None:
    for cand in (os.environ.get("DISSECT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def require_browser():
    """``(sync_playwright, chromium executable)``; skip here, fail in CI, when either is missing."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the Python package playwright (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        missing.append("Chromium at /usr/bin/chromium (apt-get install chromium)")
    if missing:
        msg = "browser tests need " + " and ".join(missing)
        if in_ci():
            pytest.fail(msg + "; CI must install them (.ci/run)", pytrace=False)
        pytest.skip(msg)
    return sync_playwright, exe


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class StaticServer:
    """``python -m http.server`` for one folder, on 127.0.0.1 only, in a thread.

    Used as a context manager: it stops (and its thread ends) on exit. ``log`` lists the
    request paths it answered, with their status codes.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.log: list[tuple[str, int]] = []
        outer = self

        class Handler(_QuietHandler):
            def log_request(self, code="-", size="-"):
                outer.log.append((self.path, int(code) if str(code).isdigit() else 0))

        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(self.root)))
        self._server.daemon_threads = True
        self._server.timeout = 5
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dissect-test-static-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> "StaticServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# JavaScript run in each page after it loaded: wait for charts, force-load lazy images, and
# report what a reader would see as broken.
_CHECK_JS = """async (chartTimeoutMs) => {
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  const charts = Array.from(document.querySelectorAll('.chart[data-figure]'));
  const t0 = performance.now();
  while (charts.some(c => !c.querySelector('.main-svg')) && performance.now() - t0 < chartTimeoutMs) await sleep(50);
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === 'lazy') img.loading = 'eager';
  await Promise.all(imgs.map(img => img.complete ? null : Promise.race([
    new Promise(r => { img.addEventListener('load', r, {once: true}); img.addEventListener('error', r, {once: true}); }),
    sleep(10000)])));
  const attr = (sel, name) => Array.from(document.querySelectorAll(sel)).map(e => e[name]);
  return {
    title: document.title,
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    links: attr('a[href], link[href]', 'href'),
    resources: attr('script[src], img[src]', 'src'),
    charts: charts.length,
    unrendered_charts: charts.filter(c => !c.querySelector('.main-svg') || c.querySelector('.chart-fallback')).map(c => c.id),
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    images_without_alt: imgs.filter(i => !(i.getAttribute('alt') || '').trim()).map(i => i.getAttribute('src')),
    images: imgs.length,
    h1: document.querySelectorAll('h1').length,
    lang: document.documentElement.lang,
  };
}"""


# JavaScript run in a page whose charts have rendered: what a reader at this width cannot see.
# A table hides columns when it, or the block that scrolls it, is wider inside than out
# (scrollWidth > clientWidth), or when the page itself scrolls sideways; plotly's toolbar
# (.modebar) covers a legend or a title when their boxes intersect.
LAYOUT_JS = """() => {
  const out = {hidden_columns: [], covered: []};
  const name = (el) => {
    const cap = el.querySelector('caption');
    const sec = el.closest('section[id], section[aria-labelledby], figure, main');
    return (cap ? cap.textContent : (sec && (sec.id || sec.getAttribute('aria-labelledby'))) || el.className || 'table').trim().slice(0, 80);
  };
  for (const table of document.querySelectorAll('table')) {
    if (!table.getClientRects().length) continue;          // inside a closed <details>
    let box = table;
    for (let el = table.parentElement; el && el !== document.body; el = el.parentElement) {
      const ox = getComputedStyle(el).overflowX;
      if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') { box = el; break; }
    }
    if (box.scrollWidth > box.clientWidth + 1) {
      out.hidden_columns.push(`${name(table)}: ${box.scrollWidth} px of content in ${box.clientWidth} px`);
    }
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1) out.hidden_columns.push(`the page: ${doc.scrollWidth} px in ${doc.clientWidth} px`);
  const overlap = (a, b) => Math.max(0, Math.min(a.right, b.right) - Math.max(a.left, b.left)) *
                            Math.max(0, Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top));
  for (const chart of document.querySelectorAll('.chart[data-figure]')) {
    const bar = chart.querySelector('.modebar');
    if (!bar) continue;
    const r = bar.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    for (const el of chart.querySelectorAll('.legend, .gtitle, .g-gtitle')) {
      const o = el.getBoundingClientRect();
      if (o.width && o.height && overlap(r, o) > 0) {
        out.covered.push(`${chart.id}: the toolbar covers its ${el.getAttribute('class').split(' ')[0]}`);
      }
    }
  }
  return out;
}"""


@dataclass
class Visit:
    url: str
    info: dict
    problems: list[str] = field(default_factory=list)


class SiteBrowser:
    """Opens pages of one site (from ``base``, a file:// or http:// URL of the site folder
    ending in ``/``) in one browser context and records problems: console errors, page
    errors, failed requests, HTTP errors, requests leaving the folder, and dialogs."""

    def __init__(self, browser, base: str, site_dir: Path, **context_args) -> None:
        self.base = base
        self.site_dir = Path(site_dir).resolve()
        self.context = browser.new_context(**context_args)
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error on {self.page.url}: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error on {self.page.url}: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"request failed on {self.page.url}: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status} for {r.url}"))
        self.page.on("dialog", self._dialog)

    def _route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.problems.append(f"request leaves the site folder: {url}")
            route.abort()

    def _dialog(self, dialog) -> None:
        self.problems.append(f"dialog ({dialog.type}: {dialog.message!r}) on {self.page.url}")
        dialog.dismiss()

    def close(self) -> None:
        self.context.close()

    def url_of(self, rel: str) -> str:
        return self.base + rel

    def path_of(self, url: str) -> Path | None:
        """The file a site URL points at (None when the URL is not inside the site)."""
        if not url.startswith(self.base):
            return None
        rel = unquote(urlsplit(url[len(self.base):]).path)
        p = (self.site_dir / rel).resolve() if rel else self.site_dir / "index.html"
        if p.is_dir():
            p = p / "index.html"
        return p if (p == self.site_dir or self.site_dir in p.parents) else None

    def visit(self, rel_or_url: str, chart_timeout_ms: int = 15000) -> Visit:
        url = rel_or_url if "://" in rel_or_url else self.url_of(rel_or_url)
        before = len(self.problems)
        self.page.goto(url, wait_until="load")
        info = self.page.evaluate(_CHECK_JS, chart_timeout_ms)
        v = Visit(url, info, self.problems[before:])
        if info["unrendered_charts"]:
            v.problems.append(f"{url}: charts did not render: {info['unrendered_charts']}")
        if info["broken_images"]:
            v.problems.append(f"{url}: images did not load: {info['broken_images'][:5]}")
        if info["images_without_alt"]:
            v.problems.append(f"{url}: images without alt text: {info['images_without_alt'][:5]}")
        if info["h1"] != 1:
            v.problems.append(f"{url}: {info['h1']} <h1> elements")
        if info["lang"] != "en":
            v.problems.append(f"{url}: <html> without lang")
        if not info["title"].strip():
            v.problems.append(f"{url}: empty <title>")
        for ref in info["links"] + info["resources"]:
            if not ref.startswith(self.base):
                v.problems.append(f"{url}: link leaves the site: {ref}")
            elif self.path_of(ref) is None or not self.path_of(ref).is_file():
                v.problems.append(f"{url}: broken link {ref}")
        return v
