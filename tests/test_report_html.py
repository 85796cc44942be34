"""The HTML evaluation report: escaping, order, links, missing keys, the plot, atomic writes, a real browser."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from browser import picture_states, screenshot
from matplotlib.image import imread, imsave

from review import report_html
from review.report_html import metrics_plot, relative_link, render_index, render_report, worst_first, write_html

EVIL = "<img src=x onerror=alert(1)>"
EVIL_QUOTE = '"><script>alert(2)</script>'


def scores(dice: float | None, nsd: float | None = None, hd95: float | None = None, status: str = "both") -> dict:
    return {"dice": dice, "nsd": nsd, "hd95_mm": hd95, "status": status}


def sample_report() -> dict:
    """Three scored cases (one named to inject markup), one error, one missing prediction."""
    detection = {"truth": 2, "detected": 1, "missed": 1, "false": 1, "tumours": []}
    statistics = {
        "truth": {"case": "case_bad", "pancreas_ml": 71.25, "tumour_ml": 3.5, "tumours": 2, "touches_edge": False},
        "prediction": {"pancreas_ml": 64.0, "tumour_ml": 1.25, "tumours": 2, "touches_edge": True},
    }
    cases = {
        "case_good": {
            "pancreas": scores(0.91, 0.95, 2.0),
            "pancreas_label1": scores(0.88),
            "tumour": scores(None, None, None, "absent"),
        },
        "case_bad": {
            "pancreas": scores(0.42, 0.5, 14.25),
            "pancreas_label1": scores(0.40),
            "tumour": scores(0.3, 0.25, 9.5),
            "tumour_detection": detection,
            "statistics": statistics,
        },
        EVIL: {"pancreas": scores(0.75, 0.8, 4.0), "pancreas_label1": scores(0.7), "tumour": scores(0.0, 0.0, None)},
    }
    region = {
        "dice": {"mean": 0.69, "median": 0.75, "n": 3, "n_absent": 0},
        "hd95_mm": {"mean": 6.75, "n_undefined": 1},
    }
    return {
        "cases": cases,
        "summary": {
            "pancreas": region,
            "tumour": {"dice": {"mean": 0.15, "n": 2, "n_absent": 1}},
            "tumour_detection": {
                "sensitivity": 0.5,
                "tumours": 2,
                "detected": 1,
                "false": 1,
                "false_per_case": 0.333,
                "case_sensitivity": 1.0,
                "positive_cases": 2,
                "case_specificity": 0.0,
                "by_diameter_mm": {"<10": {"truth": 1, "detected": 0, "sensitivity": 0.0}, "10-20": {"truth": 1}},
            },
        },
        "errors": {"case_broken": f"case_broken: prediction grid differs {EVIL}"},
        "missing_predictions": ["case_absent"],
        "regions": {"pancreas": [1, 2], "pancreas_label1": [1], "tumour": [2]},
        "nsd_tolerance_mm": {"pancreas": 2.0, "pancreas_label1": 2.0, "tumour": 2.0},
    }


class Page(HTMLParser):
    """What a browser would see: tags with their attributes, the text of each ``td.case`` cell, all text but CSS."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.case_cells: list[str] = []
        self.text: list[str] = []
        self._in_case = self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_case = tag == "td" and dict(attrs).get("class") == "case"
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_case = self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            return
        self.text.append(data)
        if self._in_case:
            self.case_cells.append(data)

    def links(self) -> list[str]:
        return [v for _, a in self.tags for k, v in a.items() if k in ("href", "src") and v is not None]


def tiny_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.0, 1.0, 48 * 64).reshape(48, 64)
    imsave(path, np.stack([ramp, np.roll(ramp, 16 * seed, axis=1), 1.0 - ramp], axis=-1))
    return path


def render_in(folder: Path, report: dict | None = None) -> Path:
    """The sample report with its plot and two pictures (one for the malicious case id) in ``folder``."""
    report = sample_report() if report is None else report
    tiny_png(folder / "pictures" / "case bad.png", 1)
    tiny_png(folder / "pictures" / "evil #1.png", 2)
    metrics_plot(report, folder / "metrics.png")
    text = render_report(
        report,
        title="Evaluation: fold 0",
        pictures={"case_bad": "pictures/case bad.png", EVIL: "pictures/evil #1.png", "case_good": "../escape.png"},
        plot="metrics.png",
        provenance={"run": "runs/fold0", "config": EVIL_QUOTE, "versions": "pancreas-seg 0.1, numpy 2.4"},
    )
    return write_html(folder / "report.html", text)


def test_markup_in_case_ids_errors_and_config_shows_as_text():
    text = render_report(sample_report(), title=EVIL, pictures={EVIL: "p.png"}, plot=None, provenance={"c": EVIL_QUOTE})
    page = Page(text)
    assert "<img src=x" not in text and "<script" not in text
    assert not [a for tag, a in page.tags if tag == "img" and a.get("src") == "x"]
    assert "script" not in [tag for tag, _ in page.tags]
    shown = "".join(page.text)
    assert EVIL in page.case_cells and f"case_broken: prediction grid differs {EVIL}" in shown and EVIL_QUOTE in shown
    alts = [a.get("alt") for tag, a in page.tags if tag == "img"]
    assert alts == [f"case {EVIL}"]  # the quote-escaped attribute parses back to the whole id
    assert 'alt="case &lt;img src=x onerror=alert(1)&gt;"' in text


def test_page_is_self_contained():
    text = render_report(sample_report(), title="t", pictures={}, plot="metrics.png", provenance={})
    lowered = text.lower()
    assert text.startswith("<!DOCTYPE html>") and lowered.rstrip().endswith("</html>")
    for outside in ("http:", "https:", "//", "@import", "url(", "<script", "<link", "@font-face"):
        assert outside not in lowered.replace("<!doctype html>", ""), outside
    policy = [a.get("content") for tag, a in Page(text).tags if tag == "meta" and a.get("http-equiv")]
    assert policy == [report_html.CSP] and "default-src 'none'" in policy[0]  # no script would run if one slipped in


def test_cases_worst_first():
    report = sample_report()
    report["cases"]["case_undefined"] = {"pancreas": scores(None, status="absent")}
    expected = ["case_absent", "case_broken", "case_undefined", "case_bad", EVIL, "case_good"]
    assert worst_first(report) == expected
    page = Page(render_report(report, title="t", pictures={}, plot=None, provenance={}))
    assert page.case_cells[: len(expected)] == expected  # the cases table, then the statistics table
    assert page.case_cells[len(expected) :] == ["case_bad"]


def test_every_link_resolves_to_a_file(tmp_path):
    page = Page(render_in(tmp_path).read_text(encoding="utf-8"))
    links = [link for link in page.links() if not link.startswith("#")]
    assert sorted(set(links)) == ["metrics.png", "pictures/case%20bad.png", "pictures/evil%20%231.png"]
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and ".." not in link
        assert (tmp_path / unquote(parts.path)).is_file(), link
    anchors = {a.get("id") for _, a in page.tags}
    assert all(link[1:] in anchors for link in page.links() if link.startswith("#"))


@pytest.mark.parametrize(
    ("path", "link"),
    [
        ("pictures/case 1.png", "pictures/case%201.png"),
        ("./a#b?.png", "a%23b%3F.png"),
        ("sub//x.png", "sub/x.png"),
        ("../x.png", None),
        ("a/../../x.png", None),
        ("/etc/passwd", None),
        ("javascript:alert(1)", None),
        ("http://example.org/a.png", None),
        ("//example.org/a.png", None),
        ("C:/x.png", None),
        ("a\\b.png", None),
        ("a\nb.png", None),
        ("", None),
        (None, None),
    ],
)
def test_relative_link(path, link):
    assert relative_link(path) == link


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"cases": {}, "summary": {}},
        {"cases": {"c1": {"pancreas": {"dice": 0.5, "status": "both"}}}},
        {"cases": {"c1": "not a mapping"}, "summary": {"pancreas": None}, "errors": None, "regions": []},
        {"cases": {"c1": {"pancreas": scores(float("nan"))}}, "summary": {"tumour_detection": {}}},
    ],
    ids=["empty", "no cases", "dice only", "wrong types", "nan and empty detection"],
)
def test_missing_optional_keys(report, tmp_path):
    text = render_report(report, title="t", pictures={"c1": "c1.png"}, plot=None, provenance={})
    page = Page(text)
    assert page.case_cells[:1] == (["c1"] if report.get("cases") else [])
    assert ("Tumour detection" in text) == ("tumour_detection" in report.get("summary", {}))
    assert not re.search(r"\b(None|nan|NaN|null)\b", " ".join(page.text))
    assert metrics_plot(report, tmp_path / "plot.png").stat().st_size > 0


def test_detection_and_statistics_shown():
    page = Page(render_report(sample_report(), title="t", pictures={}, plot=None, provenance={}))
    shown = "\n".join(page.text)
    assert "0.500 (1 of 2)" in shown  # sensitivity with its counts
    assert "0.33" in shown and "1 / 2" in shown  # false per case; found / true tumours of case_bad
    assert "71.2 / 64.0" in shown and "no / yes" in shown  # truth / prediction statistics
    assert "1.000 (of 2 cases)" in shown and "0.000" in shown  # case sensitivity and specificity


def test_plot_is_a_picture(tmp_path):
    path = metrics_plot(sample_report(), tmp_path / "metrics.png")
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert float(pixels[..., :3].std()) > 0.05
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.png"]  # no temporary file left


def test_write_html_replaces_atomically(tmp_path):
    path = tmp_path / "report.html"
    write_html(path, "old")
    write_html(path, "<p>caf\u00e9</p>")
    assert path.read_text(encoding="utf-8") == "<p>caf\u00e9</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_incomplete_write_names_the_file_and_keeps_the_old_one(tmp_path, request):
    path = tmp_path / "report.html"
    write_html(path, "old")
    request.getfixturevalue("short_writes")
    with pytest.raises(OSError, match=r"report\.html: only 4 of 8 bytes reached the disk"):
        write_html(path, "new text")
    with pytest.raises(OSError, match=r"metrics\.png"):
        metrics_plot(sample_report(), tmp_path / "metrics.png")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_render_index_escapes_and_links(tmp_path):
    tiny_png(tmp_path / "previews" / "a.png", 1)
    rows = [{"case_id": "a", "pancreas_ml": 70.5, "note": EVIL}, {"case_id": EVIL, "pancreas_ml": None}]
    text = render_index(
        "Predictions", rows, ["case_id", "pancreas_ml", "note"], {"a": "previews/a.png", EVIL: "/abs.png"}, {}
    )
    page = Page(text)
    assert "<img src=x" not in text and EVIL in "".join(page.text)
    assert [link for link in page.links() if not link.startswith("#")] == ["previews/a.png", "previews/a.png"]
    assert "70.500" in text and "pancreas ml" in text


def test_report_in_a_real_browser(tmp_path):
    """The page renders (a screenshot that is not blank) and every picture on it loads in Chromium."""
    page = render_in(tmp_path)
    shot = imread(screenshot(page, tmp_path / "screenshot.png"))
    assert shot.shape[:2] == (2000, 1280)
    assert float(shot[..., :3].std()) > 0.05, "the screenshot is blank"
    states = picture_states(page, tmp_path)
    assert sorted(s["src"] for s in states) == ["metrics.png", "pictures/case%20bad.png", "pictures/evil%20%231.png"]
    assert [s for s in states if not s["complete"] or not s["width"]] == []


def test_browser_check_sees_a_broken_picture(tmp_path):
    """The picture check itself: a link to a missing file must come back broken."""
    tiny_png(tmp_path / "ok.png", 0)
    text = render_index("t", [{"id": "ok"}, {"id": "gone"}], ["id"], {"ok": "ok.png", "gone": "gone.png"}, {})
    states = picture_states(write_html(tmp_path / "index.html", text), tmp_path)
    assert {s["src"]: s["width"] for s in states} == {"ok.png": 64, "gone.png": 0}


def test_sample_report_is_not_changed():
    report = sample_report()
    before = copy.deepcopy(report)
    render_report(report, title="t", pictures={}, plot=None, provenance={})
    assert report == before


def test_a_missing_browser_fails_with_the_install_command(monkeypatch):
    import browser

    monkeypatch.setattr(browser, "CANDIDATES", ("/nonexistent/chromium",))
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/install-browser"):
        browser.require_chromium()
