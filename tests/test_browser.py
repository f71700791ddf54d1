"""The page in headless Chromium (Debian's chromium + chromedriver through Selenium) against a live server."""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
selenium = pytest.importorskip("selenium")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    from streamchar.config import load_config
    from streamchar.engine.engine import Engine
    from streamchar.serve.app import create_app

    cfg = load_config("tiny", ["engine.steps=1", "engine.guidance_conditions=1.0", "engine.guidance_ref_image=1.0",
                               "engine.guidance_ref_voice=1.0", "engine.compile=off"])  # fmt: skip
    engine = Engine.from_config(cfg)
    port = _free_port()
    config = uvicorn.Config(create_app(engine, serve_cfg=dataclasses.replace(cfg.serve, port=port)),
                            host="127.0.0.1", port=port, log_level="warning")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(timeout=10)


def _browser(*extra: str):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1000,800", *extra):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


def _wait(driver, script: str, seconds: float = 60.0):
    end = time.time() + seconds
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    state = driver.execute_script("return JSON.stringify(window.streamchar)")
    raise AssertionError(f"timed out waiting for {script!r}; page state: {state[:500]}")


def _canvas_image(driver) -> np.ndarray:
    from PIL import Image
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "stage").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_page_sends_text_and_plays_the_character(server, tmp_path):
    from selenium.webdriver.common.by import By

    url, engine = server
    driver = _browser()
    try:
        driver.get(url + "/?autostart=1")
        _wait(driver, "return window.streamchar.ready !== null")
        driver.find_element(By.ID, "text").send_keys("Hello from the browser, can you hear me?")
        driver.find_element(By.ID, "say").click()
        _wait(driver, "return window.streamchar.speakingChunks > 0 && window.streamchar.framesDrawn > 5")
        state = driver.execute_script("return window.streamchar")
        assert state["chunks"] >= 2 and state["audioSamples"] >= 2 * 7680 and not state["errors"]
        driver.save_screenshot(str(tmp_path / "page.png"))
        canvas = _canvas_image(driver)
        # the character is on the canvas: a varied picture whose colours match the reference image
        reference = engine.character().image.reshape(-1, 3).mean(0)
        assert canvas.std() > 20
        assert np.abs(canvas.reshape(-1, 3).mean(0) - reference).max() < 40
    finally:
        driver.quit()


def test_microphone_drives_the_character(server, tmp_path):
    from streamchar.config import resolve_asset_path

    url, _ = server
    wav = resolve_asset_path("checkpoints/tiny/characters/ben/voice.wav")
    driver = _browser("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-audio-capture={wav}")  # fmt: skip
    try:
        driver.get(url + "/?autostart=1&mode=audio")
        _wait(driver, "return window.streamchar.ready !== null && window.streamchar.ready.mode === 'audio'")
        _wait(driver, "return window.streamchar.micStarted === true")
        _wait(driver, "return window.streamchar.loudChunks >= 2 && window.streamchar.framesDrawn > 5")
        state = driver.execute_script("return window.streamchar")
        assert not state["errors"]
        driver.save_screenshot(str(tmp_path / "mic.png"))
        assert _canvas_image(driver).std() > 20
    finally:
        driver.quit()
