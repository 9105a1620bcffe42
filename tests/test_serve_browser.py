"""End to end: `compactvlm serve --tiny` in a subprocess, driven by headless Chromium (Debian's chromium +
chromium-driver through selenium; `bash scripts/setup_browser.sh` installs them). Uploads a bad file (a message
appears), then an image, asks, compares three methods and checks each method's answer and token count on the
page. Screenshot: artifacts/serve_screenshot.png (a CI artefact)."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[1] / "artifacts" / "serve_screenshot.png"
QUESTION = "what colour is the shirt ?"
METHODS = {"mlp2x_gelu": 64, "stf_k2e1": 16, "mlp2x_gelu+random:budget=16": 16}  # tiny model: 8 x 8 patches

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("Debian chromium + chromium-driver are not installed (run: bash scripts/setup_browser.sh)",
                allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed (run: bash scripts/setup_browser.sh)")
if importlib.util.find_spec("gradio") is None:  # the server imports it; this process does not need to
    pytest.skip("gradio is not installed (run: bash scripts/setup_browser.sh)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 45) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"compactvlm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"compactvlm serve did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def slug(label: str) -> str:
    from compactvlm.viz.app import slug as _slug

    return _slug(label)


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "compactvlm.cli", "serve", "--tiny", "--host", "127.0.0.1",
                                 "--port", str(port), "--repeats", "1"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=tmp_path)
    try:
        yield proc, f"http://127.0.0.1:{port}/", log
    finally:
        stop(proc)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1400,1800"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def expected_answers(image_path: Path) -> dict[str, str]:
    """What the server should show: the same seeded tiny model and methods, run here."""
    from compactvlm.data.images import load_image
    from compactvlm.testing import tiny_vlm
    from compactvlm.viz.app import MethodPool, format_answer

    pool = MethodPool(tiny_vlm(), repeats=1)
    img = load_image(image_path)
    return {lab: format_answer(pool.run(lab, img, QUESTION, max_new_tokens=16).answer) for lab in METHODS}


def test_serve_compares_methods_in_a_real_browser(server, browser, tmp_path):
    from skimage import data

    t0 = time.monotonic()
    proc, url, log = server
    image = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((96, 96)).save(image)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    want = expected_answers(image)  # while the server starts
    t_expected = time.monotonic() - t0
    wait_http(url, proc, log)
    print(f"expected answers after {t_expected:.1f} s, server up after {time.monotonic() - t0:.1f} s")

    drv = browser
    wait = WebDriverWait(drv, 40)
    drv.get(url)
    file_input = "#image-upload input[type=file]"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, file_input))

    def status() -> str:
        return drv.find_element(By.ID, "status").text

    # a bad upload gets a message, and the server keeps serving
    drv.find_element(By.CSS_SELECTOR, file_input).send_keys(str(bad))
    wait.until(lambda d: "Cannot use this file" in status())
    assert "not an image" in status() and proc.poll() is None
    drv.find_element(By.CSS_SELECTOR, "#image-upload button[aria-label=Clear]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, file_input))
    drv.find_element(By.CSS_SELECTOR, file_input).send_keys(str(image))
    wait.until(lambda d: "ready" in status())

    q = drv.find_element(By.CSS_SELECTOR, "#question textarea, #question input")
    q.clear()
    q.send_keys(QUESTION)
    from compactvlm.viz.app import UNTRAINED_MARK

    shown = {lab.text.strip(): lab for lab in drv.find_elements(By.CSS_SELECTOR, "#methods label")}
    # --tiny: every method's compressor is random, and the list says so
    assert all(text.endswith(UNTRAINED_MARK.strip()) for text in shown), list(shown)
    boxes = {text.removesuffix(UNTRAINED_MARK.strip()).rstrip(): el for text, el in shown.items()}
    assert set(METHODS) <= set(boxes)
    for lab, el in boxes.items():
        checked = el.find_element(By.CSS_SELECTOR, "input").is_selected()
        if checked != (lab in METHODS):
            el.click()
    drv.find_element(By.ID, "run").click()
    wait.until(lambda d: f"Compared {len(METHODS)} methods" in status())

    table = drv.find_element(By.ID, "results-table").text
    for lab, tokens in METHODS.items():
        s = slug(lab)
        stats = drv.find_element(By.ID, f"stats-{s}").text
        assert lab in stats and f"tokens: {tokens}" in stats and "TTFT:" in stats and "FLOPs:" in stats
        answer = drv.find_element(By.CSS_SELECTOR, f"#answer-{s} textarea").get_attribute("value")
        assert answer == want[lab]
        assert lab in table
        token_map = drv.find_element(By.CSS_SELECTOR, f"#map-{s} img")
        assert drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", token_map) > 0
    assert not drv.find_elements(By.ID, "stats-avgpool-k2") or not drv.find_element(By.ID, "stats-avgpool-k2").is_displayed()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(SCREENSHOT))
    shot = np.asarray(Image.open(SCREENSHOT))
    assert shot.shape[0] > 500 and shot.std() > 10  # a rendered page, not a blank one
    print(f"browser test body: {time.monotonic() - t0:.1f} s")
