"""Property-based: random messy catalogs (hypothesis) in FITS, Parquet and CSV through process-catalog.

Each example writes a small catalog with ids of one kind (int64 with big values, uint64 >= 2^63,
text with leading zeros, blanks, nulls, non-ASCII, > 255 characters), NaN and out-of-range
coordinates, and random kept columns (names colliding with output columns in any case, non-ASCII,
> 68 characters, FITS-illegal characters; float/int/bool/text/vector values), then runs the CLI
with ``--keep-columns '*'`` and checks: exit status 0 with no traceback (row 0 is always scorable,
so the run is never an all-failed one), rows in = rows out (input_row 0..n-1 once each), ids
exactly as they went in, kept values exact, statuses as documented (``bad_coords``, ``no_id``),
and the FITS table equal to the Parquet dataset column by column.

Examples per format: ``MERGERSCAN_PROPERTY_EXAMPLES`` (default 5; each is one run of ~0.3-0.6 s on a warm Dask cluster, 2-core EPYC).
"""

from __future__ import annotations

import json
import math
import os
import re

import fitsio
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import assert_fits_equals_parquet, make_stamps, parquet_table  # noqa: E402
from mergerscan.catalogs.schema import output_names  # noqa: E402

EXAMPLES = int(os.environ.get("MERGERSCAN_PROPERTY_EXAMPLES", "5"))
NAMES = [
    "P_MERGER",
    "p_Merger",
    "STATUS",
    "status",
    "RA",
    "Ra",
    "DEC",
    "Z",
    "z",
    "IS_MERGER",
    "Input_Row",
    "_HEALPIX_29",
    "ID",
    "objid",
    "in_status",
    "in_STATUS",
    "mag",
    "g-r",
    "g_r",
    "mag r",
    "x" * 80,
    "flux_" + "y" * 70,
    "Δz",
    "naïve",
    "ΣSFR",
]
CANONICAL = re.compile(r"-?(0|[1-9][0-9]*)")


@pytest.fixture(scope="module")
def stamp(tmp_path_factory):
    d = tmp_path_factory.mktemp("pstamp")
    make_stamps(d, [0], seed=5, size=64)
    return d / "0.jpg"


text_chars = st.sampled_from(list("abcXYZ0123456789 _-.é/"))


@st.composite
def catalogs(draw, fmt):
    n = draw(st.integers(1, 7))
    kind = draw(st.sampled_from(["int", "uint", "text"] if fmt != "csv" else ["int", "text"]))
    if kind == "int":
        pool = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(2**62, 2**62 + 5), st.integers(0, 99))
        ids = [draw(pool) for _ in range(n)]
        if fmt != "fits":  # FITS integer columns have no nulls
            ids = [None if draw(st.integers(0, 4)) == 0 else v for v in ids]
        ids[0] = 7777777
    elif kind == "uint":
        ids = [draw(st.integers(2**63, 2**64 - 1)) for _ in range(n)]
        ids[0] = 2**63 + 7
    else:
        alphabet = text_chars if fmt != "fits" else st.sampled_from(list("abcXYZ0123456789 _-./"))
        word = st.one_of(
            st.text(alphabet, min_size=0, max_size=6),
            st.sampled_from(["0001", "012", "", "  ", "0"]),
            st.just("L" * 300),
            st.integers(0, 50).map(str),
        )
        ids = [draw(word) for _ in range(n)]
        if fmt == "parquet":
            ids = [None if draw(st.integers(0, 5)) == 0 else v for v in ids]
        ids[0] = "row0"
    coord = st.one_of(st.floats(150, 150.2), st.just(float("nan")), st.sampled_from([400.0, -1.0, 360.0]))
    ra = [draw(coord) for _ in range(n)]
    dec = [draw(st.one_of(st.floats(2, 2.2), st.just(float("nan")), st.sampled_from([95.0, -91.0]))) for _ in range(n)]
    ra[0], dec[0] = 150.1, 2.1
    names = draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True))
    if fmt == "fits":  # FITS names: ASCII, <= 68, unique in any case
        names = [m for m in names if m.isascii() and len(m) <= 68]
        names = [m for i, m in enumerate(names) if m.lower() not in {o.lower() for o in names[:i]}]
    cols = {}
    for m in names:
        t = draw(st.sampled_from(["float", "int", "bool", "text"] + (["vector"] if fmt != "csv" else [])))
        if t == "float":
            cols[m] = [
                draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.just(float("nan"))))
                for _ in range(n)
            ]
        elif t == "int":
            cols[m] = [draw(st.integers(-(2**63), 2**63 - 1)) for _ in range(n)]
        elif t == "bool":
            cols[m] = [draw(st.booleans()) for _ in range(n)]
        elif t == "text":
            alphabet = (
                st.sampled_from(list("abc XYZ019,;'\""))
                if fmt == "fits"
                else st.sampled_from(list("abc XYZ019,;'\"éΔ"))
            )
            cols[m] = [draw(st.text(alphabet, min_size=1, max_size=8)).strip() or "q" for _ in range(n)]
        else:
            cols[m] = [[draw(st.floats(-1e6, 1e6, width=32)) for _ in range(3)] for _ in range(n)]
    return {"fmt": fmt, "n": n, "kind": kind, "ids": ids, "ra": ra, "dec": dec, "cols": cols}


def write(cat, path):
    n, fmt = cat["n"], cat["fmt"]
    if fmt == "parquet":
        id_type = {"int": pa.int64(), "uint": pa.uint64(), "text": pa.string()}[cat["kind"]]
        data = {
            "ident": pa.array(cat["ids"], id_type),
            "ra_deg": pa.array(cat["ra"], pa.float64()),
            "dec_deg": pa.array(cat["dec"], pa.float64()),
        }
        for m, v in cat["cols"].items():
            data[m] = pa.array(v)
        pq.write_table(pa.table(data), path)
    elif fmt == "csv":
        df = pd.DataFrame(
            {
                "ident": pd.Series(["" if v is None else str(v) for v in cat["ids"]], dtype=object),
                "ra_deg": cat["ra"],
                "dec_deg": cat["dec"],
                **cat["cols"],
            }
        )
        df.to_csv(path, index=False, float_format=None)
    else:
        id_dt = {"int": "i8", "uint": "u8"}.get(cat["kind"]) or f"S{max(1, max(len(v) for v in cat['ids']))}"
        dt = [("ident", id_dt), ("ra_deg", "f8"), ("dec_deg", "f8")]
        for m, v in cat["cols"].items():
            if isinstance(v[0], list):
                dt.append((m, "f4", (3,)))
            elif isinstance(v[0], bool):
                dt.append((m, "?"))
            elif isinstance(v[0], int):
                dt.append((m, "i8"))
            elif isinstance(v[0], float):
                dt.append((m, "f8"))
            else:
                dt.append((m, f"S{max(len(x) for x in v)}"))
        rec = np.zeros(n, dtype=dt)
        rec["ident"] = (
            [v.encode() if isinstance(v, str) else v for v in cat["ids"]]
            if cat["kind"] == "text"
            else np.array(cat["ids"], dtype=dt[0][1])
        )
        rec["ra_deg"], rec["dec_deg"] = cat["ra"], cat["dec"]
        for m, v in cat["cols"].items():
            rec[m] = [x.encode() for x in v] if isinstance(v[0], str) else v
        fitsio.write(str(path), rec, clobber=True)


def expected_ids(cat) -> tuple[str, list]:
    """(output id column, ids as they must come out) by the documented rules."""
    ids, fmt = cat["ids"], cat["fmt"]
    if fmt == "csv":
        text = [None if v is None or str(v) == "" else str(v) for v in ids]
        nonblank = [v.strip() for v in text if v is not None and v.strip()]
        as_int = bool(nonblank) and all(CANONICAL.fullmatch(v) and -(2**63) <= int(v) < 2**63 for v in nonblank)
        if as_int:
            return "objid", [None if v is None or not v.strip() else int(v) for v in text]
        return "id", text
    if cat["kind"] == "text":  # FITS text is fixed width: surrounding blanks are not kept
        return "id", [v.strip() for v in ids] if fmt == "fits" else ids
    return "objid", ids


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def check(cat, out, rc, err):
    assert "Traceback" not in err
    assert rc == 0, err
    n = cat["n"]
    t = parquet_table(out).sort_by("input_row")
    assert t.column("input_row").to_pylist() == list(range(n))  # rows in = rows out, once each
    id_col, want_ids = expected_ids(cat)
    got_ids = t.column(id_col).to_pylist()
    assert got_ids == want_ids, (got_ids, want_ids)
    status = t.column("status").to_pylist()
    assert status[0] == "ok"
    for i in range(n):
        ra, dec = cat["ra"][i], cat["dec"][i]
        good = math.isfinite(ra) and math.isfinite(dec) and 0 <= ra < 360 and -90 <= dec <= 90
        missing = want_ids[i] is None or (isinstance(want_ids[i], str) and not want_ids[i].strip())
        if not good:
            assert status[i] == "bad_coords"
        elif missing:
            assert status[i] == "no_id"
        else:
            assert status[i] in ("ok", "duplicate_id", "no_image"), status[i]
    names = output_names(list(cat["cols"]), id_col)  # collisions with this run's output names only
    for m, values in cat["cols"].items():
        got = t.column(names[m]).to_pylist()
        if cat["fmt"] == "csv":  # kept CSV columns: whatever pandas reads (not the id)
            ref = pd.read_csv(out.parent / "cat.csv", usecols=[m])[m]
            values = ref.tolist()
            if ref.dtype.kind == "f":
                got = [float("nan") if g is None else g for g in got]
        elif isinstance(values[0], list):
            got = [json.loads(g) for g in got]
            values = [[float(np.float32(x)) for x in v] for v in values]
        elif cat["fmt"] == "fits" and isinstance(values[0], str):
            values = [v.strip() for v in values]
        assert len(got) == len(values) and all(same(a, b) for a, b in zip(got, values)), (m, got, values)
    assert_fits_equals_parquet(out)


def _make_test(fmt):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cat=catalogs(fmt))
    def test(cat, stamp, cheap_cli, tmp_path_factory, capsys):
        d = tmp_path_factory.mktemp(f"prop-{fmt}")
        path = d / f"cat.{fmt}"
        write(cat, path)
        images = d / "images"
        images.mkdir()
        _, ids = expected_ids(cat)
        for v in ids:
            name = None if v is None else str(v)
            if name and name.strip() and "/" not in name and name not in (".", "..") and len(name) < 200:
                link = images / f"{name}.jpg"
                if not link.exists():
                    link.symlink_to(stamp)
        out = d / "out"
        rc, _, err = cheap_cli(
            path,
            "--images",
            images,
            "-o",
            out,
            "--id-column",
            "ident",
            "--ra-column",
            "ra_deg",
            "--dec-column",
            "dec_deg",
            "--keep-columns",
            "*",
            capsys=capsys,
        )
        check(cat, out, rc, err)

    test.__name__ = f"test_random_{fmt}_catalogs"
    return test


test_random_fits_catalogs = _make_test("fits")
test_random_parquet_catalogs = _make_test("parquet")
test_random_csv_catalogs = _make_test("csv")
