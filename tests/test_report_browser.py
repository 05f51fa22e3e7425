"""The report in a real browser: Debian's chromium, headless, driven by Playwright. The page
loads with no console error and no request leaving the file, shows the four research
question sections with their headings, decodes its embedded figures, and its full-page
screenshot is not blank.

`make test` installs chromium when it is missing; this test fails (it does not skip) if it
is not there, so a machine without it cannot pass the suite by accident."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from emocircuits.report import write_report

from study_fixture import study_dir  # noqa: F401  (the fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not path:
        pytest.fail(
            f"chromium is missing ({CHROMIUM}): `make test` installs it "
            "(apt-get install chromium); the report's browser test cannot run without it"
        )
    return path


@pytest.fixture(scope="module")
def loaded(study_dir, tmp_path_factory):  # noqa: F811
    """(page facts, console errors, external requests, screenshot PNG bytes)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: install the dev extra (`make test` does)")
    chromium = _chromium()
    root = tmp_path_factory.mktemp("browser")
    out = Path(shutil.copytree(study_dir, root / "study"))
    report = write_report(out)
    errors: list[str] = []
    external: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:")):
            r.continue_()
        else:
            external.append(url)
            r.abort()

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(root / "profile"),  # a new, empty user data dir
            executable_path=chromium,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            ctx.route("**/*", route)
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(report.as_uri(), wait_until="load")
            facts = page.evaluate(
                """() => ({
                  sections: Object.fromEntries(['rq1', 'rq2', 'rq3', 'rq4'].map(id => {
                    const s = document.getElementById(id);
                    const h = s && s.querySelector('h2');
                    return [id, s ? {tag: s.tagName, heading: h ? h.textContent : null,
                                     visible: s.getBoundingClientRect().height > 0} : null];
                  })),
                  images: Array.from(document.images).map(i => ({
                    complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                    scheme: i.src.split(':')[0]})),
                  height: document.documentElement.scrollHeight,
                })"""
            )
            shot = page.screenshot(full_page=True, type="png")
        finally:
            ctx.close()
    return facts, errors, external, shot


def test_no_console_errors_and_nothing_fetched(loaded):
    _, errors, external, _ = loaded
    assert errors == []
    assert external == []


def test_four_research_question_sections_with_headings(loaded):
    facts = loaded[0]
    for i, rq in enumerate(("rq1", "rq2", "rq3", "rq4"), 1):
        s = facts["sections"][rq]
        assert s is not None, f"no element with id {rq}"
        assert s["tag"] == "SECTION" and s["visible"]
        assert s["heading"] and s["heading"].startswith(f"RQ{i}: "), s


def test_embedded_figures_decode(loaded):
    images = loaded[0]["images"]
    assert images, "no image on the page"
    assert all(i["scheme"] == "data" for i in images)
    decoded = [i for i in images if i["complete"] and i["width"] > 0 and i["height"] > 0]
    assert decoded, images
    assert len(decoded) == len(images), [i for i in images if i not in decoded]


def test_full_page_screenshot_is_not_blank(loaded):
    from PIL import Image

    facts, _, _, shot = loaded
    img = Image.open(io.BytesIO(shot)).convert("RGB")
    assert img.width >= 1000 and img.height >= min(facts["height"], 16384) * 0.9
    small = img.resize((img.width // 4, img.height // 4))
    colours = small.getcolors(maxcolors=1 << 24)
    assert len(colours) > 500, len(colours)
    white = (
        max(count for count, c in colours if c == (255, 255, 255))
        if any(c == (255, 255, 255) for _, c in colours)
        else 0
    )
    assert white < 0.95 * small.width * small.height
