"""Headless Chromium: the page as a person sees it (``report --screenshot PAGE.html OUT.png``, the README's
picture, and the test that the page renders without a console error)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from alphastomics.analysis.tables import ReportError


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    raise ReportError("chromium: not on PATH; install it (Debian: apt-get install -y chromium)")


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 4000, timeout: float = 120) -> str:
    """Render ``html`` in headless Chromium to ``png``; returns Chromium's log (console messages included)."""
    html = Path(html).resolve()
    if not html.is_file():
        raise ReportError(f"{html}: page not found; build it first with python -m alphastomics report")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            html.as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.is_file():
        raise ReportError(f"{html}: chromium failed (exit {r.returncode}); see its log: {r.stderr[-300:]!r}")
    return r.stderr


def console_errors(log: str) -> list[str]:
    """Lines of a Chromium log that report a page error (console messages and uncaught exceptions)."""
    return [l for l in log.splitlines() if "CONSOLE" in l and re.search(r"Uncaught|Error|Failed", l)]


def _screenshot_png(page: Path, out: Path, width: int, height: int, scale: float) -> int:
    """The README's picture of a page: rendered, shrunk by ``scale``, saved as a palette PNG."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        errors = console_errors(screenshot(page, full, width=width, height=height))
        img = Image.open(full).convert("RGB")
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img = img.quantize(colors=256)  # a page of text and flat plots: a palette PNG is ~3x smaller
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp.png")
        img.save(tmp_out, optimize=True)
        os.replace(tmp_out, out)
    for e in errors:
        print(f"warning: page console: {e}", file=sys.stderr)
    print(f"screenshot: wrote {out} ({img.width} x {img.height})")
    return 0

