"""The report page in a real browser (headless Chromium): the DOM it builds has the plots with their
bars and lines, and a screenshot shows them. Also `batchscore report` on S3 (the local S3 server).

Chromium: the Debian package (`apt-get install chromium`); the browser tests skip without it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from reportdata import DATES, count, parse, sample_report

from jobs.cli import main
from pipeline.reporting.html import render_html
from pipeline.reporting.plots import C_DEAD, C_OUT, C_REF, C_STAGE, C_TODAY
from pipeline.reporting.schema import load

pytestmark = pytest.mark.integration

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1200, 2400


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} on PATH (apt-get install chromium)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium; stderr is ignored (containers print dbus/GPU noise there)."""
    cmd = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    assert proc.returncode == 0, (
        f"{cmd}: exit {proc.returncode}\n{proc.stderr.decode(errors='replace')[-2000:]}"
    )
    return proc


@pytest.fixture
def page(tmp_path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(render_html(load(sample_report())), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# a small PNG decoder (8-bit greyscale/RGB/RGBA, not interlaced): Pillow is not a dependency
# ---------------------------------------------------------------------------------------------


def read_png(data: bytes) -> np.ndarray:
    """The image as a (height, width, channels) uint8 array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "PNG without IHDR"
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    assert depth == 8 and channels and interlace == 0, f"unsupported PNG: {header}"
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1)
        if kind == 0:  # None
            cur = line.copy()
        elif kind == 1:  # Sub: a running sum along the row, per channel
            cur = (np.cumsum(line.reshape(width, channels).astype(np.int64), axis=0) % 256).astype(np.uint8)
            cur = cur.reshape(stride)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = _unfilter_sequential(kind, line.tobytes(), prev.tobytes(), channels)
        else:
            raise AssertionError(f"bad PNG filter {kind} in row {y}")
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)


def _unfilter_sequential(kind: int, line: bytes, prev: bytes, bpp: int) -> np.ndarray:
    cur = bytearray(line)
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        if kind == 3:
            pred = (a + b) >> 1
        else:
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), dtype=np.uint8)


def test_png_reader_round_trip():
    """The decoder against a PNG written here with every filter type."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    rows = []
    for y in range(6):
        kind = y % 5
        row = img[y].reshape(-1).astype(np.int64)
        up = img[y - 1].reshape(-1).astype(np.int64) if y else np.zeros_like(row)
        left = np.concatenate([[0, 0, 0], row[:-3]])
        upleft = np.concatenate([[0, 0, 0], up[:-3]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = up
        elif kind == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    assert np.array_equal(read_png(png), img)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


# ---------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------


def test_rendered_dom_has_the_plots(page, tmp_path):
    proc = chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = proc.stdout.decode("utf-8")
    plots = parse(dom)
    hists = plots.of("score-histogram")
    assert [h["attrs"]["data-date"] for h in hists] == DATES
    for h in hists:
        assert count(h, "g", "bar") >= 10, h["attrs"]
        assert count(h, "title") >= 1 and "viewbox" in h["attrs"]
    assert [count(h, "g", "reference") for h in hists] == [1, 2, 2]  # training; previous and training
    (stages,) = plots.of("stage-throughput")
    assert count(stages, "g", "bar") == 4
    (parts,) = plots.of("partition-counts")
    assert count(parts, "g", "output") == 3 and count(parts, "g", "dead-letter") == 2
    assert "<script" not in dom.lower()


def test_screenshot_shows_the_plots(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    img = read_png(shot.read_bytes())[..., :3]
    assert img.shape[:2] == (HEIGHT, WIDTH)
    flat = img.reshape(-1, 3)
    colours = np.unique(flat, axis=0)
    assert len(colours) > 50, f"a nearly blank page: {len(colours)} distinct colours"

    # each series colour fills a good number of pixels (bars, the reference line, stage bars)
    def pixels(hex_colour: str) -> np.ndarray:
        return np.all(img == np.array(_rgb(hex_colour), dtype=np.uint8), axis=-1)

    for name, hex_colour, least in (
        ("score bars", C_TODAY, 5000),
        ("reference line", C_REF, 300),
        ("stage bars", C_STAGE, 5000),
        ("output bars", C_OUT, 5000),
        ("dead-letter bars", C_DEAD, 50),
    ):
        n = int(pixels(hex_colour).sum())
        assert n >= least, f"{name} ({hex_colour}): {n} pixels in the screenshot"

    # the histograms' region (where the score bars are) is a picture, not one flat colour
    ys, xs = np.nonzero(pixels(C_TODAY))
    region = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].reshape(-1, 3)
    assert len(np.unique(region, axis=0)) > 20


# ---------------------------------------------------------------------------------------------
# batchscore report on S3
# ---------------------------------------------------------------------------------------------


def test_report_from_s3(s3, tmp_path, monkeypatch, capsys):
    bucket = s3.make_bucket("reports-browser")
    client = s3.client()
    for run_id, finished in (("run-b", "2026-11-05T02:00:00+00:00"), ("run-a", "2026-11-06T02:00:00+00:00")):
        body = json.dumps(sample_report(run_id=run_id, finished_at=finished))
        client.put_object(Bucket=bucket, Key=f"preds/_runs/{run_id}/report.json", Body=body.encode())
    monkeypatch.chdir(tmp_path)

    # an output root on S3: the latest run, the page in the working directory
    assert main(["report", f"s3://{bucket}/preds", "--endpoint-url", s3.endpoint]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["report"] == f"s3://{bucket}/preds/_runs/run-a/report.json"
    assert final["html"] == str(tmp_path / "report-run-a.html")
    assert len(parse((tmp_path / "report-run-a.html").read_text()).of("score-histogram")) == 3

    # --html to S3
    dest = f"s3://{bucket}/pages/run-b.html"
    target = f"s3://{bucket}/preds/_runs/run-b"
    assert main(["report", target, "--endpoint-url", s3.endpoint, "--html", dest]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["html"] == dest
    page = client.get_object(Bucket=bucket, Key="pages/run-b.html")["Body"].read().decode()
    assert page.startswith("<!DOCTYPE html>")

    # a missing run: exit 2 naming it
    missing = f"s3://{bucket}/preds/_runs/nope"
    assert main(["report", missing, "--endpoint-url", s3.endpoint]) == 2
    assert missing in capsys.readouterr().err
