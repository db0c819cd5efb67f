"""The labelling page in a real browser (Debian's headless Chromium through chromedriver) against a real
shadowd on Ray Serve: the page serves the queue the daemon fills, two browser sessions label at once, one
item by keyboard only, and the labels reach the daemon and join their pairs with their provenance.

Also takes the screenshot the README shows (docs/annotate-page.png; replaced by `make screenshot`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shadowd.flywheel.annotate import WorkQueue
from shadowd.launcher import wait_for_pairs
from shadowd.serving.annotate_web import serve_page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "annotate-page.png"
N_REQUESTS = 40
# Every request carries these: whichever item the page shows, its features are hostile.
HOSTILE = {
    "hour": 3,
    "note": "<img src=x onerror=\"document.title='pwned';window.__pwned=1\">",
    "user": "[/x] <script>window.__pwned=2</script>",
}


def _chrome(profile: Path) -> Any:
    """Headless Chromium with its own profile (its own sessionStorage: another browser session)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are missing: run `make system-deps`"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def browsers() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for b in made:
        b.quit()


def daemon_with_items(shadowd_app: Any, **annotations: Any) -> Any:
    """A daemon on two 10-class toy models that disagree a lot, digits from scikit-learn as inputs, and
    N_REQUESTS requests sent (features HOSTILE); ``annotations`` adds to its annotations config."""
    from sklearn.datasets import load_digits

    def toy(name: str, seed: int) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "python",
            "target": "shadowd.testing:ToyClassifier",
            "kwargs": {"n_features": 64, "n_classes": 10, "seed": seed, "temperature": 30.0},
            "input_shape": [64],
        }

    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy("digits-prod", 0), "candidate": toy("digits-cand", 5)},
            "shadow": {"sample_share": 1.0, "candidate_timeout_s": 5.0},
            "slices": [{"name": "night", "where": {"field": "hour", "op": "lt", "value": 6}}],
            "annotations": {
                "evaluation": {"share": 0.5},
                "web": {"port": 0},
                "rotation": {
                    "name": "digits",
                    "annotators": ["ana", "bo", "cy"],
                    "shift_s": 28800,
                    "start": "2026-01-05T09:00:00Z",
                },
                **annotations,
            },
        }
    )
    digits = load_digits().data
    with requests.Session() as s:
        for i in range(N_REQUESTS):
            body = {"inputs": digits[i].tolist(), "features": HOSTILE}
            r = s.post(f"{daemon.url}/predict", json=body, headers={"X-Request-ID": f"page-{i}"}, timeout=30)
            assert r.status_code == 200, r.text
    wait_for_pairs(daemon.url, N_REQUESTS, timeout_s=60, token=daemon.token)
    return daemon


def report(daemon: Any) -> dict[str, Any]:
    r = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=30)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def wait_queued(daemon: Any, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        backlog = (report(daemon)["annotations"] or {}).get("backlog") or {}
        if backlog.get("items", 0) >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {at_least} items queued: {report(daemon)['annotations']}")


def _shown(browser: Any, not_: str | None = None, timeout_s: float = 30) -> str:
    """The request id of the item the page shows (waiting for one other than ``not_``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(b: Any) -> str | bool:
        box = b.find_element(By.ID, "item")
        rid = box.get_attribute("data-request-id")
        return rid if box.is_displayed() and rid and rid != not_ else False

    return str(WebDriverWait(browser, timeout_s).until(ready))


def _saved(browser: Any, count: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "saved").get_attribute("data-count") == str(count))


def test_two_browsers_label_through_the_page_and_the_labels_join(
    shadowd_app: Any, browsers: list[Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    daemon = daemon_with_items(shadowd_app)
    wait_queued(daemon, 6)
    before = report(daemon)
    labels_before = dict(before["annotations"]["labels"])
    server = serve_page(daemon.config)  # beside the daemon, on its data dir (the spool is the queue)
    try:
        url = f"{server.url}#token={daemon.token}"
        a = _chrome(tmp_path / "chromium-a")
        browsers.append(a)
        a.get(url)
        first = _shown(a)
        assert "token" not in a.current_url  # the token left the address bar (and was never sent)

        # Hostile feature values are shown as text and run nothing.
        cells = [td.text for td in a.find_elements(By.CSS_SELECTOR, "#features td")]
        assert HOSTILE["note"] in cells and HOSTILE["user"] in cells
        assert a.execute_script("return window.__pwned") is None and a.title == "shadowd annotate"
        assert not a.find_elements(By.CSS_SELECTOR, "#features img, #features script")
        # Why it was queued, its lane, slices and age; both models with probabilities; the picture.
        why = a.find_element(By.ID, "why").text
        assert "evaluation sample" in why and "night" in why and "age" in why, why
        answers = a.find_element(By.ID, "answers").text
        assert "digits-prod" in answers and "digits-cand" in answers
        assert a.find_elements(By.CSS_SELECTOR, "#inputs canvas.input-image")
        status = a.find_element(By.ID, "status").text
        assert "backlog" in status and "oldest" in status, status
        # Taken every run; the README's copy is replaced only when asked (`make screenshot`) or missing,
        # so a test run leaves the work tree as it found it.
        shot = tmp_path / "annotate-page.png"
        a.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SHADOWD_WRITE_SCREENSHOT") or not SCREENSHOT.exists():
            shutil.copyfile(shot, SCREENSHOT)

        # A second browser, open at the same time, is served a different item.
        b = _chrome(tmp_path / "chromium-b")
        browsers.append(b)
        b.get(url)
        other = _shown(b)
        assert other != first

        # Browser A: a class by mouse, then one by keyboard only, then bad data by keyboard.
        labelled: dict[str, int | str] = {}
        a.find_element(By.CSS_SELECTOR, "#class-buttons button[data-answer='3']").click()
        _saved(a, 1)
        labelled[first] = 3
        second = _shown(a, not_=first)
        ActionChains(a).send_keys("7").perform()  # no click: the key alone labels it
        _saved(a, 2)
        labelled[second] = 7
        third = _shown(a, not_=second)
        ActionChains(a).send_keys("b").perform()
        _saved(a, 3)
        labelled[third] = "bad_data"
        # Browser B labels its item by keyboard too.
        ActionChains(b).send_keys("1").perform()
        _saved(b, 1)
        labelled[other] = 1
        assert len(labelled) == 4  # four different items: no item went to both browsers
        after_a = _shown(a, not_=third)
        after_b = _shown(b, not_=other)
        assert after_a != after_b and not {after_a, after_b} & set(labelled)
    finally:
        for br in browsers:
            br.quit()
        browsers.clear()
        server.close()
        server.queue.close()

    # The labels reached the daemon (labels channel -> the hub's join) and joined their pairs.
    deadline = time.monotonic() + 60
    while True:
        rep = report(daemon)
        got = rep["annotations"]["labels"]
        grown = {k: got.get(k, 0) - labels_before.get(k, 0) for k in ("joined", "skipped")}
        if grown == {"joined": 3, "skipped": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert grown == {"joined": 3, "skipped": 1}, got
    assert got.get("unknown", 0) == labels_before.get("unknown", 0)  # every label found its pair
    # Evaluation-lane labels are usable by the gate; the bad-data one is left out, saying why.
    overall = rep["overall"]["labels"]
    assert overall["by_channel"].get("evaluation", 0) >= 1, overall
    assert overall["excluded"].get("marked bad data") == 1, overall

    # Those items are not served again: a fresh reader of the rotation's queue never gets them.
    queue = WorkQueue(daemon.config)
    try:
        seen = []
        for _ in range(2 * N_REQUESTS):  # a session per item, each held: every item left, once
            held = queue.lease(queue.open_session("check"), timeout_s=1.0)
            if held is None:
                break
            seen.append(held.item.request_id)
        assert seen and len(seen) == len(set(seen))
        assert not set(seen) & set(labelled), seen
    finally:
        queue.close()
