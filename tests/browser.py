"""Open a page in headless Chromium (Debian's `chromium`) and report console errors and images that failed.

No Playwright: a copy of the page with a small script injected first records `console.error`, failed resource
loads and every image's naturalWidth after `load`, and writes them into the DOM, which `--dump-dom` prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

PROBE = """<script>
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t !== window && (t.src || t.href) ? "failed to load " + (t.src || t.href) : String(e.message));
  }, true);
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                       .map(function (i) { return i.getAttribute("src"); });
    var out = document.createElement("pre");
    out.id = "__report_check";
    out.textContent = JSON.stringify({images: images.length, broken: broken, errors: errors});
    document.body.appendChild(out);
  });
})();
</script>"""


MISSING = ("headless Chromium not installed: `sudo apt-get install chromium` (Debian's package) lets these browser "
           "tests run; .ci/run installs it and fails where they skip")
"""The skip reason of every browser test: it names the command that makes it run."""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]


def check_page(page: Path, screenshot: Path, work: Path) -> dict[str, Any]:
    """{'images': n, 'broken': [...], 'errors': [...], 'console': [...]} for `page`; writes `screenshot`."""
    exe = chromium()
    assert exe is not None
    probe_page = page.with_name(page.stem + ".check.html")
    text = page.read_text(encoding="utf-8")
    probe_page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    env = {**os.environ, "HOME": str(work)}
    try:
        dumped = subprocess.run([exe, *_flags(work / "profile-dom"), "--dump-dom", probe_page.as_uri()],
                                capture_output=True, text=True, timeout=180, env=env)
    finally:
        probe_page.unlink(missing_ok=True)
    match = re.search(r'<pre id="__report_check">(.*?)</pre>', dumped.stdout, re.S)
    assert match, f"no result from the page (chromium exit {dumped.returncode}): {dumped.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    # Chromium logs console messages of the page (and failed loads) as CONSOLE lines on stderr
    result["console"] = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line]
    shot = subprocess.run([exe, *_flags(work / "profile-shot"), f"--screenshot={screenshot}", "--window-size=1280,2400",
                           page.as_uri()], capture_output=True, text=True, timeout=180, env=env)
    assert screenshot.is_file(), f"no screenshot (chromium exit {shot.returncode}): {shot.stderr[-2000:]}"
    return result
