"""FrameSource: footprint index from headers, field choice, per-band WCS cutouts, colour, failures.

Real SDSS frames (../shared) for the index, the M2843 match against its SkyServer JPEG, edge and
corrupt frames; small synthetic frames with a real astropy TAN WCS for overlaps and fallbacks.
"""

from __future__ import annotations

import bz2
import io
import shutil

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from scipy.ndimage import map_coordinates

from mergerscan.cutouts import footprint
from mergerscan.cutouts import frames as F
from mergerscan.cutouts.frames import FrameSource, build_frame_index, composite, composite_reference
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.sources import SourceConfig, open_source

M2843 = dict(id="M2843", ra=229.52556, dec=42.745853)
FIELD = "3918-3-213"
SMALL = PreprocessSpec(stamp_pixels=32, input_size=16)


def _rows(*objs) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": [f"o{i}" for i in range(len(objs))], "ra": [o[0] for o in objs], "dec": [o[1] for o in objs]}
    )


@pytest.fixture()
def count_headers(monkeypatch):
    calls = []
    real = footprint.read_header
    monkeypatch.setattr(footprint, "read_header", lambda p: (calls.append(p), real(p))[1])
    return calls


# ------------------------------------------------------------------------- real SDSS frames
@pytest.fixture(scope="module")
def real(frames_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("idx") / "index.json"
    src = FrameSource(frames_dir, PreprocessSpec(), index_cache=cache)
    yield src, cache
    src.close()


def test_index_from_headers_and_cached(real, frames_dir, count_headers):
    src, cache = real
    idx = src.index
    assert len(idx["fields"]) == 6 and not idx["unreadable"] and len(idx["files"]) == 18
    f = idx["fields"][FIELD]
    assert (f["run"], f["camcol"], f["field"]) == (3918, 3, 213) and set(f["bands"]) == set("gri")
    e = idx["files"][f["bands"]["r"]]
    assert e["shape"] == [1489, 2048] and e["wcs"]["CTYPE1"] == "RA---TAN" and 0.1 < e["radius"] < 0.2
    assert cache.exists()
    again = build_frame_index(frames_dir, cache=cache)  # second call: no header read
    assert count_headers == [] and again["files"] == idx["files"]


def test_m2843_matches_skyserver_jpeg(real, gz_dir):
    src, _ = real
    st, status = src.fetch(pd.DataFrame([M2843]))
    assert status.tolist() == ["ok"] and src.locate(M2843["ra"], M2843["dec"]) == [[FIELD]]
    a = st[0].astype(float)
    j = np.asarray(Image.open(gz_dir / "images" / "M2843.jpg").convert("RGB"), float)
    # calibrate_stretch.py measured (fitted STRETCH_DEFAULT): channel means 13.4/10.0/8.4 vs
    # 13.7/10.2/8.7 (|diff| <= 0.35 counts); 1.0 count still flags a stretch off by ~5 % (the
    # uncalibrated default was 4.7 counts off in R, 2.1 in B).
    assert np.abs(a.mean((0, 1)) - j.mean((0, 1))).max() < 1.0
    # pixel correlation measured 0.949 over all channels (0.936..0.961 per channel) despite a
    # 1.2 px offset to the JPEG and its compression-smoothed noise; bound with margin
    assert np.corrcoef(a.ravel(), j.ravel())[0, 1] > 0.93
    for c in range(3):
        assert np.corrcoef(a[..., c].ravel(), j[..., c].ravel())[0, 1] > 0.92
    # orientation: north up, east left -- the unflipped JPEG matches far better than any flip
    lum_a, lum_j = a.sum(2), j.sum(2)
    corr = lambda b: np.corrcoef(lum_a.ravel(), b.ravel())[0, 1]
    flips = [np.flipud(lum_j), np.fliplr(lum_j), np.rot90(lum_j, 2), lum_j.T, np.rot90(lum_j), np.rot90(lum_j, 3)]
    assert corr(lum_j) > max(corr(b) for b in flips) + 0.2


def test_cutout_geometry_against_astropy(real):
    """Each band's stamp equals a brute-force resampling: every output pixel's sky position from an
    astropy TAN WCS (north up: CD2_2 < 0 with row 0 on top; east left: CD1_1 < 0) -> band pixel via
    the band's own WCS -> scipy bilinear."""
    src, _ = real
    s, scale = src.spec.stamp_pixels, src.spec.pixel_scale / 3600
    bands, key, edge = src.band_stamps(M2843["ra"], M2843["dec"])
    assert key == FIELD and not edge
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crval = [M2843["ra"], M2843["dec"]]
    out.wcs.crpix = [(s + 1) / 2, (s + 1) / 2]
    out.wcs.cd = [[-scale, 0], [0, -scale]]
    rows, cols = np.mgrid[:s, :s]
    ra, dec = out.all_pix2world(cols.ravel(), rows.ravel(), 0)
    fi = src.field_keys.index(FIELD)
    for b, (w, img) in enumerate(zip(src.field(fi).wcs, src._load(fi))):
        x, y = w.all_world2pix(ra, dec, 0)
        ref = map_coordinates(img, [y, x], order=1, prefilter=False).reshape(s, s)
        assert np.abs(bands[b] - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_outside_and_edge(real):
    src, _ = real
    f = src.field(FIELD)
    ((ra_e, dec_e),) = f.ref_wcs.wcs_pix2world([[40.0, 700.0]], 0)  # 40 px from the r frame's edge
    st, status = src.fetch(_rows((M2843["ra"], M2843["dec"]), (10.0, -30.0), (ra_e, dec_e)))
    assert status.tolist() == ["ok", "outside_footprint", "edge"]
    assert not st[1].any()
    # missing pixels are exactly 0 in every band (the sky-subtracted frames are never exactly 0)
    bands, key, edge = src.band_stamps(ra_e, dec_e)
    assert key == FIELD and edge
    assert 0.15 < (bands == 0).all(axis=0).mean() < 0.5  # ~(128-40)/256 of the stamp
    assert not (src.band_stamps(M2843["ra"], M2843["dec"])[0] == 0).any()


def test_corrupt_frame_and_unreadable_header(frames_dir, tmp_path):
    for b in "gri":
        shutil.copy(frames_dir / f"frame-{b}-003918-3-0213.fits.bz2", tmp_path)
    g = tmp_path / "frame-g-003918-3-0213.fits.bz2"
    g.chmod(0o644)
    body = bytearray(g.read_bytes())
    body[1_500_000:1_500_400] = bytes(400)  # garble a block mid-file
    g.write_bytes(bytes(body))
    (tmp_path / "frame-u-003918-3-0213.fits.bz2").write_bytes(b"BZh9 not really a frame")
    with FrameSource(tmp_path, PreprocessSpec()) as src:  # cache next to the frames
        idx = src.index
        assert list(idx["unreadable"]) == ["frame-u-003918-3-0213.fits.bz2"]
        assert set(idx["fields"][FIELD]["bands"]) == set("gri")  # header read by streaming
        st, status = src.fetch(_rows((M2843["ra"], M2843["dec"]), (10.0, -30.0)))
    assert status.tolist() == ["corrupt_frame", "outside_footprint"] and not st.any()
    assert (tmp_path / F.INDEX_NAME).exists()


# ------------------------------------------------------------------------- synthetic frames
def _wcs(ra, dec, shift=(0.0, 0.0), n=(200, 150), angle=30.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [n[0] / 2 + shift[0], n[1] / 2 + shift[1]]
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    w.wcs.cd = 0.396 / 3600 * np.array([[-c, s], [s, c]])  # rotated, like SDSS frames
    return w


def _write(path, w: WCS, data: np.ndarray, two_streams=True):
    """bz2 FITS; optionally two bz2 streams (header | data) so the data can be garbled alone."""
    buf = io.BytesIO()
    fits.PrimaryHDU(data.astype(np.float32), w.to_header()).writeto(buf)
    raw = buf.getvalue()
    body = bz2.compress(raw[: 2880 * 2]) + bz2.compress(raw[2880 * 2 :]) if two_streams else bz2.compress(raw)
    path.write_bytes(body)


def _field(tmp, field, w_r: WCS, level, star, n=(200, 150)):
    """Frames g, r, i of one field: a flat sky of ``level`` plus a point source at ``star`` (ra, dec);
    the bands' WCS are offset by a few pixels, as in SDSS."""
    for k, b in enumerate("gri"):
        w = _wcs(*w_r.wcs.crval, shift=(3.0 * (k - 1), -2.0 * (k - 1)), n=n)
        ((x, y),) = w.wcs_world2pix([star], 0)
        yy, xx = np.mgrid[: n[1], : n[0]]
        img = level + 5.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
        _write(tmp / f"frame-{b}-000001-1-{field:04d}.fits.bz2", w, img)


@pytest.fixture()
def overlap(tmp_path):
    """Fields A (1) and B (2) overlap by 140 of 200 columns; B is A moved 60 px along A's x."""
    a = _wcs(150.0, 2.0)
    b_centre = a.wcs_pix2world([[a.wcs.crpix[0] - 1 + 60, a.wcs.crpix[1] - 1]], 0)[0]
    b = _wcs(*b_centre)
    obj = a.wcs_pix2world([[170.0, 75.0]], 0)[0]  # A edge 29.5 px, B edge ~74 px
    _field(tmp_path, 1, a, 0.05, obj)
    _field(tmp_path, 2, b, 0.5, obj)
    return tmp_path, a, b, obj


def test_overlap_picks_farthest_from_edge(overlap):
    d, _a, _b, obj = overlap
    with FrameSource(d, SMALL, index_cache=None) as src:
        assert src.locate(*obj) == [["1-1-2", "1-1-1"]]
        st, status = src.fetch(_rows(obj))
    assert status.tolist() == ["ok"]
    stamp = st[0].astype(float)
    corner = stamp[:4, :4].mean()
    assert corner > composite([np.full((1, 1), 0.3)] * 3, SMALL.stretch).mean()  # B's bright sky
    # the point source is centred in all three channels although the band WCS differ
    for c in range(3):
        yx = np.unravel_index(stamp[..., c].argmax(), stamp.shape[:2])
        assert abs(yx[0] - 15.5) <= 1 and abs(yx[1] - 15.5) <= 1


def test_corrupt_best_field_falls_back(overlap):
    d, a, b, obj = overlap
    g = d / "frame-g-000001-1-0002.fits.bz2"
    body = bytearray(g.read_bytes())
    body[-200:-150] = b"\x55" * 50  # garble B's data stream
    g.write_bytes(bytes(body))
    only_b = b.wcs_pix2world([[185.0, 75.0]], 0)[0]  # outside A
    edge_a = a.wcs_pix2world([[5.0, 75.0]], 0)[0]  # outside B, 5 px from A's edge
    with FrameSource(d, SMALL, index_cache=None) as src:
        assert not src.index["unreadable"]
        st, status = src.fetch(_rows(obj, only_b, edge_a))
        assert src.stats["fields_unreadable"] == 1
    assert status.tolist() == ["ok", "corrupt_frame", "edge"]
    assert st[0, :4, :4].mean() < composite([np.full((1, 1), 0.3)] * 3, SMALL.stretch).mean()  # A's sky
    assert not st[1].any() and (st[2] == 0).all(axis=2).any()


def test_index_invalidated_per_file(overlap, count_headers):
    d, _a, _b, _obj = overlap
    cache = d / "idx.json"
    first = build_frame_index(d, cache=cache)
    assert len(count_headers) == 6 and len(first["fields"]) == 2
    build_frame_index(d, cache=cache)
    assert len(count_headers) == 6  # cached
    _write(d / "frame-r-000001-1-0001.fits.bz2", _wcs(151.0, 2.0), np.zeros((150, 200)))
    changed = build_frame_index(d, cache=cache)
    assert len(count_headers) == 7  # only the rewritten file
    assert changed["files"]["frame-r-000001-1-0001.fits.bz2"]["wcs"]["CRVAL1"] == 151.0
    (d / "frame-g-000001-1-0002.fits.bz2").unlink()
    assert "g" not in build_frame_index(d, cache=cache)["fields"]["1-1-2"]["bands"]


def test_composite_equals_make_lupton_rgb():
    rng = np.random.default_rng(0)
    bands = [rng.normal(0, 0.03, (64, 64)) + rng.exponential(0.2, (64, 64)) for _ in range(3)]
    for stretch in (PreprocessSpec().stretch, {"scales": [2.0, 1.0, 0.5], "Q": 3.0, "stretch": 0.05, "minimum": -0.01}):
        d = np.abs(composite(bands, stretch).astype(int) - composite_reference(bands, stretch))
        assert d.max() <= 1 and (d > 0).mean() < 1e-3


def test_open_source_frames(overlap):
    d, _a, _b, obj = overlap
    src = open_source(SourceConfig("frames", str(d), (("index_cache", None), ("threads", 4))), SMALL)
    st, status = src.fetch(_rows(obj, (0.0, 0.0)))
    assert status.tolist() == ["ok", "outside_footprint"] and st.shape == (2, 32, 32, 3)
    src.close()


def test_frames_options_are_checked_and_low_memory_keeps_one_field(overlap):
    d, _a, _b, obj = overlap
    with pytest.raises(ValueError) as e:
        open_source(SourceConfig("frames", str(d), (("max_field", 2),)), SMALL)
    msg = str(e.value)
    assert "\n" not in msg and "image source 'frames': unknown option 'max_field'" in msg
    assert "did you mean 'max_fields'?" in msg and "index_cache" in msg
    with pytest.raises(ValueError, match="unknown option 'timeout'"):  # a service option is not a frames one
        FrameSource(d, SMALL, index_cache=None, timeout=3.0)
    cfg = SourceConfig("frames", str(d), (("index_cache", None), ("max_fields", 6)))
    low = cfg.low_memory()
    assert dict(low.options) == {"index_cache": None, "max_fields": 1} and low.kind == "frames"
    with open_source(low, SMALL) as src:
        assert src.max_fields == 1
        _st, status = src.fetch(_rows(obj))
    assert status.tolist() == ["ok"]


def test_distorted_wcs_uses_node_interpolation(tmp_path):
    """A TAN-SIP frame (strong quadratic distortion): the affine shortcut is refused and the
    9x9-node interpolation of exact (SIP-aware) coordinates matches a brute-force resampling."""
    n = (300, 300)
    w = _wcs(40.0, -5.0, n=n)
    hdr = w.to_header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    hdr.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 2e-4, "A_1_1": 5e-5, "B_0_2": -2e-4, "B_1_1": 1e-4})
    ws = WCS(hdr)
    yy, xx = np.mgrid[: n[1], : n[0]]
    img = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2.0).astype(np.float32)  # smooth, non-trivial
    for b in "gri":
        buf = io.BytesIO()
        fits.PrimaryHDU(img, hdr).writeto(buf)
        (tmp_path / f"frame-{b}-000002-3-0004.fits.bz2").write_bytes(bz2.compress(buf.getvalue()))
    spec = PreprocessSpec(stamp_pixels=64, input_size=32)
    obj = ws.all_pix2world([[170.0, 140.0]], 0)[0]
    with FrameSource(tmp_path, spec, index_cache=None) as src:
        bands, key, edge = src.band_stamps(*obj)
    assert key == "2-3-4" and not edge
    s, scale = 64, 0.396 / 3600
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crval = list(obj)
    out.wcs.crpix = [(s + 1) / 2, (s + 1) / 2]
    out.wcs.cd = [[-scale, 0], [0, -scale]]
    rows, cols = np.mgrid[:s, :s]
    x, y = ws.all_world2pix(*out.all_pix2world(cols.ravel(), rows.ravel(), 0), 0)
    ref = map_coordinates(img, [y, x], order=1, prefilter=False).reshape(s, s)
    assert np.abs(bands[0] - ref).max() < 2e-3  # node interpolation error
    # ...whereas ignoring the distortion would be far off
    x0, y0 = WCS(w.to_header()).wcs_world2pix(*out.all_pix2world(cols.ravel(), rows.ravel(), 0), 0)
    assert np.abs(map_coordinates(img, [y0, x0], order=1).reshape(s, s) - ref).max() > 0.1


def test_frames_in_subdirectories(overlap):
    """SDSS's own layout nests frames as RERUN/RUN/CAMCOL/: they are indexed too."""
    d, _a, _b, obj = overlap
    sub = d / "301" / "1" / "1"
    sub.mkdir(parents=True)
    for p in d.glob("frame-*-0002.fits.bz2"):
        p.rename(sub / p.name)
    with FrameSource(d, SMALL, index_cache=None) as src:
        assert src.index["fields"]["1-1-2"]["bands"]["r"] == "301/1/1/frame-r-000001-1-0002.fits.bz2"
        assert src.locate(*obj) == [["1-1-2", "1-1-1"]]
        assert src.fetch(_rows(obj))[1].tolist() == ["ok"] and src.stats["fields_read"] == 1


def test_default_cache_never_written_into_read_only_dir(overlap, tmp_path_factory, monkeypatch):
    d, _a, _b, _obj = overlap
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    assert footprint.default_cache(d) == d / F.INDEX_NAME
    d.chmod(0o555)  # read-only data directory (even for root)
    try:
        build_frame_index(d)
        assert not (d / F.INDEX_NAME).exists()
        assert len(list((home / "mergerscan").glob("frames-index-*.json"))) == 1
    finally:
        d.chmod(0o755)
