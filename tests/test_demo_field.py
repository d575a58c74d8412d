"""The synthetic demo field: SDSS-like frames + catalog, deterministic, WCS consistent with the catalog."""

from __future__ import annotations

import bz2
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import fitsio
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from mergerscan.demo import OBJID0, make_demo_field

NAME = re.compile(r"frame-[gri]-\d{6}-\d-\d{4}\.fits\.bz2")
SMALL = dict(n_fields=1, galaxies_per_field=4, mergers_per_field=2, stars_per_field=4)


def _frame(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a header astropy has to fix is a bug here
        hdu = fits.open(io.BytesIO(bz2.decompress(Path(path).read_bytes())))[0]
        return hdu.data, hdu.header, WCS(hdu.header)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """The default field, made through the CLI (python -m mergerscan.demo OUT_DIR)."""
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(
        [sys.executable, "-m", "mergerscan.demo", str(out)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    printed = res.stdout.split()
    frames = sorted(p for p in printed if p.endswith(".fits.bz2"))
    assert printed[-1] == str(out / "demo-catalog.fits") and len(frames) == 6
    return out, [(p, *_frame(p)) for p in frames], fitsio.read(str(out / "demo-catalog.fits"))


def test_deterministic(tmp_path):
    a = make_demo_field(tmp_path / "a", seed=3, **SMALL)
    b = make_demo_field(tmp_path / "b", seed=3, **SMALL)
    c = make_demo_field(tmp_path / "c", seed=4, **SMALL)
    for pa, pb, pc in zip(a["frames"], b["frames"], c["frames"]):
        assert Path(pa).name == Path(pb).name
        assert bz2.decompress(Path(pa).read_bytes()) == bz2.decompress(Path(pb).read_bytes())
        assert not np.array_equal(_frame(pa)[0], _frame(pc)[0])
    ca, cb = fitsio.read(a["catalog"]), fitsio.read(b["catalog"])
    assert ca.tobytes() == cb.tobytes()


def test_files_and_headers(field):
    _, frames, _ = field
    assert len(frames) == 6
    assert all(NAME.fullmatch(Path(p).name) for p, *_ in frames)
    for p, data, hdr, wcs in frames:
        assert data.dtype == np.dtype(">f4") and data.shape == (745, 1024)
        assert hdr["BUNIT"] == "nanomaggy" and hdr["FILTER"] == Path(p).name[6]
        assert wcs.wcs.ctype[0] == "RA---TAN" and wcs.wcs.ctype[1] == "DEC--TAN"
        assert abs(hdr["CD1_2"]) > 1e-5  # rotated, not north-up
        assert np.isclose(np.sqrt(abs(np.linalg.det(wcs.wcs.cd))) * 3600, 0.396, rtol=1e-3)
        sky = 1.4826 * np.median(np.abs(data - np.median(data)))
        assert 0.01 < sky < 0.08  # SDSS-like sky noise, nmgy
    crvals = {tuple(w.wcs.crval) for *_, w in frames}
    assert len(crvals) == 6  # every band has its own WCS


def _inside(wcs, ra, dec, margin=0.0):
    x, y = wcs.world_to_pixel_values(ra, dec)
    return (x >= -0.5 + margin) & (x < 1023.5 - margin) & (y >= -0.5 + margin) & (y < 744.5 - margin), x, y


def test_catalog_objects_on_flux(field):
    _, frames, cat = field
    assert cat["objid"].dtype.kind == "i" and cat["objid"].dtype.itemsize == 8
    assert np.array_equal(cat["objid"] - OBJID0, np.arange(len(cat)))  # exact int64
    assert set(np.char.strip(cat["truth"].astype(str))) == {"merger", "galaxy", "star"}
    assert (np.char.strip(cat["truth"].astype(str)) == "merger").sum() == 16
    assert np.isfinite(cat["ra"]).all() and np.isfinite(cat["dec"]).all()
    n_cover = np.zeros(len(cat), int)
    for p, data, _hdr, wcs in frames:
        inside, x, y = _inside(wcs, cat["ra"], cat["dec"], margin=2)
        sky = np.median(data)
        sigma = 1.4826 * np.median(np.abs(data - sky))
        for i in np.where(inside)[0]:
            ix, iy = round(float(x[i])), round(float(y[i]))
            box = data[iy - 1 : iy + 2, ix - 1 : ix + 2]
            assert box.mean() > sky + sigma, (p, cat["objid"][i], cat["truth"][i], box.mean())
        n_cover += inside
    n_cover //= 3
    # overlapping fields: some objects lie on both fields' frames
    assert (n_cover == 2).any()
    outside = n_cover == 0
    assert outside.sum() == 5
    for *_, wcs in frames:  # and far from every frame, not on an edge
        inside, *_ = _inside(wcs, cat["ra"][outside], cat["dec"][outside], margin=-200)
        assert not inside.any()
