"""Drive the studio page in headless Chromium: load a scene, erase depth under a stroke, read the panels back.

Used by ``tests/test_studio_browser.py``, which also takes the documentation's screenshot with
it (``LABEL_MERGE_STUDIO_SCREENSHOT``). Uses the system's Chromium (``apt-get install
chromium``) through Playwright; Playwright's own browser download is never used.
"""

from __future__ import annotations

import io
import shutil
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from examples.studio_session import HATCH_GREYS

__all__ = ["StrokeResult", "chromium_path", "erase_depth_stroke"]

TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class StrokeResult:
    """What the page showed before and after the stroke (pictures as uint8 ``(h, w, 3)``)."""

    depth_before: np.ndarray
    depth_after: np.ndarray
    generated_before: np.ndarray
    generated_after: np.ndarray
    stroke: list[tuple[int, int]]  # label pixels (row, col) that were clicked
    scale: int  # display pixels per label pixel
    status: str
    seconds: float


def _picture(page, elem_id: str) -> np.ndarray:
    """The picture an image panel shows, fetched from the server by its ``src``."""
    src = page.locator(f"#{elem_id} img").first.get_attribute("src")
    response = page.request.get(src)
    assert response.ok, f"cannot fetch {src}: {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def _wait_for_new_src(page, elem_id: str, old: str | None) -> None:
    page.wait_for_function(
        """([id, old]) => { const img = document.querySelector(`#${id} img`);
                          return img && img.src && img.src !== old && img.complete; }""",
        arg=[elem_id, old],
        timeout=TIMEOUT_MS,
    )


def _uniform_present_pixels(depth: np.ndarray, scale: int, greys: set[int]) -> np.ndarray:
    """``(H, W)`` True where a label pixel is drawn as one flat colour that is not the hatching."""
    H, W = depth.shape[0] // scale, depth.shape[1] // scale
    blocks = depth[: H * scale, : W * scale, 0].reshape(H, scale, W, scale)  # (H, s, W, s)
    flat = blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))
    return flat & ~np.isin(blocks[:, 0, :, 0], list(greys))


def _choose_stroke(present: np.ndarray, length: int = 3, step: int = 3) -> list[tuple[int, int]]:
    """``length`` pixels ``step`` apart along a row, all present with present neighbours, nearest the centre."""
    H, W = present.shape
    best = None
    for row in range(2, H - 2):
        for col in range(2, W - 2 - step * (length - 1)):
            points = [(row, col + k * step) for k in range(length)]
            if all(present[r - 1 : r + 2, c - 1 : c + 2].all() for r, c in points):
                distance = abs(row - H / 2) + abs(col + step - W / 2)
                if best is None or distance < best[0]:
                    best = (distance, points)
    assert best is not None, "the scene shows no present depth to erase"
    return best[1]


def _click_label_pixel(page, elem_id: str, point: tuple[int, int], scale: int) -> None:
    """Click the centre of label pixel ``point`` on an image panel (which may be shown scaled, letterboxed)."""
    box = page.evaluate(
        """(id) => { const img = document.querySelector(`#${id} img`); const r = img.getBoundingClientRect();
                    return [r.left, r.top, r.width, r.height, img.naturalWidth, img.naturalHeight]; }""",
        elem_id,
    )
    left, top, width, height, natural_w, natural_h = box
    fit = min(width / natural_w, height / natural_h)  # object-fit: contain
    offset_x, offset_y = left + (width - natural_w * fit) / 2, top + (height - natural_h * fit) / 2
    row, col = point
    page.mouse.click(offset_x + (col + 0.5) * scale * fit, offset_y + (row + 0.5) * scale * fit)


def erase_depth_stroke(url: str, *, scale: int, screenshot: str | None = None) -> StrokeResult:
    """Open the studio at ``url``, erase depth with a 3-click stroke, and return the panels before and after.

    Args:
        url: The page (the app loads held-out scene 0 on opening).
        scale: Display pixels per label pixel of the session.
        screenshot: Save a screenshot of the whole page after the stroke to this PNG.
    """
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    greys = set(HATCH_GREYS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1150})
            page.goto(url, timeout=TIMEOUT_MS)
            _wait_for_new_src(page, "label-depth", None)
            _wait_for_new_src(page, "generated", None)
            depth_before, generated_before = _picture(page, "label-depth"), _picture(page, "generated")
            page.get_by_label("erase", exact=True).check()
            stroke = _choose_stroke(_uniform_present_pixels(depth_before, scale, greys))
            status = ""
            for point in stroke:
                old = page.locator("#label-depth img").first.get_attribute("src")
                _click_label_pixel(page, "label-depth", point, scale)
                _wait_for_new_src(page, "label-depth", old)
                expected = f"erased depth at ({point[0]}, {point[1]})"
                page.wait_for_function(
                    "([text]) => document.querySelector('#status').innerText.includes(text)",
                    arg=[expected],
                    timeout=TIMEOUT_MS,
                )
                status = page.locator("#status").inner_text()
            depth_after, generated_after = _picture(page, "label-depth"), _picture(page, "generated")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return StrokeResult(
        depth_before,
        depth_after,
        generated_before,
        generated_after,
        stroke,
        scale,
        status,
        time.perf_counter() - started,
    )
