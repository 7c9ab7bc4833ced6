"""The HTML report, checked as a person would: parsed for what it holds, and rendered in
headless Chromium (Debian's `chromium`) and looked at through its screenshot."""

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread
from test_report import PRECISIONS, XSS, measured, sample_results

from quantbench.report import write_html
from quantbench.report.html import render_html
from quantbench.results import Result, RunSpec

# Tags the report itself writes; anything else would have come from the input.
OURS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "div", "span",
        "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "details",
        "summary", "ul", "li", "b", "pre"}
ERROR_PAYLOAD = '<img src=x onerror="document.title=\'pwned\'">'
PASS_RGB, FAIL_RGB, BANNER_RGB = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E), (0xFF, 0xE0, 0x8A)


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.text = set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def hostile_results():
    """Sample results plus input that tries to inject markup everywhere a string is shown,
    and a model whose nf4 is too big, so that a FAIL check is on the page."""
    evil = measured("nf4", 110, 13.0, 50.0, model=XSS)
    evil.versions = {"torch": "<b>2.13</b>"}
    failing = [measured("fp16", 270, 12.0, 60.0, model="big-nf4"),
               measured("nf4", 200, 12.5, 50.0, model="big-nf4")]
    broken = Result(RunSpec(XSS, "int8"), error=ERROR_PAYLOAD)
    return [*sample_results(), evil, *failing, broken]


def test_every_input_string_is_escaped():
    html = render_html(hostile_results(), source="<i>results</i>.jsonl")
    parsed = Collector()
    parsed.feed(html)
    assert parsed.tags <= OURS and "script" not in parsed.tags and "i" not in parsed.tags
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert len(parsed.images) == 4
    text = "".join(parsed.text)
    for shown in (XSS, ERROR_PAYLOAD, "<b>2.13</b>", "<i>results</i>.jsonl"):
        assert shown in text  # shown as text, to the letter


def test_html_is_self_contained_and_shows_everything():
    html = render_html(sample_results())
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for precision in PRECISIONS:
        assert f"<td>{precision}</td>" in html
    for section in ("Summary", "Checks", "Charts", "Errors", "Other runs", "Environment"):
        assert f"<h2>{section}</h2>" in html
    assert 'class="banner"' in html and "tinyllama-1.1b-arch" in html
    assert "2.13.0" in html and "2025-01-02T03:04:05+00:00" in html


def test_only_errors_and_random_weights_render_without_crashing(tmp_path):
    results = [r for r in sample_results() if r.random_weights or r.error]
    results.append(Result(RunSpec("m", "nf4"), error="", metrics={"junk": "text"}))
    path = write_html(results, tmp_path / "sub" / "r.html")
    html = path.read_text()
    assert "out of memory" in html and "no data in these results" in html
    assert "<h2>Summary</h2>" in render_html([])


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (CI must run: apt-get install -y chromium)")
    pytest.skip("headless Chromium not installed (apt-get install -y chromium)")


def headless(browser, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, *flags, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def pixels_near(image, rgb, tolerance=8):
    target = np.array(rgb) / 255
    return int((np.abs(image[:, :, :3] - target) <= tolerance / 255).all(axis=2).sum())


def test_chromium_renders_the_report_as_a_person_sees_it(tmp_path):
    browser = chromium()
    page = write_html(hostile_results(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    done = headless(browser, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    image = imread(shot)
    assert image.shape[:2] == (2000, 1280)
    ink = (image[:, :, :3] < 0.9).any(axis=2).mean()
    assert 0.05 < ink < 0.9  # a page with text and tables, neither blank nor a solid block
    # the PASS and FAIL badges and the random-weights banner are on screen, in their colours
    assert pixels_near(image, PASS_RGB) > 300
    assert pixels_near(image, FAIL_RGB) > 300
    assert pixels_near(image, BANNER_RGB) > 5000
    # no injected markup ran: the DOM after loading has no script and its title is ours
    dom = headless(browser, "--dump-dom", page.as_uri()).stdout
    assert "<title>quantbench report</title>" in dom and "<script" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
