"""The app in a real browser: headless Chromium, driven through WebDriver (Selenium).

Opens the page, samples, sends a sample to Interpolate, interpolates, visits every tab, and
saves one screenshot per tab under ``artifacts/browser/`` (the folder is printed). Skipped, with
the reason, where Chromium or its driver cannot be had (``apt-get install chromium
chromium-driver`` on Debian).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from somtok import paths
from somtok.prior.model import PriorConfig, SomPrior
from somtok.serve.app import SomtokApp, launch
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig

pytestmark = [pytest.mark.slow, pytest.mark.browser]

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SCREENSHOTS = paths.REPO_ROOT / "artifacts" / "browser"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1600",
)
WAIT_S = 90  # two busy CPU cores: a first request compiles and imports a fair amount


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium or chromedriver: apt-get install chromium chromium-driver")
    return browser, driver


def _models():
    """The shipped tokenizer and prior where both are there and match (real pictures in the
    screenshots), else a random-init tiny tokenizer and prior."""
    from somtok.errors import SomtokError
    from somtok.serve.app import load_models

    try:
        tokenizer, prior, _ = load_models(None, None)
    except SomtokError:
        prior = None
    if prior is not None:
        return tokenizer, prior
    torch.manual_seed(0)
    tokenizer = SomTokenizer(TokenizerConfig.from_preset("tiny")).eval()
    config = PriorConfig.from_preset(
        "tiny",
        tokenizer_id=tokenizer.tokenizer_id,
        codebook_size=tokenizer.codebook_size,
        latent_shape=tokenizer.config.latent_shape,
    )
    return tokenizer, SomPrior(config).eval()


@pytest.fixture(scope="module")
def url():
    """The app on a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(SomtokApp(*_models()), port=port, block=False)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="somtok-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    try:
        session = webdriver.Chrome(options=options, service=Service(driver))
    except WebDriverException as err:
        pytest.skip(f"Chromium would not start: {err.msg}")
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """A CIFAR-10 test image of the bundled sample as a 96 x 96 RGBA PNG: the page must
    conform it (RGB, 32 x 32), not refuse it."""
    from somtok.tokenizer.data import load_images

    pixels = load_images("sample", "test", 32, limit=8).images[7]  # (3, 32, 32)
    picture = Image.fromarray(np.moveaxis(np.array(pixels), 0, -1)).resize((96, 96))
    path = tmp_path_factory.mktemp("upload") / "photo.png"
    picture.convert("RGBA").save(path)
    return str(path)


class Page:
    """Small verbs over a WebDriver session on the somtok page."""

    def __init__(self, driver):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT_S)
        self.start = time.monotonic()

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def until(self, css: str, count: int = 1) -> list:
        """Wait for at least ``count`` visible elements matching ``css``."""
        self.wait.until(lambda _: len([e for e in self.find(css) if e.is_displayed()]) >= count)
        return self.find(css)

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        xpath = f"//button[@role='tab'][normalize-space()='{name}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath))
        self.driver.find_element(By.XPATH, xpath).click()

    def click(self, elem_id: str) -> None:
        self.until(f"#{elem_id}")[0].click()

    def upload(self, elem_id: str, path: str) -> None:
        self.wait.until(lambda _: self.find(f"#{elem_id} input[type=file]"))
        self.find(f"#{elem_id} input[type=file]")[0].send_keys(path)
        self.until(f"#{elem_id} img")

    def errors(self) -> list[str]:
        return [e.text for e in self.find(".toast-body") if e.is_displayed()]

    def shot(self, name: str) -> Path:
        print(f"{time.monotonic() - self.start:6.1f} s  {name}")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def test_sample_interpolate_and_every_tab_in_chromium(url, browser, photo):
    page = Page(browser)
    browser.get(url)
    page.until("#sample-run")

    # Sample, pick the second sample and send it to Interpolate as image A.
    page.click("sample-run")
    page.until("#sample-gallery img", count=8)
    page.until("#sample-gallery img")[1].click()
    page.until("#sample-picked img")
    shots = [page.shot("1-sample")]
    page.click("sample-to-a")
    page.until("#interpolate-a img")

    # Interpolate from the sample to an uploaded RGBA photo.
    page.upload("interpolate-b", photo)
    page.click("interpolate-run")
    page.until("#interpolate-frames img", count=2)
    page.wait.until(lambda _: "mean_pixel_change" in page.find("#interpolate-scores")[0].text)
    shots.append(page.shot("2-interpolate"))

    # A dataset example fills both inputs.
    before = page.find("#interpolate-b img")[0].get_attribute("src")
    page.until("#interpolate-examples tbody tr")[0].click()
    page.wait.until(lambda _: page.find("#interpolate-b img")[0].get_attribute("src") != before)

    page.tab("Map")
    page.until("#map-atlas img")
    page.until("#map-umatrix img")
    shots.append(page.shot("3-map"))

    page.tab("Tokenize")
    page.click("tokenize-run")  # no image yet: a message in the page, and the page lives on
    page.wait.until(lambda _: any("missing" in text for text in page.errors()))
    shots.append(page.shot("4-tokenize-error"))
    page.upload("tokenize-image", photo)
    page.click("tokenize-run")
    page.wait.until(
        lambda _: "dB" in page.find("#tokenize-psnr textarea")[0].get_attribute("value")
    )
    shots.append(page.shot("5-tokenize"))

    page.tab("Shift")
    page.upload("shift-image", photo)
    page.click("shift-run")
    page.until("#shift-shifted img")
    shots.append(page.shot("6-shift"))

    print(f"\nscreenshots: {SCREENSHOTS}")
    assert all(Image.open(p).size[0] >= 1000 for p in shots)
