"""The search page in a real headless Chromium (Debian chromium + chromium-driver, Selenium).

Upload an image, see the top-k thumbnails with distances and labels, switch
the ranking mode and see the results change; pick a random database item.
Skipped (with the reason) only when chromium or its driver is not installed.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import serving_support as S

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

K = 12


def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not browser or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; scripts/setup.sh does it with QADWH_BROWSER=1)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed in this environment (pip install selenium)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--window-size=1280,1000", f"--user-data-dir={profile}",
    ):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def service(serving_api):
    return serving_api


def _query_row(fx) -> int:
    """A Fashion-MNIST row outside the index whose code matches no indexed code exactly,
    so the top k are at non-zero distances, which each mode weighs differently."""
    from qadwh_ray.data.fashion import load_fashion_mnist
    from qadwh_ray.model import encode, load_checkpoint

    images, _ = load_fashion_mnist()
    free = np.setdiff1d(np.arange(400), fx.ids)
    codes = encode(load_checkpoint(fx.checkpoint), images[free]).codes
    known = {c.tobytes() for c in fx.codes}
    for row, code in zip(free.tolist(), codes):
        if code.tobytes() not in known:
            return row
    raise AssertionError("every candidate query code is in the index")


def _wait(drv, cond, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            v = cond(drv)
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 — the DOM is changing under us
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last}); status: {_status(drv)}")


def _status(drv):
    try:
        return drv.find_element("id", "status").text
    except Exception:  # noqa: BLE001
        return "?"


def _results(drv):
    cards = drv.find_elements("css selector", "#results .result")
    return [(int(c.get_attribute("data-id")), float(c.get_attribute("data-distance")), c.text) for c in cards]


def _mode_results(drv, mode):
    box = drv.find_element("id", "results")
    if box.get_attribute("data-mode") != mode:
        return None
    res = _results(drv)
    return res if len(res) == K else None


def _thumbnails_loaded(drv):
    return drv.execute_script(
        "var im = document.querySelectorAll('#results .result img');"
        "if (!im.length) return false;"
        "for (var i = 0; i < im.length; i++) { if (!im[i].complete || im[i].naturalWidth === 0) return false; }"
        "return im.length;"
    )


def test_search_page_upload_and_mode_switch(service, browser, tmp_path):
    from qadwh_ray.data.fashion import load_fashion_mnist

    base, fx = service["base"], service["fx"]
    drv = browser
    drv.get(base + "/")
    # the service wants a bearer token: the page asks for it once
    box = _wait(drv, lambda d: d.find_element("id", "tokenbox") if d.find_element("id", "tokenbox").is_displayed() else None, what="the token prompt")
    assert box.is_displayed() and drv.find_element("id", "version").text == "…"
    drv.find_element("id", "token").send_keys(service["token"])
    drv.find_element("id", "token-save").click()
    _wait(drv, lambda d: d.find_element("id", "version").text == fx.version, what="the index version in the header")
    assert drv.find_element("id", "items").text == str(fx.ids.size)
    drv.find_element("id", "k").clear()
    drv.find_element("id", "k").send_keys(str(K))

    images, _ = load_fashion_mnist()
    query = tmp_path / "query.png"
    query.write_bytes(S.png(images[_query_row(fx)]))
    drv.find_element("id", "file").send_keys(str(query))

    qadwh = _wait(drv, lambda d: _mode_results(d, "qadwh"), what="QaDWH results after the upload")
    _wait(drv, _thumbnails_loaded, what="result thumbnails")
    assert drv.find_element("id", "query-image").get_attribute("src").startswith("blob:")
    assert all("id" in text and "d =" in text for _, _, text in qadwh)
    label_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    assert all(any(n in text for n in label_names) for _, _, text in qadwh)

    # the page shows what the API returns
    api = service["s"].post(base + "/v1/search", files={"image": ("q.png", query.read_bytes(), "image/png")}, data={"k": str(K), "mode": "hamming"}, timeout=60).json()

    drv.find_element("css selector", ".modes button[data-mode='hamming']").click()
    hamming = _wait(drv, lambda d: _mode_results(d, "hamming"), what="Hamming results after the mode switch")
    assert [r[0] for r in hamming] == api["ids"]
    assert [r[1] for r in hamming] == api["distances"]
    assert all(float(d).is_integer() for _, d, _ in hamming)  # plain Hamming distances
    assert [(i, d) for i, d, _ in hamming] != [(i, d) for i, d, _ in qadwh]  # switching the mode changes the ranking

    drv.find_element("css selector", ".modes button[data-mode='dwh']").click()
    dwh = _wait(drv, lambda d: _mode_results(d, "dwh"), what="DWH results")
    assert [(i, d) for i, d, _ in dwh] != [(i, d) for i, d, _ in hamming]
    _wait(drv, _thumbnails_loaded, what="thumbnails after the mode switch")


def test_search_page_random_item(service, browser):
    base, fx = service["base"], service["fx"]
    drv = browser
    drv.get(base + "/")
    _wait(drv, lambda d: d.find_element("id", "version").text == fx.version, what="the page")
    drv.find_element("id", "random").click()
    res = _wait(drv, lambda d: _mode_results(d, "qadwh") if "database item" in d.find_element("id", "query").text else None, what="results for a random item")
    qid = int(drv.find_element("id", "query").text.rsplit("#", 1)[1])
    assert qid in set(fx.ids.tolist())
    assert res[0][1] == 0.0  # an indexed item is at distance 0 from itself: the best distance is 0
    _wait(drv, lambda d: d.execute_script("var q = document.getElementById('query-image'); return q && q.complete && q.naturalWidth > 0;"), what="the query thumbnail")


def test_search_page_shows_the_datasets_class_names_and_colour_thumbnails(serving_rgb12, browser):
    """A 12-bit RGB index whose classes are not Fashion-MNIST's: the page names them and shows colour thumbnails."""
    fx = serving_rgb12
    drv = browser
    drv.get(fx["base"] + "/")
    _wait(drv, lambda d: d.find_element("id", "version").text == fx["version"], what="the page")
    assert drv.find_element("id", "bits").text == "12" and drv.find_element("id", "classes").text == str(len(fx["names"]))
    assert drv.find_element("id", "classes").get_attribute("title") == ", ".join(fx["names"])
    drv.find_element("id", "random").click()
    res = _wait(drv, lambda d: _mode_results(d, "qadwh") if "database item" in d.find_element("id", "query").text else None, what="results for a random item")
    assert all(text.rsplit("\n", 1)[-1] in fx["names"] for _, _, text in res)  # the last line of a card: its label
    _wait(drv, _thumbnails_loaded, what="result thumbnails")
    colour = drv.execute_script(
        "var im = document.querySelector('#results .result img');"
        "var c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;"
        "var g = c.getContext('2d'); g.drawImage(im, 0, 0);"
        "var p = g.getImageData(0, 0, c.width, c.height).data, n = 0;"
        "for (var i = 0; i < p.length; i += 4) { if (p[i] !== p[i + 1] || p[i + 1] !== p[i + 2]) n++; }"
        "return [c.width, n];"
    )
    assert colour[0] == 32 and colour[1] > 0  # an RGB thumbnail: some pixels are not grey
