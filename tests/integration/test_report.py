"""report.html of a real run: what it shows, and that it works in a real browser (headless Chromium).

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (.ci/setup-system.sh installs
them) and selenium (the test extra); without them it skips. Its full-page screenshot is kept in
``test-artifacts/report.png`` (``KPMS_JOB_TEST_ARTIFACTS`` sets the folder).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from jobs import ROOT, run_job, tiny_manifest

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The bundled recording with grid movies and figures on: every kind of media the page has."""
    tmp = tmp_path_factory.mktemp("report")
    manifest = tiny_manifest(tmp, outputs={"grid_movies": True},
                             fitting={"arhmm_iters": 10, "full_iters": 10, "save_every": 5})
    res = run_job("run", manifest)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "project"


class _Media(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.videos, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "video":
            self.videos.append(a["src"])
        elif tag == "a" and not a.get("href", "#").startswith("#"):
            self.links.append(a["href"])


def test_report_shows_the_verdict_the_figures_and_the_movies(project):
    html = (project / "report.html").read_text()
    media = _Media()
    media.feed(html)
    summary = (project / "summary.json").read_text()
    median = re.search(r'"median_duration_ms": ([0-9.]+)', summary).group(1)
    # the verdict comes first, with the median and the window
    verdict = html.index('id="verdict"')
    assert verdict < html.index('id="recordings"')
    assert re.search(rf"Median syllable duration {float(median):.0f} ms:\s+(inside|OUTSIDE) the target 300", html)
    # every figure the job made is shown, and only files that exist are referenced (relative paths)
    shown = set(media.images)
    for must in ("pca_scree.png", "kpms_job/syllable_frequencies.png", "kpms_job/duration_distribution.png",
                 "kpms_job/similarity_dendrogram.png", "kpms_job/fitting_progress.png",
                 "kpms_job_arhmm/fitting_progress.png"):
        assert must in shown, f"{must} is not in the report"
    assert any(p.startswith("QA/plots/") for p in shown)
    movies = sorted((project / "kpms_job" / "grid_movies").glob("syllable*.webm"))
    assert movies and len(media.videos) == len(movies)
    for ref in media.images + media.videos + media.links:
        assert not ref.startswith("/") and (project / ref).is_file(), f"{ref}: broken reference"
    assert "openfield_dlc_inference_example" in html and "Resolved manifest" in html
    log = re.search(r'The full log of the run: <a href="([^"]+)"', html).group(1)  # the run's own log
    assert log.startswith(".kpms-job/logs/") and "done  figures" in (project / log).read_text()
    assert "report.html" in (project / "summary.md").read_text()


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver (Debian packages chromium, chromium-driver; .ci/setup-system.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian driver, given by path: selenium's manager would try to download one
    return webdriver.Chrome(options=opts, service=Service(DRIVER))


def test_report_opens_in_a_real_browser(project):
    driver = _browser()
    try:
        driver.get((project / "report.html").as_uri())
        # lazy images load when scrolled to: ask for all of them now
        driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
        state = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = driver.execute_script("""
                const imgs = [...document.querySelectorAll('img')];
                const vids = [...document.querySelectorAll('video')];
                return {
                  pending: imgs.filter(i => !i.complete).length
                           + vids.filter(v => v.readyState < 1 && !v.error).length,
                  brokenImages: imgs.filter(i => i.complete && i.naturalWidth === 0).map(i => i.src),
                  brokenVideos: vids.filter(v => v.error || (v.readyState >= 1 && !(v.duration > 0)))
                                    .map(v => v.src + ': ' + (v.error ? v.error.code : 'no duration')),
                  images: imgs.length, videos: vids.length,
                  decodable: vids.filter(v => v.videoWidth > 0).length,
                };""")
            if state["pending"] == 0:
                break
            time.sleep(0.5)
        assert state["pending"] == 0, f"media still loading after 60 s: {state}"
        assert state["images"] >= 6 and state["videos"] >= 1, state
        assert not state["brokenImages"], f"images that do not load: {state['brokenImages']}"
        assert not state["brokenVideos"], f"movies the browser cannot play: {state['brokenVideos']}"
        assert state["decodable"] == state["videos"], state
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        out = Path(os.environ.get("KPMS_JOB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        out.mkdir(parents=True, exist_ok=True)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        (out / "report.png").write_bytes(base64.b64decode(shot["data"]))
        assert (out / "report.png").stat().st_size > 10_000
    finally:
        driver.quit()
