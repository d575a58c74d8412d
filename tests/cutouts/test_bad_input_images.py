"""Issue 11, classes 4, 5 and 8: degenerate images, resource bombs and hangs, silent failure -
through ``python -m mergerscan.pipeline.cli`` as a user meets them, with images, frames and an
HTTP server (127.0.0.1) the tests make themselves.

Bad-input cases (one a line; 49 in all):
 1. all-NaN float FITS stamp -> blank_image
 2. half-NaN float FITS stamp -> blank_image
 3. float FITS stamp with 2 % NaN -> scored (NaN -> 0), the rule's other side
 4. 1x1 JPEG -> small_image
 5. 8x8 JPEG -> small_image
 6. JPEG with two thirds of its data cut, end marker kept -> bad_image (grey fill)
 7. JPEG with a tenth of its data cut, end marker kept -> bad_image
 8. JPEG with a zeroed 512-byte block in its data -> bad_image
 9. JPEG with a zeroed 4096-byte (disk) block, end marker kept -> bad_image
10. all-black JPEG -> blank_image
11. constant grey PNG -> blank_image
12. JPEG 80 % black with a galaxy in one corner -> blank_image
13. float FITS in 0..1 -> scaled x255: same score as the uint8 stamp
14. float FITS in 0..255 -> used as is: same score as the uint8 stamp
15. float FITS of raw fluxes (negative values) -> bad_image, not a garbage score
16. uint16 FITS 0..65535 -> bad_image
17. non-square PNG -> bad_image
18. greyscale (mode L) JPEG -> bad_image
19. (H, W, 4) FITS cube -> bad_image
20. .fits.fz whose header declares 40000 x 40000 x 3 (tile-compressed, tiny file) -> image_too_large, not decoded
21. FITS whose header declares 30000 x 30000 x 3 over a small file -> image_too_large
22. PNG decompression bomb (6000 x 6000 px in 100 kB) -> image_too_large, not decoded
23. 2048 x 2048 JPEG (8x the stamp) -> image_too_large
24. PNG header declaring 15000 x 13000 px (past PIL's own bomb limit) -> image_too_large
25. 40 MB file named .png (sparse) -> image_too_large, never read
26. FIFO named <id>.jpg -> bad_image, the run does not hang
27. directory named <id>.png -> bad_image
28. symlink <id>.jpg -> /dev/zero -> bad_image, never read
29. id so long the file name exceeds 255 bytes -> no_image (a per-row status), not a crash
30. FIFO named like a frame in --frames -> listed unreadable, the run does not hang
31. bz2 frame whose header declares 100000 x 100000 pixels -> never decompressed; its field is corrupt_frame
32. frame whose data are all NaN -> blank_image
33. cutout service unreachable (127.0.0.1, port closed) -> fetch_failed with "connection refused by ...", exit 3
34. cutout service that answers slowly with 503s -> the row's total time limit ends its retries
35. cutout service sending an 8x8 JPEG -> small_image (and in the same run: an opaque RGBA PNG -> scored;
    a half-transparent one -> bad_image)
36. cutout service sending a JPEG cut short with its end marker -> bad_image
37. cutout service sending an all-black JPEG -> blank_image
38. wrong --id-column: every image missing -> exit 3, no_image example and a hint naming the id column
39. coordinates in radians with --frames: all outside the footprint -> exit 3 and a radians warning
40. ra in hours -> an hours warning (rows still scored, exit 0)
41. most rows without an image -> exit 0 with a "most rows were not scored" warning and the reasons
42. every row with bad coordinates -> exit 3, bad_coords example naming the row
43. re-run after adding the missing images: those rows are scored, ok rows are not fetched again
44. re-run after the service came back: fetch_failed rows are retried and scored
45. --service-timeout 0 / --service-retries -1 -> one-line error, exit 2
46. --service-total-timeout -5 -> one-line error, exit 2
47. RGBA PNG, every pixel opaque -> scored as RGB: the same score as the RGB PNG of the same pixels
48. palette PNG (no transparency) -> scored as RGB: the same score as the RGB PNG of its colours
49. RGBA PNG with transparent pixels -> bad_image
"""

from __future__ import annotations

import bz2
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from conftest import read_out
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.service import ServiceSource

S = 256
FAST = (
    "--views",
    "1",
    "--no-progress",
    "--no-report",
    "--workers",
    "1",
    "--threads-per-worker",
    "1",
    "--partition-rows",
    "64",
)


@pytest.fixture(scope="module")
def fast(cheap_engine) -> tuple:
    """FAST and conftest's cheap engine: what is checked here (statuses, messages, exit codes, equal
    scores for equal stamps) does not depend on the model."""
    return (*FAST, "--engine", str(cheap_engine))


# ------------------------------------------------------------------------------ helpers
def galaxy(seed: int, size: int = S) -> np.ndarray:
    """A galaxy-like stamp: one or two elliptical blobs on a dark noisy sky."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    img = rng.normal(10, 4, (size, size, 3))
    for _ in range(1 + seed % 2):
        cx, cy = rng.normal(0, 20, 2)
        r = np.hypot(xx - cx, (yy - cy) * rng.uniform(1, 2))
        img += np.exp(-r / rng.uniform(5, 12))[..., None] * rng.uniform(120, 220, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(a: np.ndarray, quality: int = 90, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _save_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG of only a header declaring w x h RGB pixels (and an empty IDAT, IEND)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def cut(body: bytes, keep: float) -> bytes:
    """The JPEG with only ``keep`` of its entropy-coded data, the end marker put back."""
    s = body.index(b"\xff\xda")
    return body[: s + int((len(body) - s) * keep)] + b"\xff\xd9"


def zeroed(body: bytes, at: float, n: int) -> bytes:
    s = body.index(b"\xff\xda")
    z = bytearray(body)
    m = s + int((len(body) - s) * at)
    z[m : m + n] = bytes(n)
    return bytes(z)


def write_fits(path: Path, data: np.ndarray):
    fits.PrimaryHDU(data).writeto(path, overwrite=True)


def catalog(path: Path, ids, ra=None, dec=None, **extra) -> Path:
    n = len(ids)
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "id": list(ids),
            "ra": rng.uniform(150, 150.2, n) if ra is None else ra,
            "dec": rng.uniform(2, 2.2, n) if dec is None else dec,
            **extra,
        }
    )
    df.to_csv(path, index=False)
    return path


def cli(*argv, timeout=420):
    return subprocess.run(
        [sys.executable, "-m", "mergerscan.pipeline.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]


def by_id(out: Path) -> dict:
    df = read_out(out)
    return dict(zip(df["id"], zip(df["status"], df["p_merger"])))


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------ class 4 and 5: stamps
@pytest.fixture(scope="module")
def hostile_stamps(tmp_path_factory):
    """One stamp directory holding every degenerate and hostile image kind, and its catalog."""
    d = tmp_path_factory.mktemp("hostile")
    img = d / "stamps"
    img.mkdir()
    g = galaxy(1)
    body = jpeg(g)
    want = {}  # id -> expected status

    def put(oid, name, data, status):
        (img / name).write_bytes(data)
        want[oid] = status

    put("good", "good.jpg", body, "ok")
    put("good_png", "good_png.png", png(galaxy(2)), "ok")
    f = np.moveaxis(galaxy(3), -1, 0)  # (3, H, W)
    write_fits(img / "u8.fits", f)
    want["u8"] = "ok"
    nan = f.astype(np.float32)
    nan[:] = np.nan
    write_fits(img / "allnan.fits", nan)
    want["allnan"] = "blank_image"
    half = f.astype(np.float32)
    half[:, : S // 2] = np.nan
    write_fits(img / "halfnan.fits", half)
    want["halfnan"] = "blank_image"
    few = f.astype(np.float32)
    few[:, :5] = np.nan  # 2 % of the pixels
    write_fits(img / "fewnan.fits", few)
    want["fewnan"] = "ok"
    put("tiny1", "tiny1.jpg", jpeg(np.full((1, 1, 3), 120, np.uint8)), "small_image")
    put("tiny8", "tiny8.jpg", jpeg(galaxy(4, 8)), "small_image")
    put("cut23", "cut23.jpg", cut(body, 1 / 3), "bad_image")
    put("cut90", "cut90.jpg", cut(body, 0.9), "bad_image")
    put("zero512", "zero512.jpg", zeroed(body, 0.5, 512), "bad_image")
    put("zero4096", "zero4096.jpg", zeroed(jpeg(galaxy(5), 97), 0.3, 4096), "bad_image")
    put("black", "black.jpg", jpeg(np.zeros((S, S, 3), np.uint8)), "blank_image")
    put("grey", "grey.png", png(np.full((S, S, 3), 77, np.uint8)), "blank_image")
    corner = np.zeros((S, S, 3), np.uint8)
    corner[:100, :100] = galaxy(6, 100)
    put("corner", "corner.png", png(corner), "blank_image")
    write_fits(img / "f01.fits", f.astype(np.float32) / 255)
    want["f01"] = "ok"
    write_fits(img / "f255.fits", f.astype(np.float64))
    want["f255"] = "ok"
    write_fits(img / "flux.fits", (f.astype(np.float32) - 20) * 0.5)
    want["flux"] = "bad_image"
    write_fits(img / "u16.fits", f.astype(np.uint16) * 257)
    want["u16"] = "bad_image"
    put("wide", "wide.png", png(galaxy(7)[:, :200]), "bad_image")
    put("greyjpeg", "greyjpeg.jpg", jpeg(galaxy(8), mode="L"), "bad_image")
    opaque = np.dstack([galaxy(12), np.full((S, S), 255, np.uint8)])
    put("png_rgb", "png_rgb.png", png(galaxy(12)), "ok")
    put("png_rgba", "png_rgba.png", png(opaque), "ok")
    palette = Image.fromarray(galaxy(13)).quantize(64)
    put("png_palette", "png_palette.png", _save_png(palette), "ok")
    put("png_palette_rgb", "png_palette_rgb.png", png(np.asarray(palette.convert("RGB"))), "ok")
    see_through = opaque.copy()
    see_through[:40, :40, 3] = 0
    put("png_transparent", "png_transparent.png", png(see_through), "bad_image")
    write_fits(img / "rgba.fits", np.zeros((S, S, 4), np.uint8) + 9)
    want["rgba"] = "bad_image"
    # resource bombs: headers that declare far more than the file holds
    hdu = fits.CompImageHDU(np.moveaxis(galaxy(9), -1, 0), compression_type="RICE_1")
    raw = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(raw)
    fz = raw.getvalue()
    for k, v in ((b"ZNAXIS1 ", 40000), (b"ZNAXIS2 ", 40000)):
        i = fz.index(k)
        fz = fz[:i] + f"{k.decode():8s}= {v:20d}".encode() + fz[i + 30 :]
    put("fz_bomb", "fz_bomb.fits.fz", fz, "image_too_large")
    hdr = fits.Header({"SIMPLE": True, "BITPIX": 8, "NAXIS": 3, "NAXIS1": 30000, "NAXIS2": 30000, "NAXIS3": 3})
    put("naxis_bomb", "naxis_bomb.fits", hdr.tostring().encode() + bytes(2880 * 4), "image_too_large")
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    put("png_bomb", "png_bomb.png", buf.getvalue(), "image_too_large")
    put("huge", "huge.jpg", jpeg(galaxy(10, 2048), 50), "image_too_large")
    put("pil_bomb", "pil_bomb.png", png_header(15000, 13000), "image_too_large")
    with open(img / "sparse.png", "wb") as fh:  # 40 MB, no blocks on disk
        fh.write(png(galaxy(11)))
        fh.truncate(40 * 2**20)
    want["sparse"] = "image_too_large"
    os.mkfifo(img / "fifo.jpg")
    want["fifo"] = "bad_image"
    (img / "adir.png").mkdir()
    want["adir"] = "bad_image"
    os.symlink("/dev/zero", img / "devzero.jpg")
    want["devzero"] = "bad_image"
    want["x" * 300] = "no_image"  # file name too long for the filesystem: names no file
    want["absent"] = "no_image"
    cat = catalog(d / "hostile.csv", list(want))
    return d, cat, want


def test_degenerate_and_hostile_stamps_are_flagged(hostile_stamps, tmp_path, fast):
    d, cat, want = hostile_stamps
    out = tmp_path / "out"
    r = cli(cat, "--images", d / "stamps", "-o", out, *fast, timeout=600)
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    got = by_id(out)
    assert len(got) == len(want)  # every row once
    assert {k: v[0] for k, v in got.items()} == want
    # the float-FITS rule: 0..1 scaled x255 and 0..255 as is give exactly the uint8 stamp's score
    assert got["f01"][1] == got["u8"][1] == got["f255"][1]
    # opaque RGBA and palette PNGs are their RGB pixels, exactly
    assert got["png_rgba"][1] == got["png_rgb"][1]
    assert got["png_palette"][1] == got["png_palette_rgb"][1]
    for k, (st, p) in got.items():
        assert np.isnan(p) == (st not in ("ok", "edge")), k
    s = summary(out)
    fails = {f["status"]: f for f in s["failures"]}
    assert set(fails) == set(want.values()) - {"ok"}
    assert fails["small_image"]["count"] == 2 and "px" in fails["small_image"]["example"]
    assert fails["image_too_large"]["count"] == 6
    assert fails["blank_image"]["count"] == 5
    for f in s["failures"]:
        assert f["example"] and "\n" not in f["example"]
    assert "not scored, by reason:" in r.stdout and "image_too_large 6:" in r.stdout


# ------------------------------------------------------------------ frames (class 5, 8)
def _wcs(ra, dec, n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [n / 2, n / 2]
    w.wcs.cd = 0.396 / 3600 * np.array([[-1.0, 0.0], [0.0, 1.0]])
    return w


def _frame(path: Path, w: WCS, data: np.ndarray):
    buf = io.BytesIO()
    fits.PrimaryHDU(data.astype(np.float32), w.to_header()).writeto(buf)
    path.write_bytes(bz2.compress(buf.getvalue()))


def make_field(d: Path, field: int, ra: float, dec: float, n: int = 700, nan: bool = False):
    """g, r, i frames (nanomaggy-like noise and a few galaxies) of one field centred on (ra, dec)."""
    rng = np.random.default_rng(field)
    w = _wcs(ra, dec, n)
    yy, xx = np.mgrid[:n, :n]
    sky = np.zeros((n, n))
    for _ in range(6):
        x, y = rng.uniform(100, n - 100, 2)
        sky += 2.0 * np.exp(-np.hypot(xx - x, (yy - y) * 1.5) / 6)
    for b in "gri":
        img = np.full((n, n), np.nan) if nan else sky + rng.normal(0, 0.02, (n, n))
        _frame(d / f"frame-{b}-000100-1-{field:04d}.fits.bz2", w, img)
    return w


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    make_field(d, 1, 150.0, 2.0)  # good field
    make_field(d, 2, 160.0, 5.0, nan=True)  # all-NaN data
    make_field(d, 3, 170.0, 8.0)  # its g band is replaced by a bomb
    hdr = _wcs(170.0, 8.0, 700).to_header()
    hdr = fits.Header(
        [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 100000), ("NAXIS2", 100000)] + list(hdr.items())
    )
    # a valid header and 10 MB of zeros that bz2 squeezes to a few bytes: 40 GB declared
    bomb = bz2.BZ2Compressor()
    body = bomb.compress(hdr.tostring().encode()) + bomb.compress(bytes(10 * 2**20)) + bomb.flush()
    (d / "frame-g-000100-1-0003.fits.bz2").write_bytes(body)
    os.mkfifo(d / "frame-r-000100-1-0009.fits.bz2")  # a FIFO named like a frame
    return d


def test_frames_fifo_bomb_and_nan(frames, tmp_path, fast):
    ra = [150.0, 150.01, 160.0, 170.0, 200.0]
    dec = [2.0, 2.005, 5.0, 8.0, 10.0]
    cat = catalog(tmp_path / "f.csv", ["a", "b", "nanfield", "bomb", "far"], ra, dec)
    out = tmp_path / "out"
    r = cli(cat, "--frames", frames, "-o", out, *fast, timeout=600)
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {k: v[0] for k, v in by_id(out).items()}
    assert got == {"a": "ok", "b": "ok", "nanfield": "blank_image", "bomb": "corrupt_frame", "far": "outside_footprint"}
    idx = json.loads((frames / ".mergerscan-frames-index.json").read_text())
    assert "not a regular file" in idx["unreadable"]["frame-r-000100-1-0009.fits.bz2"]
    assert "limit" in idx["unreadable"]["frame-g-000100-1-0003.fits.bz2"]
    ex = {f["status"]: f["example"] for f in summary(out)["failures"]}
    assert "NaN" in ex["blank_image"] and "far" in ex["outside_footprint"]


def test_radians_outside_footprint_exits_3_with_a_warning(frames, tmp_path, fast):
    ra, dec = np.radians([150.0, 150.01, 150.02]), np.radians([2.0, 2.005, 2.01])
    cat = catalog(tmp_path / "rad.csv", ["a", "b", "c"], ra, dec)
    out = tmp_path / "out"
    r = cli(cat, "--frames", frames, "-o", out, *fast)
    no_traceback(r)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "outside_footprint 3:" in r.stdout and "radians" in r.stdout
    s = summary(out)
    assert s["exit_status"] == 3 and any("radians" in w for w in s["warnings"])
    assert any("no row could be scored" in w for w in s["warnings"])
    assert len(read_out(out)) == 3


# ------------------------------------------------------------------ class 8 with stamps
@pytest.fixture(scope="module")
def ten_stamps(tmp_path_factory):
    d = tmp_path_factory.mktemp("ten")
    ids = [f"obj{i:02d}" for i in range(10)]
    for i, oid in enumerate(ids):
        (d / f"{oid}.jpg").write_bytes(jpeg(galaxy(20 + i)))
    return d, ids


def test_wrong_id_column_exits_3_with_example_and_hint(ten_stamps, tmp_path, fast):
    d, ids = ten_stamps
    cat = catalog(tmp_path / "c.csv", ids, objid=np.arange(10) + 5877)
    out = tmp_path / "out"
    r = cli(cat, "--images", d, "--id-column", "objid", "-o", out, *fast)
    no_traceback(r)
    assert r.returncode == 3, r.stderr[-3000:]
    assert re.search(r"no_image 10: id (\d+): no file \1\.\{jpg,", r.stdout), r.stdout
    assert "--id-column" in r.stdout and "'objid'" in r.stdout
    assert summary(out)["failures"][0]["count"] == 10


def test_hours_warning_and_most_rows_fail(ten_stamps, tmp_path, fast):
    d, ids = ten_stamps
    rng = np.random.default_rng(3)
    extra = [f"missing{i}" for i in range(12)]
    cat = catalog(tmp_path / "h.csv", ids + extra, rng.uniform(10, 10.01, 22), rng.uniform(2, 2.01, 22))
    out = tmp_path / "out"
    r = cli(cat, "--images", d, "-o", out, *fast)
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]  # some rows scored: not an error
    assert "hours" in r.stdout and "most rows were not scored (12 of 22)" in r.stdout
    assert "no_image 12: id missing" in r.stdout
    assert summary(out)["retryable"] == 12


def test_all_bad_coords_exits_3(ten_stamps, tmp_path, fast):
    d, ids = ten_stamps
    cat = catalog(tmp_path / "b.csv", ids[:4], [np.nan, 400, -5, 10], [0, 0, 0, 95])
    out = tmp_path / "out"
    r = cli(cat, "--images", d, "-o", out, *fast)
    no_traceback(r)
    assert r.returncode == 3 and "bad_coords 4: row 0 (id obj00)" in r.stdout, r.stdout


def test_rerun_scores_added_images_and_keeps_ok_rows(ten_stamps, tmp_path, fast):
    d0, ids = ten_stamps
    d = tmp_path / "img"
    d.mkdir()
    for oid in ids[:6]:
        (d / f"{oid}.jpg").write_bytes((d0 / f"{oid}.jpg").read_bytes())
    cat = catalog(tmp_path / "c.csv", ids)
    out = tmp_path / "out"
    argv = (cat, "--images", d, "-o", out, *fast)
    r = cli(*argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-running the same command retries the 4 row(s) flagged no_image" in r.stdout
    first = by_id(out)
    assert [first[i][0] for i in ids] == ["ok"] * 6 + ["no_image"] * 4
    for oid in ids[6:]:  # the images arrive
        (d / f"{oid}.jpg").write_bytes((d0 / f"{oid}.jpg").read_bytes())
    (d / f"{ids[0]}.jpg").write_bytes(jpeg(np.zeros((S, S, 3), np.uint8)))  # an ok row's file changes:
    r = cli(*argv)  # it must not be fetched again
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    again = by_id(out)
    assert all(again[i][0] == "ok" for i in ids)
    assert all(again[i][1] == first[i][1] for i in ids[:6])  # kept exactly (ids[0] not rescored as blank)
    assert summary(out)["scored"] == 10 and not summary(out)["warnings"]
    assert not list((out / "_work" / "retry").glob("part-*"))


# ------------------------------------------------------------------ class 5, 8: the service
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        st = self.server.state
        with st["lock"]:
            st["hits"] += 1
        if st["mode"] == "slow503":
            time.sleep(0.3)
            body, code = b"busy", 503
        else:
            ra = float(self.path.split("ra=")[1].split("&")[0])
            body, code = st["bodies"].get(round(ra, 4), st["default"]), 200
        self.send_response(code)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(port=0, mode="ok", bodies=None):
    srv = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None  # clients giving up mid-response are expected
    srv.state = {"lock": threading.Lock(), "hits": 0, "mode": mode, "bodies": bodies or {}, "default": jpeg(galaxy(40))}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_down_then_back(tmp_path, fast):
    port = _free_port()  # nothing listens there yet
    ids = [f"s{i}" for i in range(8)]
    ras = 150 + np.arange(8) * 0.01
    cat = catalog(tmp_path / "s.csv", ids, ras, np.full(8, 2.0))
    out = tmp_path / "out"
    argv = (
        cat,
        "--cutout-service",
        f"http://127.0.0.1:{port}/cut",
        "-o",
        out,
        "--service-retries",
        "1",
        "--service-timeout",
        "2",
        *fast,
    )
    r = cli(*argv)
    no_traceback(r)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "fetch_failed 8: ra=" in r.stdout and f"connection refused by 127.0.0.1:{port}" in r.stdout
    assert any("no row could be scored" in w for w in summary(out)["warnings"])
    bodies = {
        round(ras[1], 4): jpeg(galaxy(41, 8)),  # 8x8
        round(ras[2], 4): cut(jpeg(galaxy(42)), 1 / 3),  # cut short, EOI kept
        round(ras[3], 4): jpeg(np.zeros((S, S, 3), np.uint8)),  # black
        round(ras[4], 4): png(np.dstack([galaxy(43), np.full((S, S), 255, np.uint8)])),  # opaque RGBA
        round(ras[5], 4): png(np.dstack([galaxy(44), np.full((S, S), 128, np.uint8)])),  # half transparent
    }
    srv = _serve(port, bodies=bodies)  # the service comes back
    try:
        r = cli(*argv)
    finally:
        srv.shutdown()
        srv.server_close()
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {k: v[0] for k, v in by_id(out).items()}
    assert got == {
        "s0": "ok",
        "s1": "small_image",
        "s2": "bad_image",
        "s3": "blank_image",
        "s4": "ok",
        "s5": "bad_image",
        "s6": "ok",
        "s7": "ok",
    }
    assert srv.state["hits"] == 8


def test_service_total_time_limit_ends_retries():
    srv = _serve(mode="slow503")
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/cut"
        rows = pd.DataFrame({"id": ["a"], "ra": [150.0], "dec": [2.0]})
        with ServiceSource(url, PreprocessSpec(), timeout=5, retries=20, backoff=0.01, total_timeout=1.0) as src:
            _, status = src.fetch(rows)
        assert status.tolist() == ["fetch_failed"]
        assert srv.state["hits"] < 21  # far fewer than retries + 1 attempts
        assert "total time limit (1 s)" in src.examples["fetch_failed"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_bad_service_options_are_one_line_errors(tmp_path):
    cat = catalog(tmp_path / "c.csv", ["a"])
    url = "http://127.0.0.1:9/cut"
    one_line_error(
        cli(cat, "--cutout-service", url, "--service-timeout", "0", "-o", tmp_path / "o"), "--service-timeout"
    )
    one_line_error(
        cli(cat, "--cutout-service", url, "--service-retries", "-1", "-o", tmp_path / "o"), "--service-retries"
    )
    one_line_error(
        cli(cat, "--cutout-service", url, "--service-total-timeout", "-5", "-o", tmp_path / "o"),
        "--service-total-timeout",
    )
