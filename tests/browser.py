"""Headless Chromium for tests: find it, screenshot a local page, list how each of a page's pictures loaded."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL_HINT = "run .ci/install-browser (as root; it installs Debian's chromium package) and rerun the tests"
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox needs user namespaces it may not have
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's small /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)

# Loads the page in an iframe and, once it has loaded, waits for each picture (asking lazy ones to load)
# and writes {src, complete, width} of every <img> into #result. Reading the frame's document needs
# --allow-file-access-from-files: without it every file: URL is an origin of its own.
HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>picture check</title></head><body>
<iframe id="page" src="{src}" style="width:1280px;height:4000px;border:0"></iframe>
<pre id="result">pending</pre>
<script>
const frame = document.getElementById("page");
function settle(img) {{
  if (img.complete) return Promise.resolve();
  img.loading = "eager";
  return new Promise(done => {{
    img.addEventListener("load", done, {{once: true}});
    img.addEventListener("error", done, {{once: true}});
  }});
}}
frame.addEventListener("load", async () => {{
  let out;
  try {{
    const images = Array.from(frame.contentDocument.images);
    await Promise.all(images.map(settle));
    out = images.map(i => ({{src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth}}));
  }} catch (err) {{
    out = {{error: String(err)}};
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
</script></body></html>
"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser's path; fails the test (never skips it: CI installs the browser) when there is none."""
    found = find_chromium()
    if found is None:
        pytest.fail(f"Chromium not found (tried {', '.join(CANDIDATES)}): {INSTALL_HINT}")
    return found


def run_chromium(args: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a fresh profile under ``work``; fails the test on error or timeout."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=work))
    command = [require_chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=work, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not finish in {TIMEOUT_S} s: {' '.join(command)}")
    if done.returncode != 0:
        pytest.fail(f"Chromium exited {done.returncode}: {' '.join(command)}\n{done.stderr[-3000:]}")
    return done


def screenshot(page: Path, png: Path, window: tuple[int, int] = (1280, 2000)) -> Path:
    """A PNG of ``page`` as a ``window``-sized browser shows it."""
    run_chromium([f"--screenshot={png}", f"--window-size={window[0]},{window[1]}", page.resolve().as_uri()], png.parent)
    if not png.is_file():
        pytest.fail(f"Chromium wrote no screenshot {png}")
    return png


def picture_states(page: Path, work: Path) -> list[dict[str, object]]:
    """[{src, complete, width}] for every <img> of ``page`` after it loaded; width 0 is a broken picture."""
    harness = work / "picture-check.html"
    harness.write_text(HARNESS.format(src=html.escape(page.resolve().as_uri(), quote=True)), encoding="utf-8")
    args = ["--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", harness.as_uri()]
    dom = run_chromium(args, work).stdout
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        pytest.fail(f"the picture check wrote no result; the page's DOM:\n{dom[-2000:]}")
    text = html.unescape(found.group(1))
    if text == "pending":
        pytest.fail(f"{page} did not finish loading within Chromium's virtual time budget")
    result = json.loads(text)
    if not isinstance(result, list):
        pytest.fail(f"the picture check could not read {page}: {result}")
    return result
