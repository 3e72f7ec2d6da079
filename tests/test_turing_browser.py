"""Visual Turing test end to end in a real headless browser (issue 29).

Debian's chromium + chromium-driver driven by selenium (the driver path is given, so Selenium Manager never
downloads anything). The server runs as `meddiff turing-test serve` on a free loopback port; a rater rates 10
images by keyboard; the server is killed mid-study (an answer given while it is down is retried by the page),
restarted, the tab reloaded (the rater resumes where they were), one answer changed, the study finished and the
score file checked. Skips, naming the missing package, when chromium, chromium-driver, selenium or flask is absent
(`.ci/run` installs the Debian packages when it runs as root).
"""

import json
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

from meddiff.tasks.turing import create_study, load_manifest, write_score

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


def _require():
    pytest.importorskip("flask", reason="browser test needs the Python package flask (pip install flask)")
    pytest.importorskip("selenium", reason="browser test needs the Python package selenium (pip install selenium)")
    if CHROMIUM is None:
        pytest.skip("browser test needs the Debian package chromium (apt-get install chromium chromium-driver)")
    if CHROMEDRIVER is None:
        pytest.skip("browser test needs the Debian package chromium-driver (apt-get install chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(study: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "meddiff.cli.main", "turing-test", "serve", str(study),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown
        proc.wait(timeout=10)


def _driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", "--window-size=900,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class _Served:
    """`meddiff turing-test serve STUDY` on a free loopback port and a headless browser on it (``driver``, ``wait``
    up to 20 s, ``url``); ``restart`` starts the server again after a kill. On leaving the ``with`` block the
    browser quits and the server is killed."""

    def __init__(self, study: Path, tmp_path: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.study, self.port, self.log = study, _free_port(), tmp_path / "server.log"
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = _start_server(study, self.port, self.log)
        try:
            self.driver = _driver(tmp_path / "profile")
        except BaseException:
            _kill(self.server)
            raise
        self.wait = WebDriverWait(self.driver, 20)

    def restart(self) -> None:
        self.server = _start_server(self.study, self.port, self.log)

    def __enter__(self) -> "_Served":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.driver.quit()
        finally:
            _kill(self.server)


def test_rate_by_keyboard_with_a_server_restart(tmp_path, monkeypatch):
    _require()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", images=rng.integers(0, 256, (8, 20, 20), dtype=np.uint8))
    np.save(tmp_path / "fake.npy", rng.uniform(0, 1, (8, 1, 20, 20)).astype(np.float32))
    study = tmp_path / "study"
    create_study(tmp_path / "real.npz", tmp_path / "fake.npy", study, n=10, seed=1)
    truth = {item["id"]: item["kind"] for item in load_manifest(study)["items"]}
    flip = {"real": "synthetic", "synthetic": "real"}
    with _Served(study, tmp_path) as served:
        driver, wait = served.driver, served.wait

        def begin():
            driver.get(served.url)
            name = wait.until(lambda d: d.find_element(By.ID, "rater"))
            assert not driver.find_element(By.ID, "viewer").is_displayed()  # no image before the name
            name.clear()
            name.send_keys("Dr Who", Keys.ENTER)
            wait.until(lambda d: d.find_element(By.ID, "viewer").is_displayed()
                       and d.find_element(By.ID, "progress").get_attribute("data-answered"))

        def answered() -> int:
            return int(driver.find_element(By.ID, "progress").get_attribute("data-answered") or -1)

        def current_id() -> str:
            return driver.find_element(By.ID, "img").get_attribute("src").rstrip("/").split("/image/")[1]

        plan = {}  # image id -> the label given (right for the first 7 answers, wrong for the rest)

        def rate(count_before: int, *, confirm: bool = True):
            image_id = current_id()
            label = truth[image_id] if count_before < 7 else flip[truth[image_id]]
            plan[image_id] = label
            ActionChains(driver).send_keys("r" if label == "real" else "s", str(1 + count_before % 5),
                                           Keys.ENTER).perform()
            if confirm:
                wait.until(lambda d: answered() == count_before + 1)

        begin()
        for i in range(5):
            rate(i)
        _kill(served.server)  # mid-study; the next answer waits in the page and is retried
        rate(5, confirm=False)
        wait.until(lambda d: "Not saved yet" in d.find_element(By.ID, "status").text)
        served.restart()
        wait.until(lambda d: answered() == 6)
        driver.get("about:blank")  # the tab is closed and reopened: the rater resumes where they were
        begin()
        wait.until(lambda d: answered() == 6)
        assert driver.find_element(By.ID, "progress").get_attribute("data-position") == "6"
        rate(6)
        # back one image and change that answer: both are logged, the last counts
        ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
        changed = current_id()
        assert changed in plan
        plan[changed] = flip[plan[changed]]
        ActionChains(driver).send_keys("r" if plan[changed] == "real" else "s", "5", Keys.ENTER).perform()
        wait.until(lambda d: current_id() not in plan)
        for i in range(7, 10):
            rate(i)
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
    result = write_score(study)
    saved = json.loads((study / "score.json").read_text())
    correct = sum(plan[i] == truth[i] for i in plan)
    assert len(plan) == 10 and saved["raters"] == ["Dr Who"] and saved["answers_logged"] == 11
    assert saved["pooled"]["n"] == 10 and saved["pooled"]["correct"] == correct == result["pooled"]["correct"]
    assert saved["re_answered"] == [{"rater": "Dr Who", "id": changed, "times": 2}]
    assert (study / "report.html").is_file()


def test_volumes_scroll_and_three_planes(tmp_path, monkeypatch):
    """3D studies: the stack scrolls by keyboard, P shows the three planes, and an answer is saved."""
    _require()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("SE_OFFLINE", "true")
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        np.save(tmp_path / f"{name}.npy", rng.uniform(0, 1, (5, 1, 9, 12, 10)).astype(np.float32))
    study = tmp_path / "study"
    create_study(tmp_path / "real.npy", tmp_path / "fake.npy", study, n=10)
    with _Served(study, tmp_path) as served:
        driver, wait = served.driver, served.wait
        driver.get(served.url)
        wait.until(lambda d: d.find_element(By.ID, "rater")).send_keys("vol", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "progress").get_attribute("data-answered") == "0")
        src = lambda: driver.find_element(By.ID, "img").get_attribute("src")  # noqa: E731
        assert src().endswith("/4") and driver.find_element(By.ID, "slicenum").text == "slice 5 / 9"
        ActionChains(driver).send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN).perform()
        wait.until(lambda d: src().endswith("/6"))
        ActionChains(driver).send_keys("p").perform()
        wait.until(lambda d: src().split("/image/")[1].count("/") == 0)
        assert not driver.find_element(By.ID, "stack").is_displayed()
        assert driver.execute_script("return document.getElementById('img').naturalWidth") == 12 + 4 + 10 + 4 + 10
        ActionChains(driver).send_keys("s", "2", Keys.ENTER).perform()
        wait.until(lambda d: d.find_element(By.ID, "progress").get_attribute("data-answered") == "1")
    assert len((study / "answers.jsonl").read_text().splitlines()) == 1
