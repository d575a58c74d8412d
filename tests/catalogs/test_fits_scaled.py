"""FITS catalogs whose columns are stored scaled (TSCALn/TZEROn) and with TNULLn, read as the FITS
standard says (issue 34, class 2): physical = TZERO + TSCAL x stored, TNULL compared on the stored
integer, the unsigned conventions (I/J/K + 2^15/2^31/2^63) and the signed byte (B - 128) exact.

The files are built here byte by byte (header cards + big-endian stored values), so neither the
code under test nor a library's writer decides what is stored.  The reference reading is astropy's
(``FITS_rec`` fields) with the null mask taken from the stored values: astropy 8's ``Table.read``
does not null a scaled column's TNULL (it returns TZERO + TSCAL x TNULL), fails on an unsigned
column whose TNULL is below zero, and compares a uint64 TNULL with the physical value.

Cases (one line each):
 1. process-catalog on a catalog with every numeric kind (B, I, J, K, E, D) stored scaled, unsigned
    conventions, TNULL, a scaled vector (TDIM), a logical with a null, text; ra/dec/id scaled:
    Parquet and FITS (read with astropy) equal the reference; positions/HEALPix/scores equal those
    of the same catalog written unscaled
 2. hypothesis: random scale/zero/null/stored values per kind, random row ranges of the reader
    against astropy
 3. complex and bit columns (fixed or variable-length) kept: one-line error naming the column,
    exit 2, nothing written; not kept: the run goes through
 5. variable-length columns (fitsio's ``PA`` text, ``PJ``/``QD`` numbers) kept through process-catalog:
    equal astropy's reading, in Parquet and FITS
 4. a .fits.gz with scaled columns: row ranges equal the plain file's
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import assert_fits_equals_parquet, make_stamps, parquet_table
from mergerscan.catalogs.read import CatalogReader

N = 12
RAW = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "L": "u1"}


def write_raw_fits(path, columns):
    """columns: [(name, TFORM, stored array (n,) or (n, k), {card: value})] -> a FITS file whose
    data are exactly the stored values (big-endian) and whose header carries the cards."""
    n = len(columns[0][2])
    fields = []
    for name, tform, stored, _ in columns:
        code = tform.lstrip("0123456789")
        dt = f"S{tform[:-1] or 1}" if code == "A" else RAW[code]
        fields.append((name, dt, stored.shape[1:]) if stored.ndim > 1 and code != "A" else (name, dt))
    rec = np.zeros(n, dtype=fields)
    hdr = fits.Header(
        [
            ("XTENSION", "BINTABLE"),
            ("BITPIX", 8),
            ("NAXIS", 2),
            ("NAXIS1", rec.dtype.itemsize),
            ("NAXIS2", n),
            ("PCOUNT", 0),
            ("GCOUNT", 1),
            ("TFIELDS", len(columns)),
        ]
    )
    for i, (name, tform, stored, cards) in enumerate(columns, start=1):
        rec[name] = stored
        hdr[f"TTYPE{i}"] = name
        hdr[f"TFORM{i}"] = tform
        for key, value in cards.items():
            hdr[f"{key}{i}"] = value
    data = rec.tobytes()
    primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
    body = primary.tostring().encode() + hdr.tostring().encode() + data + b"\0" * (-len(data) % 2880)
    path.write_bytes(body)
    return path


def reference(path, columns) -> dict:
    """{name: list of Python values, None for null}: astropy's physical values (``FITS_rec``
    fields: TSCAL, TZERO and the unsigned conventions applied), nulls from the stored TNULL
    (astropy's ``Table.read`` skips the TNULL of scaled columns and fails on an unsigned one)."""
    with fits.open(path) as hl:
        data = hl[1].data
        out = {}
        for name, tform, stored, cards in columns:
            values = np.asarray(data[name]).tolist()
            values = [v.decode().rstrip(" ") if isinstance(v, bytes) else v for v in values]
            values = [v.rstrip(" ") if isinstance(v, str) else v for v in values]  # trailing blanks: padding
            null = stored == cards["TNULL"] if "TNULL" in cards else np.zeros(stored.shape, bool)
            if tform.endswith("L"):
                null = stored == 0
            out[name] = _nulled(values, null.reshape(np.shape(values)).tolist())
    return out


def _nulled(values, null):
    if isinstance(values, list):
        return [_nulled(v, m) for v, m in zip(values, null)]
    return None if null else values


def _same(got, want, name):
    """Element by element: None = null (or NaN), numbers exactly equal, lists recursively."""
    assert len(got) == len(want), name
    for i, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, list):
            _same(g, w, f"{name}[{i}]")
        elif w is None:
            assert g is None or (isinstance(g, float) and np.isnan(g)), (name, i, g)
        elif isinstance(w, (str, bool)):
            assert g == w and type(g) is type(w), (name, i, g, w)
        else:
            exact = isinstance(w, int) and not isinstance(g, float)  # ints: no float64 rounding
            assert (int(g) == w) if exact else (float(g) == float(w)), (name, i, g, w)


def stored(rng, code, n, lo=None, hi=None):
    info = np.iinfo(RAW[code].lstrip(">")) if code in "BIJK" else None
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return rng.integers(lo, hi, n, endpoint=True, dtype=np.dtype(RAW[code].lstrip(">")))


def scaled_catalog(n=N, seed=0):
    """The issue's catalog: every numeric kind, scaled; ra/dec/id scaled too."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(150, 150.2, n)
    dec = rng.uniform(2, 2.2, n)
    B, I, J, K = (lambda lo=None, hi=None, c=c: stored(rng, c, n, lo, hi) for c in "BIJK")  # noqa: E741
    with_null = lambda a, v, k=3: np.where(np.arange(n) % k == 1, v, a).astype(a.dtype)
    u64 = K()
    u64[:3] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0]  # 0, 2^64-1, 2^63
    return [
        ("objid", "J", (np.arange(1, n + 1) - 2**31).astype(np.int32), {"TZERO": 2**31}),  # uint32 ids
        ("ra", "J", np.round((ra - 150) / 1e-7).astype(np.int32), {"TSCAL": 1e-7, "TZERO": 150.0}),
        ("dec", "J", np.round(dec / 1e-7).astype(np.int32), {"TSCAL": 1e-7}),
        ("b_plain", "B", B(), {}),
        ("b_int8", "B", B(), {"TZERO": -128}),
        ("b_scaled_null", "B", with_null(B(), 255), {"TSCAL": 0.1, "TZERO": 5.0, "TNULL": 255}),
        ("i_null", "I", with_null(I(), -32768), {"TNULL": -32768}),
        ("i_uint16", "I", I(), {"TZERO": 32768}),
        ("i_uint16_null", "I", with_null(I(), 7), {"TZERO": 32768, "TNULL": 7}),
        ("i_shift", "I", I(), {"TZERO": 1000}),
        ("i_scaled_null", "I", with_null(I(), -1), {"TSCAL": 0.01, "TZERO": -3.0, "TNULL": -1}),
        ("j_uint32", "J", J(), {"TZERO": 2**31}),
        ("j_uint32_null", "J", with_null(J(), 2**31 - 1), {"TZERO": 2**31, "TNULL": 2**31 - 1}),
        ("j_scaled", "J", J(), {"TSCAL": 2.5e-4, "TZERO": -12.0}),
        ("k_plain_null", "K", with_null(K(), -(2**63), 4), {"TNULL": -(2**63)}),
        ("k_uint64", "K", u64, {"TZERO": 2**63}),
        ("k_uint64_null", "K", with_null(K(), 5), {"TZERO": 2**63, "TNULL": 5}),
        ("k_scaled", "K", K(-(10**12), 10**12), {"TSCAL": 1e-3}),  # astropy 8 fails on K with TZERO != 2^63
        ("e_scaled", "E", rng.normal(0, 100, n).astype(np.float32), {"TSCAL": 2.0, "TZERO": 1.0}),
        ("e_plain", "E", rng.normal(0, 100, n).astype(np.float32), {}),
        ("d_scaled", "D", rng.normal(0, 1e6, n), {"TSCAL": 1e-3, "TZERO": -7.5}),
        ("d_plain", "D", rng.normal(0, 1e6, n), {}),
        ("vec_uint16", "6I", I().reshape(-1, 1).repeat(6, 1) // 3, {"TZERO": 32768, "TDIM": "(3,2)"}),
        ("flag", "L", np.array([ord("T"), ord("F"), 0] * (n // 3), np.uint8), {}),
        ("name", "7A", np.array([f"g {i}  ".encode() for i in range(n)]), {}),
    ]


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    d = tmp_path_factory.mktemp("scaled")
    make_stamps(d / "stamps", range(1, N + 1), seed=5, size=64)
    return d / "stamps"


def _astropy_fits(out) -> dict:
    """The output FITS table as astropy reads it, {name: list with None for null}.  astropy
    compares a uint64 column's TNULL with the physical value; the standard (and STILTS) with the
    stored one (value - 2^63): that mask is taken from the header here."""
    t = Table.read(out / "mergers.fits", hdu="MERGERS")
    hdr = fits.getheader(out / "mergers.fits", "MERGERS")
    order = np.argsort(np.asarray(t["input_row"]))
    got = {}
    for k, n in enumerate(t.colnames, start=1):
        values = np.asarray(t[n]).tolist()
        null = np.ma.getmaskarray(t[n]).tolist()
        if hdr.get(f"TZERO{k}") == 2**63 and f"TNULL{k}" in hdr:
            null = [v == hdr[f"TNULL{k}"] + 2**63 for v in values]
        got[n] = [None if m else v for v, m in zip(values, null)]
        got[n] = [got[n][i] for i in order]
    return got


def test_scaled_columns_through_process_catalog(stamps, cheap_cli, tmp_path, capsys):
    cols = scaled_catalog()
    cat = write_raw_fits(tmp_path / "scaled.fits", cols)
    want = reference(cat, cols)
    assert want["ra"][0] != 150.0 and abs(want["ra"][0] - 150.1) < 0.11  # not the bare TZERO
    out = tmp_path / "out"
    rc, _, err = cheap_cli(cat, "--images", stamps, "-o", out, "--keep-columns", "*", capsys=capsys)
    assert rc == 0, err
    got = parquet_table(out).sort_by("input_row")
    fits_out = _astropy_fits(out)
    assert_fits_equals_parquet(out)
    for name, tform, _, _ in cols:
        if name == "objid":
            assert got.column("objid").to_pylist() == list(range(1, N + 1))
            continue
        values = got.column(name).to_pylist()
        if tform.startswith("6"):  # a vector column is carried as JSON text
            values = [json.loads(v) for v in values]
        _same(values, want[name], f"parquet {name}")
        if name in ("flag", "name") or tform.startswith("6"):
            continue  # FITS nulls of booleans are False, text '' (docs/output.md); checked against Parquet above
        _same(fits_out[name], want[name], f"fits {name}")
    assert got.column("flag").to_pylist() == [True, False, None] * (N // 3)
    assert got.column("name").to_pylist() == [f"g {i}" for i in range(N)]

    # the same catalog stored unscaled (float64 positions): same positions, pixels and scores
    plain = pd.DataFrame({"objid": np.arange(1, N + 1), "ra": want["ra"], "dec": want["dec"]})
    pq.write_table(pa_table(plain), tmp_path / "plain.parquet")
    rc, _, err = cheap_cli(tmp_path / "plain.parquet", "--images", stamps, "-o", tmp_path / "o2", capsys=capsys)
    assert rc == 0, err
    ref = parquet_table(tmp_path / "o2").sort_by("input_row")
    for c in ("ra", "dec", "_healpix_29", "p_merger", "status"):
        assert got.column(c).to_pylist() == ref.column(c).to_pylist(), c


def pa_table(df):
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


def test_gzipped_scaled_catalog_row_ranges(tmp_path):
    cols = scaled_catalog(n=30, seed=2)
    plain = write_raw_fits(tmp_path / "s.fits", cols)
    (tmp_path / "s.fits.gz").write_bytes(gzip.compress(plain.read_bytes()))
    want = reference(plain, cols)
    for path in (plain, tmp_path / "s.fits.gz"):
        r = CatalogReader(path, chunk_rows=7)
        try:
            for start, stop in [(0, 30), (5, 6), (13, 29), (29, 30)]:
                df = r.read_rows(start, stop)
                for name, *_ in cols:
                    vals = [None if v is pd.NA else v for v in df[name].tolist()]
                    _same(vals, want[name][start:stop], f"{path.name} {name} {start}:{stop}")
        finally:
            r.close()


@pytest.mark.parametrize(
    "tform, what",
    [("C", "complex"), ("M", "complex"), ("8X", "bit array"), ("PX", "bit array"), ("QM", "complex")],
)
def test_columns_that_cannot_be_carried_are_refused_by_name(stamps, cheap_cli, tmp_path, capsys, tform, what):
    cols = scaled_catalog()[:3]
    width = {"C": 8, "M": 16, "8X": 1, "PX": 8, "QM": 16}[tform]
    odd = np.zeros((N, width), np.uint8)
    fields = [*cols, ("weird", f"{width}B", odd, {})]
    cat = write_raw_fits(tmp_path / "odd.fits", fields)
    raw = cat.read_bytes().replace(
        f"TFORM4  = '{width}B".encode(), f"TFORM4  = '{tform:<{len(str(width)) + 1}}".encode()
    )
    cat.write_bytes(raw)
    with fits.open(cat) as hl:  # the file is what it says: astropy sees the declared format
        assert hl[1].header["TFORM4"].strip() == tform
    out = tmp_path / "out"
    rc, _, err = cheap_cli(cat, "--images", stamps, "-o", out, "--keep-columns", "*", capsys=capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "'weird'" in lines[0] and what in lines[0] and "odd.fits" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    rc, _, err = cheap_cli(cat, "--images", stamps, "-o", tmp_path / "o2", capsys=capsys)  # not kept: fine
    assert rc == 0, err
    shutil.rmtree(tmp_path / "o2")


hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

UNSIGNED = {"B": -128, "I": 2**15, "J": 2**31, "K": 2**63}


@st.composite
def scaled_column(draw):
    code = draw(st.sampled_from("BIJKED"))
    cards: dict = {}
    kind = draw(st.sampled_from(["plain", "convention", "shift", "scale"]))
    if kind == "convention" and code in UNSIGNED:
        cards["TZERO"] = UNSIGNED[code]
    elif kind == "shift" and code in "BIJ":  # astropy 8 cannot read K with another integer TZERO
        cards["TZERO"] = draw(st.integers(-(10**6), 10**6))
    elif kind == "scale":
        cards["TSCAL"] = draw(st.sampled_from([1e-7, 0.01, 0.5, 3.0, -2.0, 1e5]))
        if code != "K":
            cards["TZERO"] = draw(st.sampled_from([0.0, -7.25, 180.0, 1e9]))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if code in "ED":
        values = rng.normal(0, 10.0 ** draw(st.integers(-3, 8)), n).astype(RAW[code].lstrip(">"))
    else:
        values = stored(rng, code, n)
        info = np.iinfo(values.dtype)
        edges = np.array([info.min, info.max, 0], values.dtype)
        values[: min(n, 3)] = edges[: min(n, 3)]
        if draw(st.booleans()):
            cards["TNULL"] = int(draw(st.sampled_from([info.min, info.max, int(values[-1])])))
    return code, cards, values


@settings(
    max_examples=int(os.environ.get("MERGERSCAN_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(col=scaled_column(), data=st.data())
def test_property_scaled_columns_equal_astropy(tmp_path, col, data):
    code, cards, values = col
    assume(not (code == "K" and cards.get("TZERO", 0) not in (0, 2**63)))
    cols = [("x", code, values, cards), ("after", "D", np.arange(len(values), dtype=np.float64), {})]
    path = write_raw_fits(tmp_path / "p.fits", cols)
    want = reference(path, cols)
    start = data.draw(st.integers(0, len(values) - 1))
    stop = data.draw(st.integers(start + 1, len(values)))
    r = CatalogReader(path)
    try:
        df = r.read_rows(start, stop, ["x", "after"])
    finally:
        r.close()
    _same([None if v is pd.NA else v for v in df["x"].tolist()], want["x"][start:stop], f"x {code} {cards}")
    _same(df["after"].tolist(), want["after"][start:stop], "after")


def test_variable_length_columns_through_process_catalog(stamps, cheap_cli, tmp_path, capsys):
    ra, dec = np.random.default_rng(3).uniform(150, 150.2, N), np.random.default_rng(4).uniform(2, 2.2, N)
    texts = ["images/a.jpg", "", "b", "ccc dd", *[f"x{i}" * i for i in range(N - 4)]]
    ints = [np.arange(i % 4, dtype=np.int32) - 2 for i in range(N)]
    floats = [np.linspace(0, 1, i % 3) for i in range(N)]
    cols = [
        fits.Column(name="objid", format="K", array=np.arange(1, N + 1)),
        fits.Column(name="ra", format="D", array=ra),
        fits.Column(name="dec", format="D", array=dec),
        fits.Column(name="note", format="PA()", array=np.array(texts, dtype=object)),
        fits.Column(name="vj", format="PJ()", array=np.array(ints, dtype=object)),
        fits.Column(name="vd", format="QD()", array=np.array(floats, dtype=object)),
    ]
    cat = tmp_path / "var.fits"
    fits.BinTableHDU.from_columns(cols).writeto(cat)
    with fits.open(cat) as hl:
        assert [hl[1].header[f"TFORM{i}"][:2] for i in (4, 5, 6)] == ["PA", "PJ", "QD"]
        note = ["".join(np.asarray(v).tolist()) for v in hl[1].data["note"]]  # PA: an array of characters
        want = {n: [list(v) for v in hl[1].data[n]] for n in ("vj", "vd")}
    assert note == texts and want["vj"] == [a.tolist() for a in ints] and want["vd"] == [a.tolist() for a in floats]
    out = tmp_path / "out"
    rc, _, err = cheap_cli(cat, "--images", stamps, "-o", out, "--keep-columns", "*", capsys=capsys)
    assert rc == 0, err
    got = parquet_table(out).sort_by("input_row")
    assert got.column("note").to_pylist() == texts
    assert [json.loads(v) for v in got.column("vj").to_pylist()] == [a.tolist() for a in ints]
    assert [json.loads(v) for v in got.column("vd").to_pylist()] == [a.tolist() for a in floats]
    fits_out = _astropy_fits(out)
    assert [(v or b"").decode().rstrip() for v in fits_out["note"]] == texts  # astropy masks an empty string
    assert [json.loads(v) for v in fits_out["vj"]] == [a.tolist() for a in ints]


def test_ascii_table_with_scaling_and_tnull(tmp_path):
    """An ASCII table (XTENSION = 'TABLE'): I/E/D/A fields, TSCAL/TZERO on numbers, TNULL as text."""
    cols = [
        fits.Column(name="objid", format="I12", array=np.array([1, 2, 3, 4]), null="-99"),
        fits.Column(name="ra", format="I12", array=np.array([0, 100, 2000, 30000])),
        fits.Column(name="mag", format="E14.6", array=np.array([15.5, -1.25e3, 3.0, 1e-5])),
        fits.Column(name="z", format="D22.14", array=np.array([0.1, 0.2, 0.3, 0.4])),
        fits.Column(name="name", format="A6", array=np.array(["a", "bb c", "", "dddddd"])),
    ]
    hdu = fits.TableHDU.from_columns(cols)
    hdu.data["objid"][1] = -99  # the null
    hdu.header["TSCAL2"], hdu.header["TZERO2"] = 1e-3, 150.0  # ra = 150 + stored / 1000
    path = tmp_path / "ascii.fits"
    with open(path, "wb") as f:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(f)
    with fits.open(path) as hl:
        raw = hl[1].data
        assert hl[1].header["XTENSION"].strip() == "TABLE"
        want_ra = np.asarray(raw["ra"]).tolist()  # astropy applies TSCAL/TZERO
        want_mag, want_z = np.asarray(raw["mag"]).tolist(), np.asarray(raw["z"]).tolist()
    r = CatalogReader(path)
    try:
        df = r.read_rows(1, 4)
    finally:
        r.close()
    assert [None if v is pd.NA else v for v in df["objid"]] == [None, 3, 4]
    assert df["ra"].tolist() == want_ra[1:] and abs(want_ra[3] - 180.0) < 1e-9
    assert df["mag"].tolist() == want_mag[1:] and df["z"].tolist() == want_z[1:]
    assert df["name"].tolist() == ["bb c", "", "dddddd"]


def test_integer_id_with_tnull_is_a_no_id_row(stamps, cheap_cli, tmp_path, capsys):
    """A FITS id column with TNULL: that row is ``no_id`` (null id), the other ids exact, in
    Parquet and in FITS (where the output TNULL is a value no id uses)."""
    cols = scaled_catalog()[:3]
    ids = np.arange(1, N + 1, dtype=np.int64)
    ids[4] = -(2**63)  # TNULL: the row's id is null
    cols[0] = ("objid", "K", ids, {"TNULL": -(2**63)})
    cat = write_raw_fits(tmp_path / "idnull.fits", cols)
    out = tmp_path / "out"
    rc, _, err = cheap_cli(cat, "--images", stamps, "-o", out, capsys=capsys)
    assert rc == 0, err
    got = parquet_table(out).sort_by("input_row")
    want = [None if i == 4 else i + 1 for i in range(N)]
    assert got.column("objid").to_pylist() == want
    assert got.column("status").to_pylist()[4] == "no_id"
    assert _astropy_fits(out)["objid"] == want
    assert_fits_equals_parquet(out)
