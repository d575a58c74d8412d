"""Hostile inputs to the library (mergerscan.score / load_engine / process_catalog / score_catalog):
each class of bad input is an InvalidArgument naming the keyword in one line, or, where it is a
row's problem, a row with its status; never a KeyError/TypeError/AttributeError from inside, and
every input row comes out once, in input order, with its exact id and kept values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mergerscan
from conftest import make_stamps
from mergerscan.api import InvalidArgument

IDS = list(range(100, 106))


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    make_stamps(d / "stamps", IDS, seed=4, size=64)
    return d / "stamps"


@pytest.fixture(scope="module")
def engine(cheap_engine):
    return mergerscan.load_engine(cheap_engine, threads=1)


def base() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "objid": np.array(IDS, np.int64),
            "ra": np.linspace(150, 150.1, 6),
            "dec": np.linspace(2, 2.1, 6),
            "mag": np.arange(6.0) + 14,
        }
    )


def refused(call, argument: str, *words: str) -> InvalidArgument:
    with pytest.raises(ValueError) as exc:
        call()
    e = exc.value
    assert isinstance(e, InvalidArgument), f"{type(e).__name__}: {e}"
    assert e.argument == argument, str(e)
    assert str(e).startswith(f"{argument}: ") and "\n" not in str(e), str(e)
    assert all(w in str(e) for w in words), str(e)
    return e


def accounted(out: pd.DataFrame, ids: list, statuses: list[str], id_name: str = "objid") -> None:
    """Every input row once, in input order, with its id and the status that says why."""
    assert out["input_row"].tolist() == list(range(len(ids)))
    got = out[id_name].astype(object).where(out[id_name].notna(), None).tolist()
    assert got == ids
    assert out["status"].tolist() == statuses


# ---------------------------------------------------------------- the table's shape
def multiindex_columns():
    t = base()
    t.columns = pd.MultiIndex.from_tuples([("a", "objid"), ("a", "ra"), ("a", "dec"), ("b", "mag")])
    return t


def duplicate(name):
    def make():
        t = base()
        return pd.concat([t, t[[name]]], axis=1)

    return make


SHAPES = {
    "columns a MultiIndex": (multiindex_columns, ["MultiIndex"]),
    "two columns named ra": (duplicate("ra"), ["two columns are named 'ra'"]),
    "two columns named objid": (duplicate("objid"), ["'objid'"]),
    "two columns named mag": (duplicate("mag"), ["'mag'"]),
    "a numpy structured array": (lambda: base().to_records(index=False), ["not recarray"]),
    "a dict": (lambda: base().to_dict("list"), ["not dict"]),
    "a list": (lambda: [1, 2], ["not list"]),
    "a path": (lambda: "cat.csv", ["not str", "process_catalog"]),
    "a Series": (lambda: base()["ra"], ["not Series"]),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_a_table_of_the_wrong_shape_names_table(stamps, engine, case):
    make, words = SHAPES[case]
    refused(lambda: mergerscan.score(make(), images=stamps, engine=engine, keep_columns=["mag"]), "table", *words)


def int_labels():
    return base().set_axis([0, 1, 2, 3], axis=1), {"id_column": 0, "ra_column": 1, "dec_column": 2}, "objid", "3"


INDEXES = {
    "int column labels": int_labels,
    "string index": lambda: (base().set_axis(list("fedcba")), {}, "objid", "mag"),
    "repeated index": lambda: (base().set_axis([3, 3, 1, 1, 0, 0]), {}, "objid", "mag"),
    "MultiIndex rows": lambda: (base().set_index(["objid", "mag"], drop=False), {}, "objid", "mag"),
}


@pytest.mark.parametrize("case", list(INDEXES))
def test_labels_and_indexes_keep_every_row_in_order(stamps, engine, case):
    table, keywords, id_name, kept = INDEXES[case]()
    out = mergerscan.score(table, images=stamps, engine=engine, keep_columns=[kept], **keywords)
    accounted(out, IDS, ["ok"] * 6, id_name)
    assert out[kept].tolist() == (np.arange(6.0) + 14).tolist()
    assert out["ra"].tolist() == base()["ra"].tolist()


def test_an_empty_table(stamps, engine):
    refused(lambda: mergerscan.score(pd.DataFrame(), images=stamps, engine=engine), "id_column", "no columns")
    out = mergerscan.score(base().iloc[:0], images=stamps, engine=engine, keep_columns=["mag"])
    assert len(out) == 0 and {"objid", "p_merger", "status", "mag"} <= set(out.columns)


# ---------------------------------------------------------------- coordinates and ids: row statuses
def coords(kind):
    t = base()
    if kind == "text":
        t["ra"] = t["ra"].astype(str)
        return t, ["ok"] * 6
    if kind == "object with None":
        t["ra"] = t["ra"].astype(object)
        t.loc[2, "ra"] = None
    elif kind == "Float64 with NA":
        t["ra"] = t["ra"].astype("Float64")
        t.loc[2, "ra"] = pd.NA
    else:  # inf and out of range
        t.loc[1, "ra"], t.loc[2, "dec"], t.loc[3, "ra"], t.loc[4, "dec"] = np.inf, -np.inf, 400.0, 95.0
        return t, ["ok", "bad_coords", "bad_coords", "bad_coords", "bad_coords", "ok"]
    return t, ["ok", "ok", "bad_coords", "ok", "ok", "ok"]


@pytest.mark.parametrize("kind", ["text", "object with None", "Float64 with NA", "inf and out of range"])
def test_coordinates_of_every_kind_are_rows_with_a_status(stamps, engine, kind):
    table, statuses = coords(kind)
    out = mergerscan.score(table, images=stamps, engine=engine, keep_columns=["mag"])
    accounted(out, IDS, statuses)
    assert out["mag"].tolist() == base()["mag"].tolist()
    assert out["p_merger"].notna().tolist() == [s == "ok" for s in statuses]


@pytest.mark.parametrize(
    "values,coordinate",
    [(["150", "x", None, 150.1, 150.2, 150.3], "ra_column"), ([True] * 6, "ra_column")],
)
def test_coordinates_that_are_not_numbers_name_the_column(stamps, engine, values, coordinate):
    t = base()
    t["ra"] = values
    refused(lambda: mergerscan.score(t, images=stamps, engine=engine), coordinate, "'ra'")


def ids(kind):
    if kind == "None":
        return ["100", None, "102", "103", "104", "105"], "id"
    if kind == "NaN in text":
        return ["100", np.nan, "102", "103", "104", "105"], "id"
    if kind == "Int64 NA":
        return pd.array([100, None, 102, 103, 104, 105], dtype="Int64"), "objid"
    return pd.array(["100", None, "102", "103", "104", "105"], dtype="string"), "id"


@pytest.mark.parametrize("kind", ["None", "NaN in text", "Int64 NA", "string NA"])
def test_a_missing_id_is_a_no_id_row(stamps, engine, kind):
    t = base()
    t["objid"], id_name = ids(kind)
    out = mergerscan.score(t, images=stamps, engine=engine)
    statuses = ["ok", "no_id", "ok", "ok", "ok", "ok"]
    assert out["status"].tolist() == statuses and out["input_row"].tolist() == list(range(6))
    assert [str(v) if pd.notna(v) else None for v in out[id_name]] == ["100", None, "102", "103", "104", "105"]


def test_repeated_odd_and_bytes_ids(stamps, engine):
    t = base()
    t["objid"] = [100, 100, 102, 103, 104, 104]
    out = mergerscan.score(t, images=stamps, engine=engine)
    accounted(out, [100, 100, 102, 103, 104, 104], ["ok", "duplicate_id", "ok", "ok", "ok", "duplicate_id"])
    t["objid"] = [b"100", b"101", b"102", b"103", b"104", b"105"]
    accounted(mergerscan.score(t, images=stamps, engine=engine), [str(i) for i in IDS], ["ok"] * 6, "id")
    odd = ["x" * 5000, "ü€😀", "102", "a\nb", "a,b", "105"]
    t["objid"] = odd
    accounted(
        mergerscan.score(t, images=stamps, engine=engine),
        odd,
        ["no_image", "no_image", "ok"] + ["no_image"] * 2 + ["ok"],
        "id",
    )


@pytest.mark.parametrize(
    "values,words", [([1.0, np.nan, 3, 4, 5, 6], ["float64", "loses digits"]), ([True] * 6, ["bool"])]
)
def test_an_id_column_of_another_type_names_id_column(stamps, engine, values, words):
    t = base()
    t["objid"] = values
    refused(lambda: mergerscan.score(t, images=stamps, engine=engine), "id_column", *words)


# ---------------------------------------------------------------- column keywords
@pytest.mark.parametrize(
    "keywords,kept",
    [
        ({"keep_columns": "mag"}, ["mag"]),  # one name, not its letters
        ({"keep_columns": None}, []),
        ({"keep_columns": ["mag", "mag"]}, ["mag"]),
        ({"keep_columns": ["objid", "ra", "dec", "mag"]}, ["mag"]),
    ],
)
def test_keep_columns_in_any_form(stamps, engine, keywords, kept):
    out = mergerscan.score(base(), images=stamps, engine=engine, **keywords)
    accounted(out, IDS, ["ok"] * 6)
    assert [c for c in out.columns if c == "mag"] == kept
    assert list(out.columns).count("objid") == 1


@pytest.mark.parametrize(
    "keywords,argument,words",
    [
        ({"id_column": "nope"}, "id_column", ["'nope' is not a column", "objid, ra, dec, mag"]),
        ({"id_column": 3}, "id_column", ["'3' is not a column"]),
        ({"id_column": 1.5}, "id_column", ["not float"]),
        ({"keep_columns": ["nope"]}, "keep_columns", ["'nope' is not a column"]),
        ({"keep_columns": {"mag": 1}}, "keep_columns", ["not dict"]),
        ({"ra_column": ["ra"]}, "ra_column", ["not list"]),
    ],
)
def test_a_column_keyword_that_names_no_column(stamps, engine, keywords, argument, words):
    refused(lambda: mergerscan.score(base(), images=stamps, engine=engine, **keywords), argument, *words)


# ---------------------------------------------------------------- astropy tables
def test_astropy_masked_multidimensional_and_units(stamps, engine):
    from astropy import units as u
    from astropy.table import MaskedColumn, QTable, Table

    t = Table.from_pandas(base())
    t["ra"] = MaskedColumn(t["ra"], mask=[0, 1, 0, 0, 0, 0])
    t["objid"] = MaskedColumn(t["objid"], mask=[0, 0, 1, 0, 0, 0])
    t["vec"] = np.arange(18).reshape(6, 3)
    t["mag"].unit = u.mag
    out = mergerscan.score(t, images=stamps, engine=engine, keep_columns=["mag", "vec"])
    assert isinstance(out, Table)
    assert out["status"].tolist() == ["ok", "bad_coords", "no_id", "ok", "ok", "ok"]
    assert out["input_row"].tolist() == list(range(6)) and out["objid"].mask.tolist() == [0, 0, 1, 0, 0, 0]
    assert out["vec"].tolist() == np.arange(18).reshape(6, 3).tolist() and out["mag"].tolist() == t["mag"].tolist()
    q = QTable.from_pandas(base())
    q["ra"], q["dec"] = q["ra"] * u.deg, q["dec"] * u.deg
    assert mergerscan.score(q, images=stamps, engine=engine)["status"].tolist() == ["ok"] * 6
    q["ra"] = q["ra"].to(u.rad)  # read as degrees it would be another place on the sky
    refused(lambda: mergerscan.score(q, images=stamps, engine=engine), "ra_column", "'ra' is in rad; give degrees")


# ---------------------------------------------------------------- image sources
def test_image_sources_with_nothing_usable_give_row_statuses(stamps, engine, tmp_path):
    empty, corrupt = tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir()
    corrupt.mkdir()
    for i in IDS:
        (corrupt / f"{i}.jpg").write_bytes(b"\xff\xd8garbage" if i % 2 else b"")
    accounted(mergerscan.score(base(), images=empty, engine=engine), IDS, ["no_image"] * 6)
    accounted(mergerscan.score(base(), images=corrupt, engine=engine), IDS, ["bad_image"] * 6)
    accounted(mergerscan.score(base(), frames=empty, engine=engine), IDS, ["outside_footprint"] * 6)


@pytest.mark.parametrize(
    "keywords,argument,words",
    [
        ({"images": "ENGINE"}, "images", ["not a directory"]),
        ({"images": "/no/such/dir"}, "images", ["not a directory"]),
        ({"source": ("nonsense", "x")}, "source", ["unknown image source kind 'nonsense'"]),
        ({"source": ["stamps", "x"]}, "source", ["(kind, location)"]),
        ({"images": "STAMPS", "source_options": {"bogus": 1}}, "source_options", ["unknown option 'bogus'"]),
        ({"images": "STAMPS", "source_options": [1]}, "source_options", ["not list"]),
        ({"images": "STAMPS", "source_options": {"threads": "x"}}, "source_options", ["option threads 'x': give int"]),
        ({"source": ("stamps", "/no/such/dir")}, "source", ["/no/such/dir: not a directory"]),
        ({"source": ("frames", "ENGINE")}, "source", ["not a directory"]),
        ({"images": "STAMPS", "frames": "STAMPS"}, "images", ["exactly one"]),
    ],
)
def test_a_bad_image_source_names_its_keyword(stamps, engine, cheap_engine, keywords, argument, words):
    where = {"ENGINE": str(cheap_engine), "STAMPS": str(stamps)}
    keywords = {k: where.get(v, v) if isinstance(v, str) else v for k, v in keywords.items()}
    if isinstance(keywords.get("source"), tuple):
        keywords["source"] = tuple(where.get(v, v) for v in keywords["source"])
    refused(lambda: mergerscan.score(base(), engine=engine, **keywords), argument, *words)


# ---------------------------------------------------------------- engine and operating point
NUMBERS = [
    ({"threads": 0}, "threads", ["0: give at least 1"]),
    ({"threads": 1.5}, "threads", ["not float"]),
    ({"threads": "2"}, "threads", ["not str"]),
    ({"batch_size": 0}, "batch_size", ["give at least 1"]),
    ({"batch_size": -3}, "batch_size", ["give at least 1"]),
    ({"batch_size": 2.5}, "batch_size", ["not float"]),
    ({"batch_size": True}, "batch_size", ["not bool"]),
    ({"views": 3}, "views", ["choose 1, 2, 4, 8"]),
    ({"views": "1"}, "views", ["not str"]),
    ({"backend": "nope"}, "backend", ["unknown backend 'nope'"]),
    ({"backend": 3}, "backend", ["not int"]),
    ({"embeddings": -1}, "embeddings", ["give at least 0"]),
    ({"embeddings": "2"}, "embeddings", ["not str"]),
    ({"purity": 1.5}, "purity", ["a fraction"]),
    ({"purity": 0}, "purity", ["a fraction"]),
    ({"purity": "0.9"}, "purity", ["not str"]),
    ({"completeness": -1}, "completeness", ["a fraction"]),
    ({"purity": 0.5, "completeness": 0.5}, "purity", ["not both"]),
    ({"prevalence": 0}, "prevalence", ["a fraction"]),
    ({"prevalence": None}, "prevalence", ["give a fraction"]),
    ({"engine": 123}, "engine", ["not int"]),
    ({"engine": "DIR"}, "engine", ["no such engine file"]),
    ({"engine": "NOT_AN_ENGINE"}, "engine", ["not an ONNX engine file"]),
]


@pytest.mark.parametrize("keywords,argument,words", NUMBERS, ids=[f"{k}" for k, _, _ in NUMBERS])
def test_engine_and_operating_point_keywords_of_score(stamps, cheap_engine, tmp_path, keywords, argument, words):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not an engine")
    keywords = {
        k: {"DIR": str(tmp_path), "NOT_AN_ENGINE": str(junk)}.get(v, v) if isinstance(v, str) else v
        for k, v in keywords.items()
    }
    keywords.setdefault("engine", cheap_engine)
    refused(lambda: mergerscan.score(base(), images=stamps, **keywords), argument, *words)


@pytest.mark.parametrize(
    "keywords,argument,words",
    [
        ({"path": 123}, "path", ["not int"]),
        ({"threads": "2"}, "threads", ["not str"]),
        ({"threads": 0}, "threads", ["give at least 1"]),
        ({"views": 2.0}, "views", ["not float"]),
        ({"backend": None}, "backend", ["not NoneType"]),
        ({"bogus": 1}, "bogus", ["unknown option 'bogus'"]),
        ({"stamp_batch": 0}, "stamp_batch", ["whole number >= 1"]),  # was silently the default
        ({"stamp_batch": "x"}, "stamp_batch", ["whole number >= 1"]),  # was accepted, failed at predict
        ({"stamp_batch": True}, "stamp_batch", ["whole number >= 1"]),
    ],
)
def test_load_engine_keywords(cheap_engine, keywords, argument, words):
    keywords.setdefault("path", cheap_engine)
    refused(lambda: mergerscan.load_engine(**keywords), argument, *words)


# ---------------------------------------------------------------- process_catalog
@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-catalog")
    base().to_csv(d / "cat.csv", index=False)
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("objid,ra,dec\n")
    (d / "file.txt").write_text("mine")
    return d


PROCESS = {
    "catalog missing": ({"catalog": "nope.csv"}, "catalog", ["no such file"]),
    "catalog empty file": ({"catalog": "empty.csv"}, "catalog", ["cannot read as CSV"]),
    "catalog only a header": ({"catalog": "header.csv"}, "catalog", ["catalog has no rows"]),
    "catalog an int": ({"catalog": 5}, "catalog", ["give a path, not int"]),
    "catalog a DataFrame": ({"catalog": base()}, "catalog", ["mergerscan.score"]),
    "output None": ({"output": None}, "output", ["give a path, not NoneType"]),
    "output a file": ({"output": "file.txt"}, "output", ["exists and is not a directory"]),
    "a typo": ({"worker": 2}, "worker", ["did you mean workers?"]),
    "another typo": ({"keep_colums": ["mag"]}, "keep_colums", ["did you mean keep_columns?"]),
    "client not a Client": ({"client": "tcp://127.0.0.1:1"}, "client", ["give a distributed.Client", "not str"]),
    "workers text": ({"workers": "x"}, "workers", ["'x': give a whole number"]),
    "batch_size 0": ({"batch_size": 0}, "batch_size", ["must be positive"]),
    "chunk_rows 0": ({"chunk_rows": 0}, "chunk_rows", ["must be positive"]),
    "purity text": ({"purity": "0.9"}, "purity", ["not str"]),
    "threads 0": ({"threads": 0}, "threads", ["give at least 1"]),
    "threads text": ({"threads": "x"}, "threads", ["not str"]),
    "report text": ({"report": "no"}, "report", ["True or False"]),
    "keep_columns a number": ({"keep_columns": 1.5}, "keep_columns", ["not float"]),
    "domain_limits not pairs": ({"domain_limits": 5}, "domain_limits", ["(key, value) pairs, not int"]),
    "select a number": ({"select": 5}, "select", ["give text, not int"]),
    "gpus text": ({"gpus": "1"}, "gpus", ["not str"]),
    "progress text": ({"progress": "no"}, "progress", ["True or False"]),
    "overwrite text": ({"overwrite": "yes"}, "overwrite", ["True or False"]),
    "source nonsense": ({"source": ("nonsense", "x"), "images": None}, "source", ["'nonsense'"]),
}


@pytest.mark.parametrize("case", list(PROCESS))
def test_process_catalog_refusals(catalog, stamps, cheap_engine, dask_client, tmp_path, case):
    keywords, argument, words = PROCESS[case]
    where = {k: catalog / v for k, v in keywords.items() if k in ("catalog", "output") and isinstance(v, str)}
    defaults = {"catalog": catalog / "cat.csv", "output": tmp_path / "out", "client": dask_client, "images": stamps}
    defaults |= {"engine": cheap_engine, "progress": False, "report": False}
    keywords = {**defaults, **keywords, **where}
    refused(lambda: mergerscan.process_catalog(**keywords), argument, *words)
    assert not (tmp_path / "out").exists() and (catalog / "file.txt").read_text() == "mine"


def test_process_catalog_takes_keep_columns_as_one_name_or_none(catalog, stamps, cheap_engine, dask_client, tmp_path):
    for i, keep in enumerate(["mag", None]):
        summary = mergerscan.process_catalog(
            catalog / "cat.csv", tmp_path / f"o{i}", images=stamps, engine=cheap_engine, client=dask_client,
            progress=False, report=False, keep_columns=keep,
        )  # fmt: skip
        assert summary.rows == 6 and summary.status == {"ok": 6}


# ---------------------------------------------------------------- score_catalog
def test_score_catalog_refusals(stamps, cheap_engine):
    import lsdb

    frame = base().rename(columns={"ra": "RA_x", "dec": "DEC_x"})
    sky = lsdb.from_dataframe(frame, ra_column="RA_x", dec_column="DEC_x")
    refused(lambda: mergerscan.score_catalog(frame, images=stamps, engine=cheap_engine), "catalog", "not DataFrame")
    refused(
        lambda: mergerscan.score_catalog(sky[["objid", "mag"]], images=stamps, engine=cheap_engine),
        "catalog",
        "its ra column 'RA_x'",
    )
    refused(
        lambda: mergerscan.score_catalog(sky, images=stamps, engine=cheap_engine, threads="1"), "threads", "not str"
    )
    out = mergerscan.score_catalog(sky, images=stamps, engine=cheap_engine, keep_columns=None).compute()
    assert sorted(out["objid"]) == IDS and set(out["status"]) == {"ok"}


@pytest.mark.parametrize(
    "backend,words",
    [("torch", ["torch: the engine given was loaded with onnxruntime"]), ("nope", ["unknown backend 'nope'"])],
)
def test_a_loaded_engine_and_another_backend(stamps, engine, backend, words):
    """A loaded engine brings its backend: another one named beside it is refused, not ignored."""
    refused(lambda: mergerscan.score(base(), images=stamps, engine=engine, backend=backend), "backend", *words)
    out = mergerscan.score(base(), images=stamps, engine=engine, backend="onnxruntime")
    accounted(out, IDS, ["ok"] * 6)
