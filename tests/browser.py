"""Render an HTML file in headless Chromium and report what a reader's browser meets: for the tests of HTML output.

The browser is the system's Chromium (Debian's ``chromium`` package, installed by ``make browser``), driven by
Playwright's sync API; Playwright's own browser downloads are never used. Every request other than the page's own
file and ``data:`` URLs is recorded and aborted: a self-contained page makes none, and the tests never reach the
network.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
MOBILE_VIEWPORT = (390, 844)
"""A phone's viewport in CSS pixels (iPhone 12 to 14)."""


def chromium_path() -> Path:
    """The system Chromium; a missing one fails the calling test (a browser test never skips itself into green)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: run `make browser` (installs Debian's chromium package)",
            pytrace=False,
        )
    return CHROMIUM


@dataclass(frozen=True)
class ImageInfo:
    """One ``<img>`` of the page after it loaded."""

    src: str
    alt: str | None
    """The ``alt`` attribute; None when the image has none."""
    natural_width: int
    natural_height: int
    complete: bool
    """The browser finished with it (a broken image is complete too, with natural size 0 x 0)."""


@dataclass(frozen=True)
class PageResult:
    """What rendering one page met."""

    console_errors: list[str]
    """Console messages of type error, then the page's uncaught exceptions (``pageerror: ...``)."""
    requests: list[str]
    """Every requested URL other than the page's own and ``data:`` URLs (network requests; all were aborted)."""
    dialogs: list[str]
    """``alert``, ``confirm``, ``prompt`` and ``beforeunload`` dialogs as ``"type: message"`` (all dismissed)."""
    text: str
    """``document.body.innerText``."""
    section_ids: list[str]
    """The ``id`` of every ``<section>``, in document order (``""`` for one without)."""
    section_tops: list[int]
    """The top of each of those sections in page pixels (CSS pixels; a screenshot has the same scale)."""
    images: list[ImageInfo]
    scroll_width: int
    """``document.documentElement.scrollWidth``: wider than ``viewport_width`` means horizontal overflow (a phone
    would zoom the page out to fit it, and its text would be too small to read)."""
    viewport_width: int
    """The viewport's width in CSS pixels, as asked for (390 with ``mobile``)."""
    screenshot: Path | None


_PAGE_FACTS = """() => ({
    text: document.body ? document.body.innerText : "",
    sections: Array.from(document.querySelectorAll("section"), (s) => s.id),
    tops: Array.from(document.querySelectorAll("section"), (s) => s.getBoundingClientRect().top + window.scrollY),
    images: Array.from(document.images, (i) => ({
        src: i.currentSrc || i.src, alt: i.getAttribute("alt"), width: i.naturalWidth, height: i.naturalHeight,
        complete: i.complete,
    })),
    scrollWidth: document.documentElement.scrollWidth,
})"""


def save_picture(full_page: Path, target: Path, bands: list[tuple[int, int]], *, width: int = 1024) -> Path:
    """Bands ``(top, bottom)`` of a full-page screenshot, stacked and scaled to ``width``, as a 256-colour PNG
    (small enough to commit)."""
    from PIL import Image

    with Image.open(full_page) as image:
        crops = [image.crop((0, top, image.width, min(bottom, image.height))).convert("RGB") for top, bottom in bands]
    picture = Image.new("RGB", (crops[0].width, sum(c.height for c in crops)), "white")
    y = 0
    for crop in crops:
        picture.paste(crop, (0, y))
        y += crop.height
    picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def render_page(
    html: Path,
    screenshot: Path | None = None,
    *,
    width: int = 1280,
    height: int = 900,
    mobile: bool = False,
    timeout_ms: int = 60_000,
) -> PageResult:
    """Open ``html`` (its ``file://`` URL) in headless Chromium with a fresh profile, wait for ``load``, and report.

    Args:
        html: the HTML file.
        screenshot: write a full-page PNG screenshot here.
        width, height: the viewport in CSS pixels (ignored with ``mobile``).
        mobile: a phone: a 390 x 844 viewport, touch, and the mobile meta-viewport rules.
        timeout_ms: the longest wait for the browser or the page.
    """
    from playwright.sync_api import sync_playwright

    url = html.resolve().as_uri()
    console_errors: list[str] = []
    page_errors: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []

    def on_request(request: Any) -> None:  # Chromium reports none for data: URLs (they are no requests)
        if request.url != url:
            requests.append(request.url)

    def on_route(route: Any) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    view = MOBILE_VIEWPORT if mobile else (width, height)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium_path()),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": view[0], "height": view[1]},
            is_mobile=mobile,
            has_touch=mobile,
            timeout=timeout_ms,
        )
        try:
            context.set_default_timeout(timeout_ms)
            context.on("request", on_request)
            context.route("**/*", on_route)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: page_errors.append(f"pageerror: {error}"))
            page.on("dialog", on_dialog)
            page.goto(url, wait_until="load")
            facts = page.evaluate(_PAGE_FACTS)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return PageResult(
        console_errors=console_errors + page_errors,
        requests=requests,
        dialogs=dialogs,
        text=facts["text"],
        section_ids=list(facts["sections"]),
        section_tops=[round(top) for top in facts["tops"]],
        images=[ImageInfo(i["src"], i["alt"], i["width"], i["height"], i["complete"]) for i in facts["images"]],
        scroll_width=int(facts["scrollWidth"]),
        viewport_width=view[0],
        screenshot=screenshot,
    )
