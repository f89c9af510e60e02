"""The headless-browser helper (tests/browser.py) reports what a reader's browser meets, on hand-written pages."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from . import browser
from .browser import chromium_path, render_page


@pytest.fixture(autouse=True)
def _chromium() -> None:
    chromium_path()  # fails, naming `make browser`, when the system Chromium is missing


def _page(tmp_path: Path, body: str, *, name: str = "page.html", head: str = "") -> Path:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>")
    return path


def _png_data_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_clean_page_reports_nothing_and_its_text_and_sections(tmp_path: Path) -> None:
    body = "<section id='one'><h2>One</h2><p>first</p></section><section id='two'><p>second</p></section><section>x"
    result = render_page(_page(tmp_path, body))
    assert result.console_errors == []
    assert result.requests == []
    assert result.dialogs == []
    assert result.section_ids == ["one", "two", ""]
    assert "first" in result.text
    assert "second" in result.text


def test_console_errors_and_uncaught_exceptions_are_reported(tmp_path: Path) -> None:
    body = (
        "<script>console.error('boom: ' + 6 * 7); console.log('fine')</script><script>throw new Error('kaput')</script>"
    )
    result = render_page(_page(tmp_path, body))
    assert result.console_errors[0] == "boom: 42"
    assert len(result.console_errors) == 2
    assert "kaput" in result.console_errors[1]


def test_a_network_request_is_recorded_and_never_reaches_the_network(tmp_path: Path) -> None:
    body = f"<img src='http://example.invalid/x.png' alt='remote'><img src='{_png_data_uri(3, 2)}' alt='inline'>"
    result = render_page(_page(tmp_path, body))
    assert result.requests == ["http://example.invalid/x.png"]  # the data: URL is no request
    remote, inline = result.images
    assert (remote.alt, remote.natural_width, remote.complete) == ("remote", 0, True)  # aborted: broken
    assert (inline.natural_width, inline.natural_height) == (3, 2)


def test_a_file_beside_the_page_is_a_request_too(tmp_path: Path) -> None:
    # A self-contained page (a report) must not depend on files beside it: those are recorded and aborted.
    Image.new("RGB", (5, 4)).save(tmp_path / "beside.png")
    result = render_page(_page(tmp_path, "<img src='beside.png' alt='beside'>"))
    assert result.requests == [(tmp_path / "beside.png").resolve().as_uri()]
    assert result.images[0].natural_width == 0  # aborted, as a moved copy of the page would lose it


def test_escaped_script_is_text_and_a_real_script_opens_a_dialog(tmp_path: Path) -> None:
    escaped = render_page(_page(tmp_path, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>", name="escaped.html"))
    assert "<script>alert(1)</script>" in escaped.text
    assert escaped.dialogs == []
    injected = render_page(_page(tmp_path, "<p>before</p><script>alert(1)</script><p>after</p>", name="real.html"))
    assert injected.dialogs == ["alert: 1"]
    assert "after" in injected.text  # the dialog was dismissed and the page went on


def test_image_natural_sizes_and_alt_texts(tmp_path: Path) -> None:
    body = f"<img src='{_png_data_uri(37, 23)}' alt='wide'><img src='{_png_data_uri(8, 30)}'>"
    result = render_page(_page(tmp_path, body))
    assert [(i.alt, i.natural_width, i.natural_height, i.complete) for i in result.images] == [
        ("wide", 37, 23, True),
        (None, 8, 30, True),
    ]


def test_the_screenshot_is_a_full_page_png(tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    result = render_page(_page(tmp_path, "<div style='height: 2000px'>tall</div>"), shot, width=800, height=600)
    assert result.screenshot == shot
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as image:
        assert image.width == 800
        assert image.height >= 2000  # the whole page, not the 600 px viewport


def test_mobile_viewport_shows_horizontal_overflow(tmp_path: Path) -> None:
    head = "<meta name='viewport' content='width=device-width, initial-scale=1'>"
    fits = render_page(_page(tmp_path, "<p>short text</p>", head=head, name="fits.html"), mobile=True)
    assert fits.viewport_width == browser.MOBILE_VIEWPORT[0]
    assert fits.scroll_width <= fits.viewport_width
    wide = render_page(_page(tmp_path, "<table><tr><td style='min-width: 900px'>x</td></tr></table>", head=head,
                             name="wide.html"), mobile=True)  # fmt: skip
    assert wide.scroll_width > wide.viewport_width
    desktop = render_page(tmp_path / "wide.html", width=800)
    assert desktop.viewport_width == 800
    assert desktop.scroll_width > 900  # the table's width, not the window's


def test_a_missing_chromium_fails_and_names_make_browser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        chromium_path()
    with pytest.raises(pytest.fail.Exception, match="make browser"):
        render_page(_page(tmp_path, "<p>x</p>"))
