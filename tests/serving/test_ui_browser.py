"""``seedx-agent ui`` in a real headless Chromium, driven by Playwright: upload, ask, boxes, generate, tabs.

One server for the module: ``python -m seedx_agent ui --model mini`` (the bundled miniature, so the planner is
the real ``ChatSeedX`` and the box comes from the model's own grounding) on a free loopback port, always
stopped again. The page may reach nothing but that server: any other request is aborted and fails the test.
Screenshots go to ``$SEEDX_TEST_ARTIFACTS/ui`` (else the test's temporary folder); the path is printed.
Skipped only where Chromium (``apt-get install chromium``) or Playwright is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from serving_helpers import free_port, log_tail, running, server_env

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("needs Chromium for the browser test: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (the dev extra)")
expect = sync_api.expect

MODEL = "mini"
TURN_MS = 180_000  # one agent turn or workflow on a loaded 2-core machine: generous, never a sleep
QUESTION = "Where is the red circle in #1?"
PROMPT = "Generate an image: a green triangle at the bottom left"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("SEEDX_TEST_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path_factory.mktemp("ui_artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nui screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ui_server")
    port = free_port()
    command = [sys.executable, "-m", "seedx_agent", "ui", "--model", MODEL, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--memory", str(folder / "memory"), "--out", str(folder / "out")]
    log = folder / "server.log"
    url = f"http://127.0.0.1:{port}"
    with running(command, env=server_env(GRADIO_ANALYTICS_ENABLED="False"), cwd=folder, log=log, ready_url=url):
        yield url
    assert "Traceback" not in log.read_text(errors="replace"), log_tail(log)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object, server: str) -> Iterator[object]:
    """A fresh page on the server; every request elsewhere is aborted and reported at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    outside: list[str] = []

    def only_the_server(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith((server, "data:", "blob:")):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", only_the_server)
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    opened.goto(server)
    expect(opened.locator("#chat-input textarea")).to_be_visible()
    yield opened
    context.close()
    assert not outside, f"the page tried to reach other hosts: {outside}"


def scene_png(folder: Path) -> Path:
    """A miniature-world picture: a large red circle in the middle and a green triangle (a box to find)."""
    from seedx_agent.miniature import world

    scene = world.Scene(
        shapes=(world.Shape("circle", "red", "large", (1, 1)), world.Shape("triangle", "green", "large", (0, 2))),
        background="white",
    )
    path = folder / "scene.png"
    world.render(scene, 64).save(path)
    return path


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def overlay_box(page: object) -> tuple[int, int, int, int]:
    """The drawn box of the overlay: the bounding box of the visible pixels of its mask image."""
    masks = page.locator("#boxes img.mask")  # type: ignore[attr-defined]
    expect(masks).to_have_count(1)
    mask = Image.open(io.BytesIO(fetch(masks.first.get_attribute("src")))).convert("RGBA")
    box = mask.getchannel("A").getbbox()
    assert box is not None, "the overlay mask is empty"
    return box


def test_chat_upload_ask_boxes_generate(page: object, artifacts: Path, tmp_path: Path) -> None:
    # upload a picture: stored in the memory, handle #1, listed among the recent pictures
    page.locator("#current-image input[type=file]").set_input_files(str(scene_png(tmp_path)))  # type: ignore[attr-defined]
    info = page.locator("#current-info")  # type: ignore[attr-defined]
    expect(info).to_contain_text("#1")
    expect(page.locator("#recent img")).to_have_count(1)  # type: ignore[attr-defined]

    # ask: the miniature plans a ground call, its box is drawn over the picture, the answer is shown
    chat = page.locator("#chat")  # type: ignore[attr-defined]
    textbox = page.locator("#chat-input textarea")  # type: ignore[attr-defined]
    textbox.fill(QUESTION)
    textbox.press("Enter")
    expect(chat).to_contain_text(QUESTION)
    expect(chat.get_by_text("Steps", exact=True)).to_be_visible(timeout=TURN_MS)  # the turn is over
    expect(chat).to_contain_text("#2 boxes for 'the red circle'")  # ground's annotated copy, shown inline
    expect(page.locator("#boxes").get_by_role("button", name="the red circle")).to_be_visible()  # type: ignore[attr-defined]
    base = page.locator("#boxes img.base-image")  # type: ignore[attr-defined]
    width, height = Image.open(io.BytesIO(fetch(base.get_attribute("src")))).size
    x1, y1, x2, y2 = overlay_box(page)
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height and (x2 - x1) * (y2 - y1) < width * height
    answer = chat.locator(".bot").last.inner_text().strip()
    assert answer, "no answer text"
    page.screenshot(path=str(artifacts / "1_ground.png"), full_page=True)  # type: ignore[attr-defined]

    # generate (not about the current picture): the new picture is shown inline and becomes the current one
    page.get_by_label("a message that names no picture is about the current one").uncheck()  # type: ignore[attr-defined]
    textbox.fill(PROMPT)
    textbox.press("Enter")
    expect(chat).to_contain_text("generated, seed", timeout=TURN_MS)
    expect(chat.get_by_text("Steps", exact=True)).to_have_count(2, timeout=TURN_MS)
    picture = chat.locator("img").last
    expect(picture).to_be_visible()
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0"), "the generated picture did not load"
    generated = Image.open(io.BytesIO(fetch(picture.get_attribute("src"))))
    assert min(generated.size) >= 64
    expect(info).to_contain_text("#3")  # #2 is ground's annotated copy
    page.screenshot(path=str(artifacts / "2_generate.png"), full_page=True)  # type: ignore[attr-defined]

    # the recent pictures: newest first; a click on the uploaded one (last) makes it current again
    recent = page.locator("#recent img")  # type: ignore[attr-defined]
    expect(recent).to_have_count(3)
    recent.last.click()
    expect(info).to_contain_text("#1")

    # a mistake is one line from the library, not a stack trace
    textbox.fill("What is in #9?")
    textbox.press("Enter")
    expect(page.get_by_text("#9 names no picture of this chat")).to_be_visible()  # type: ignore[attr-defined]
    assert "Traceback" not in page.content()  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "3_error.png"))  # type: ignore[attr-defined]


@pytest.mark.slow  # a second server start (about 25 s) plus two workflows; test_ui.py covers their handlers
def test_story_and_slides_tabs(page: object, artifacts: Path) -> None:
    page.get_by_role("tab", name="Story").click()  # type: ignore[attr-defined]
    page.locator("#premise textarea").fill("a red circle meets a blue square")  # type: ignore[attr-defined]
    beats = page.get_by_label("number input for Beats")  # type: ignore[attr-defined]
    beats.fill("2")
    beats.press("Enter")
    page.locator("#story-run").click()  # type: ignore[attr-defined]
    status = page.locator("#story-status")  # type: ignore[attr-defined]
    expect(status).to_contain_text("Beat 1 of 2", timeout=TURN_MS)  # the gallery fills beat by beat
    expect(status).to_contain_text("Done", timeout=TURN_MS)
    expect(page.locator("#story-gallery img")).to_have_count(2)  # type: ignore[attr-defined]
    link = page.locator("#story-files a[download='storyboard.zip']")  # type: ignore[attr-defined]
    expect(link).to_be_visible()
    with zipfile.ZipFile(io.BytesIO(fetch(link.get_attribute("href")))) as archive:
        names = set(archive.namelist())
    assert {"storyboard.html", "manifest.json", "beat_000.png", "beat_001.png"} <= names
    page.screenshot(path=str(artifacts / "4_story.png"), full_page=True)  # type: ignore[attr-defined]

    page.get_by_role("tab", name="Slides").click()  # type: ignore[attr-defined]
    page.locator("#topic textarea").fill("shapes and colours")  # type: ignore[attr-defined]
    count = page.get_by_label("number input for Slides")  # type: ignore[attr-defined]
    count.fill("2")
    count.press("Enter")
    page.locator("#slides-run").click()  # type: ignore[attr-defined]
    expect(page.locator("#slides-status")).to_contain_text("Done", timeout=TURN_MS)  # type: ignore[attr-defined]
    expect(page.locator("#slides-gallery img")).to_have_count(2)  # type: ignore[attr-defined]
    deck = page.locator("#slides-file a[download='deck.pptx']")  # type: ignore[attr-defined]
    expect(deck).to_be_visible()
    assert fetch(deck.get_attribute("href"))[:2] == b"PK"  # a .pptx is a zip
    page.screenshot(path=str(artifacts / "5_slides.png"), full_page=True)  # type: ignore[attr-defined]
