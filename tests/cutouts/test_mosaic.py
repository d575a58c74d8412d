"""Mosaicked frame stamps on real pixels: a real SDSS field (g, r, i) split into overlapping
sub-frames, each written as its own frame file (same naming, its own field number, CRPIX shifted).

Objects near the cuts must get the stamp the whole frame gives (to 1 count per channel), the
same ``p_merger`` through ``process-catalog --frames`` on a real Dask scheduler (default engine,
to 1e-4), and never ``edge``: on both sides of a cut and at the corner of four sub-frames.  Also:
two overlapping frames of different runs whose calibrations differ by 3 % (filled, not edge, a
step at the seam), and a corrupt neighbouring frame (the best frame alone + ``edge``, nothing lost).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from conftest import assert_fits_equals_parquet, read_out, run_cli, write_fits_catalog
from mergerscan.cutouts.frame_io import read_frame, read_header
from mergerscan.cutouts.frames import FrameSource
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.pipeline.finalize import format_summary
from mergerscan.run_summary import RunSummary

pytestmark = pytest.mark.shared

RUN, CAMCOL, FIELD = 3918, 3, 213  # a real shared field: 2048 x 1489 px per band
W, H = 2048, 1489
XC, YC, OV = 1024, 744, 64  # cut lines; sub-frames reach OV px past them (128 px overlap, as SDSS fields)
# frame pixels (r band) of the test objects: beside the vertical cut, on both sides, and at the
# corner where the four quarters meet (the 256 px north-up stamp spans up to 181 px from its centre)
NEAR_CUT = [(990, 744), (1060, 700), (1024, 520), (1000, 720), (1050, 770), (1030, 730), (985, 790)]
INSIDE = [(400, 350)]  # whole stamp inside the top-left quarter: the best frame alone covers it


def _name(band: str, run: int, field: int) -> str:
    return f"frame-{band}-{run:06d}-{CAMCOL}-{field:04d}.fits"


@pytest.fixture(scope="module")
def bands(frames_dir):
    """The real field's (header, image) per band."""
    out = {}
    for b in "gri":
        p = frames_dir / f"frame-{b}-{RUN:06d}-{CAMCOL}-{FIELD:04d}.fits.bz2"
        out[b] = (read_header(p), read_frame(p))
    return out


def _write_sub(d, bands, run, field, box, scale=1.0):
    """One sub-frame of every band: pixels [y0:y1, x0:x1] (times ``scale``), CRPIX shifted."""
    x0, y0, x1, y1 = box
    for b, (hdr, img) in bands.items():
        h = hdr.copy()
        for k in ("BZERO", "BSCALE"):
            h.remove(k, ignore_missing=True)
        h["CRPIX1"] -= x0
        h["CRPIX2"] -= y0
        fits.PrimaryHDU(img[y0:y1, x0:x1] * np.float32(scale), h).writeto(d / _name(b, run, field))


def _halves():
    return [(0, 0, XC + OV, H), (XC - OV, 0, W, H)]


def _quarters():
    return [(x0, y0, x1, y1) for y0, y1 in ((0, YC + OV), (YC - OV, H)) for x0, x1 in ((0, XC + OV), (XC - OV, W))]


@pytest.fixture(scope="module")
def layouts(bands, frames_dir, tmp_path_factory):
    """Frame directories: the whole field (links to the shared files), 2 halves, 4 quarters."""
    whole = tmp_path_factory.mktemp("whole")
    for b in "gri":
        name = f"frame-{b}-{RUN:06d}-{CAMCOL}-{FIELD:04d}.fits.bz2"
        (whole / name).symlink_to(frames_dir / name)
    out = {"whole": whole}
    for name, boxes in (("halves", _halves()), ("quarters", _quarters())):
        d = tmp_path_factory.mktemp(name)
        for k, box in enumerate(boxes):
            _write_sub(d, bands, RUN, 901 + k, box)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def catalog(bands, tmp_path_factory):
    """The test objects (ra, dec from the r frame's WCS) and one row off the footprint."""
    with warnings.catch_warnings():  # SDSS's deprecated RADECSYS
        warnings.simplefilter("ignore")
        w = WCS(bands["r"][0])
    px = np.array(NEAR_CUT + INSIDE, float)
    ra, dec = w.all_pix2world(px[:, 0], px[:, 1], 0)
    df = pd.DataFrame(
        {
            "objid": 1237000000000000000 + np.arange(len(px) + 1, dtype=np.int64),
            "ra": np.r_[ra, 10.0],
            "dec": np.r_[dec, -30.0],
        }
    )
    path = tmp_path_factory.mktemp("cat") / "near_cuts.fits"
    write_fits_catalog(path, df)
    return path, df


def _fetch(directory, df, batch=None, **options):
    """Stamps, statuses, source stats and located fields of df's rows, fetched ``batch`` at a time
    through one source (one partition)."""
    rows = pd.DataFrame({"id": df["objid"].astype(str), "ra": df["ra"], "dec": df["dec"]}).reset_index(drop=True)
    batch = batch or len(rows)
    with FrameSource(directory, PreprocessSpec(), index_cache=None, **options) as src:
        parts = [src.fetch(rows.iloc[i : i + batch].reset_index(drop=True)) for i in range(0, len(rows), batch)]
        stamps, status = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return stamps, status, dict(src.stats), src.locate(df["ra"], df["dec"])


def test_split_frames_give_the_whole_frame_stamp(layouts, catalog):
    _path, df = catalog
    ref, ref_status, _, _ = _fetch(layouts["whole"], df)
    assert ref_status.tolist() == ["ok"] * (len(df) - 1) + ["outside_footprint"]
    n_near = len(NEAR_CUT)
    for name, sub in (("halves", 2), ("quarters", 4)):
        st, status, stats, located = _fetch(layouts[name], df)
        assert status.tolist() == ref_status.tolist(), name  # not edge: the neighbours fill the stamps
        diff = np.abs(st.astype(int) - ref.astype(int))
        assert diff.max() <= 1, (name, diff.max())
        # every field was read once (the cache), and the stamps near the cuts needed the neighbours
        assert stats["fields_read"] == sub and stats["mosaicked"] >= n_near, (name, stats)
        # both sides of the cut: the best field differs among the objects near it
        assert len({keys[0] for keys in located[:n_near]}) >= 2, name
        if name == "quarters":  # the corner: objects whose best field is each of the four quarters
            assert len({keys[0] for keys in located[3:n_near]}) == 4, located
    # deterministic: another order, other batches and a one-field cache give the same stamps
    back, back_status, stats1, _ = _fetch(layouts["quarters"], df.iloc[::-1], batch=3, max_fields=1)
    assert np.array_equal(back[::-1], st) and back_status[::-1].tolist() == status.tolist()
    assert stats1["fields_read"] >= 4
    # the corner objects' stamps draw on all four quarters; a single frame leaves them edge
    st1, status1, _, _ = _fetch(layouts["quarters"], df, mosaic=False)
    assert (status1[:n_near] == "edge").all() and status1[n_near] == "ok"
    assert (st1[:n_near] == 0).all(axis=3).any(axis=(1, 2)).all()  # black wedges, which the mosaic fills


def test_split_frames_same_p_merger_through_process_catalog(layouts, catalog, dask_client, tmp_path):
    """process-catalog --frames on a real Dask scheduler with the default engine: the same
    statuses and p_merger (to 1e-4) from the whole frame and its quarters (the objects lie on both
    sides of both cuts and around the corner; the halves give the same stamps, tested above)."""
    path, df = catalog
    got = {}
    for name in ("whole", "quarters"):
        d = layouts[name]
        out = tmp_path / name
        rc, _, _ = run_cli(dask_client, path, "--frames", d, "-o", out)
        assert rc == 0, name
        got[name] = read_out(out).set_index("objid").loc[df["objid"]]
    ref, quarters = got["whole"], got["quarters"]
    assert ref["status"].tolist() == quarters["status"].tolist() == ["ok"] * (len(df) - 1) + ["outside_footprint"]
    np.testing.assert_allclose(quarters["p_merger"], ref["p_merger"], atol=1e-4, rtol=0)
    assert_fits_equals_parquet(tmp_path / "quarters")


def test_different_runs_with_different_calibrations(bands, layouts, catalog, tmp_path, cheap_cli):
    """Two frames of different runs overlap; the second's calibration is 3 % brighter.  The
    stamps are filled (not edge); each pixel comes from one frame, so the seam is a 3 % step."""
    _path, df = catalog
    (a, b) = _halves()
    _write_sub(tmp_path, bands, RUN, 901, a)
    _write_sub(tmp_path, bands, 4263, 55, b, scale=1.03)  # another run, another calibration
    with (
        FrameSource(layouts["whole"], PreprocessSpec(), index_cache=None) as whole,
        FrameSource(tmp_path, PreprocessSpec(), index_cache=None) as mixed,
    ):
        for ra, dec in zip(df["ra"][: len(NEAR_CUT)], df["dec"][: len(NEAR_CUT)]):
            ref, _, _ = whole.band_stamps(ra, dec)
            got, key, edge = mixed.band_stamps(ra, dec)
            assert not edge and not (got == 0).all(axis=0).any()
            same = np.isclose(got, ref, rtol=1e-5, atol=1e-6)
            brighter = np.isclose(got, 1.03 * ref, rtol=1e-5, atol=1e-6) & ~same
            assert (same | brighter).all()  # each pixel from exactly one frame: no blending
            assert same.any() and brighter.any()  # a seam runs through the stamp
            # the best field's pixels are the ones it covers: all of them where it is the scaled run
            if key.startswith("4263"):
                assert brighter.mean() > same.mean()
    rc, _, _ = cheap_cli(_path, "--frames", tmp_path, "-o", tmp_path / "out")
    got = read_out(tmp_path / "out")
    assert rc == 0 and got["status"].tolist() == ["ok"] * (len(df) - 1) + ["outside_footprint"]


def test_corrupt_neighbour_falls_back_to_the_best_frame(bands, catalog, tmp_path, cheap_cli):
    """The right half's g frame is truncated (its header, hence the index, intact): stamps are cut
    from the left half alone, are edge, and equal the single-frame stamps; nothing is lost."""
    path, df = catalog
    for k, box in enumerate(_halves()):
        _write_sub(tmp_path, bands, RUN, 901 + k, box)
    g = tmp_path / _name("g", RUN, 902)
    g.write_bytes(g.read_bytes()[: 2880 * 30])  # header + a little of the data
    st, status, stats, located = _fetch(tmp_path, df)
    alone, alone_status, _, _ = _fetch(tmp_path, df, mosaic=False)
    n_near = len(NEAR_CUT)
    assert stats["fields_unreadable"] == 1
    assert (status[:n_near] == "edge").all() and status[n_near] == "ok" and status[-1] == "outside_footprint"
    assert np.array_equal(st, alone) and alone_status.tolist() == status.tolist()
    assert any(keys[0] == f"{RUN}-{CAMCOL}-902" for keys in located)  # some had the corrupt one as best
    rc, _, _ = cheap_cli(path, "--frames", tmp_path, "-o", tmp_path / "out")
    got = read_out(tmp_path / "out")
    assert rc == 0 and len(got) == len(df) and got["objid"].tolist() == df["objid"].tolist()
    assert got["status"].tolist() == status.tolist()
    assert got.loc[got["status"] == "edge", "p_merger"].notna().all()
    # the summary says how much of an edge stamp is sky, in summary.json and in the printed summary
    summary = RunSummary.from_dict(json.loads((tmp_path / "out" / "summary.json").read_text()))
    assert re.search(r"\d+(\.\d)?% of the stamp is covered by no readable frame", summary.scored_notes["edge"])
    line = next(x for x in format_summary(summary).splitlines() if "near frame edge" in x)
    assert summary.scored_notes["edge"] in line
