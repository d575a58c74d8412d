"""The library as users call it (mergerscan.api): ``import mergerscan`` stays light, the four calls
work from a plain Python session, ``score`` equals process-catalog row for row and starts no Dask
cluster, ``process_catalog`` uses (and leaves open) the caller's client and leaves the caller's
Dask config and environment as they were, ``score_catalog`` gives a lazy LSDB catalog that
crossmatches, and bad arguments are ValueErrors naming the argument in Python terms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import mergerscan
from conftest import BIG, REPO, make_stamps, read_out, run_cli
from mergerscan.api import InvalidArgument

N = 40


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """40 galaxies on one small patch (one sky partition), stamps for all but the last two
    (no_image), a row without coordinates (bad_coords) and a repeated id (duplicate_id)."""
    d = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "objID": BIG + np.arange(N, dtype=np.int64),
            "RAdeg": rng.uniform(150, 150.2, N),
            "DEdeg": rng.uniform(2, 2.2, N),
            "mag_r": rng.uniform(14, 17.7, N).astype(np.float32),
        }
    )
    df.loc[5, "RAdeg"] = np.nan
    df.loc[9, "objID"] = df.loc[8, "objID"]
    make_stamps(d / "stamps", df["objID"].iloc[: N - 2], seed=3)
    df.to_csv(d / "cat.csv", index=False)
    return d, df


def run_rows(out) -> pd.DataFrame:
    """A run's output rows in input order, its own columns (not the HATS directory names)."""
    return read_out(out).drop(columns=["Norder", "Dir", "Npix"], errors="ignore")


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-6) -> None:
    """Same columns in the same order, row for row: numbers to ``atol`` (NaN = NaN = null), the rest exactly."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        x, y = a[c].reset_index(drop=True), b[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(x.dtype) and not pd.api.types.is_bool_dtype(x.dtype):
            xs, ys = x.to_numpy(np.float64, na_value=np.nan), y.to_numpy(np.float64, na_value=np.nan)
            np.testing.assert_allclose(xs, ys, rtol=0, atol=atol, equal_nan=True, err_msg=c)
        else:
            assert (
                x.astype(object).where(x.notna(), None).tolist() == y.astype(object).where(y.notna(), None).tolist()
            ), c


def test_import_is_light_and_exports_the_four_calls():
    code = (
        "import sys, mergerscan; "
        "print(sorted(m for m in ('torch', 'dask', 'distributed', 'onnxruntime', 'lsdb', 'pandas') if m in sys.modules)); "
        "print(sorted(mergerscan.__all__))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    heavy, names = r.stdout.splitlines()
    assert heavy == "[]"
    assert names == str(["__version__", "load_engine", "process_catalog", "score", "score_catalog"])
    assert all(callable(getattr(mergerscan, n)) for n in ("load_engine", "score", "process_catalog", "score_catalog"))


def test_plain_python_session(field, cheap_engine):
    """load_engine and score from ``python -c``: the card and spec, predict, and a scored table -
    without distributed ever imported (so no cluster)."""
    d, _ = field
    code = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, pandas as pd
        import mergerscan
        engine = mergerscan.load_engine({str(cheap_engine)!r}, threads=1)
        s = engine.spec.stamp_pixels
        stamps = np.full((2, s, s, 3), 40, np.uint8)
        p = engine.predict(stamps)
        table = pd.read_csv({str(d / "cat.csv")!r})
        out = mergerscan.score(table, images={str(d / "stamps")!r}, engine=engine)
        print(json.dumps({{
            "card": engine.card.name, "size": engine.spec.input_size, "p": [float(v) for v in p],
            "rows": len(out), "columns": list(out.columns), "status": out["status"].value_counts().to_dict(),
            "input_row": out["input_row"].tolist(), "distributed": "distributed" in sys.modules,
        }}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["card"] == "test-tiny-cnn-32px" and got["size"] == 32
    assert len(got["p"]) == 2 and all(0 <= v <= 1 for v in got["p"])
    assert got["rows"] == N and got["input_row"] == list(range(N))
    assert got["status"] == {"ok": N - 4, "no_image": 2, "bad_coords": 1, "duplicate_id": 1}
    assert got["columns"][:3] == ["objid", "ra", "dec"] and "p_merger" in got["columns"]
    assert got["distributed"] is False


def test_score_equals_process_catalog_and_takes_astropy(field, cheap_engine, dask_client, tmp_path):
    d, df = field
    rc, _, _ = run_cli(
        dask_client, d / "cat.csv", "-o", tmp_path / "run", "--images", d / "stamps", engine=cheap_engine
    )
    assert rc == 0
    ran = run_rows(tmp_path / "run")
    scored = mergerscan.score(df, images=d / "stamps", engine=cheap_engine, views=1)
    assert_same_rows(scored, ran)
    assert sorted(set(scored["status"])) == ["bad_coords", "duplicate_id", "no_image", "ok"]
    from astropy.table import Table

    t = mergerscan.score(Table.from_pandas(df), images=d / "stamps", engine=cheap_engine)
    assert isinstance(t, Table) and t.colnames == list(scored.columns)
    np.testing.assert_array_equal(np.asarray(t["p_merger"]), scored["p_merger"].to_numpy())


def _clusters_and_clients() -> set[int]:
    from distributed import Client
    from distributed.deploy.spec import SpecCluster

    return {id(c) for c in (*SpecCluster._instances, *Client._instances)}


@pytest.mark.slow
@pytest.mark.shared
def test_score_equals_process_catalog_on_1000_shared_stamps(gz_dir, dask_client, tmp_path):
    """The packaged engine (1 view) on the first 1,000 shared stamps: every output column equal to
    process-catalog's to 1e-6, and no Dask cluster or client made by score."""
    cat = pd.read_csv(gz_dir / "catalog.csv", nrows=1000)[["id", "ra", "dec", "redshift"]]
    cat.to_csv(tmp_path / "gz1000.csv", index=False)
    images = gz_dir / "images"
    rc, _, _ = run_cli(
        dask_client, tmp_path / "gz1000.csv", "-o", tmp_path / "run", "--images", images, "--id-column", "id"
    )
    assert rc == 0
    ran = run_rows(tmp_path / "run")
    before = _clusters_and_clients()
    scored = mergerscan.score(pd.read_csv(tmp_path / "gz1000.csv"), images=images, id_column="id", views=1)
    assert _clusters_and_clients() <= before  # none made (earlier tests' may be collected meanwhile)
    assert len(scored) == 1000 and (scored["status"] == "ok").sum() > 990
    assert_same_rows(scored, ran)


def test_process_catalog_uses_the_given_client_and_leaves_it_open(field, cheap_engine, dask_client, tmp_path):
    import dask

    from mergerscan.run_summary import RunSummary

    d, df = field
    pause = dask.config.get("distributed.worker.memory.pause", None)
    env = dict(os.environ)
    before = _clusters_and_clients()
    s = mergerscan.process_catalog(
        d / "cat.csv",
        tmp_path / "run",
        images=d / "stamps",
        engine=cheap_engine,
        client=dask_client,
        progress=False,
        report=False,
    )
    assert _clusters_and_clients() <= before  # no cluster or client of its own: the one given
    assert isinstance(s, RunSummary) and s.rows == N and s.status["ok"] == N - 4
    assert dask_client.status == "running" and dask_client.submit(sum, [1, 2]).result() == 3
    assert dask.config.get("distributed.worker.memory.pause", None) == pause and dict(os.environ) == env
    assert_same_rows(run_rows(tmp_path / "run"), mergerscan.score(df, images=d / "stamps", engine=cheap_engine))


@pytest.mark.slow
def test_process_catalog_without_a_client_restores_dask_config_and_environment(field, cheap_engine, tmp_path):
    """Its own local cluster (one worker): the run's memory-pause setting is scoped to that cluster."""
    import dask

    d, _ = field
    pause = dask.config.get("distributed.worker.memory.pause", None)
    env = dict(os.environ)
    s = mergerscan.process_catalog(
        d / "cat.csv",
        tmp_path / "run",
        images=d / "stamps",
        engine=cheap_engine,
        progress=False,
        report=False,
        workers=1,
        threads=1,
    )
    assert s.rows == N
    assert dask.config.get("distributed.worker.memory.pause", None) == pause
    assert dict(os.environ) == env


def test_score_catalog_is_lazy_lsdb_and_crossmatches(field, cheap_engine, dask_client):
    import lsdb

    d, df = field
    good = df.dropna().drop_duplicates("objID").reset_index(drop=True)
    catalog = lsdb.from_dataframe(good, ra_column="RAdeg", dec_column="DEdeg", catalog_name="field")
    scored = mergerscan.score_catalog(catalog, images=d / "stamps", engine=cheap_engine)
    assert isinstance(scored, lsdb.Catalog)
    assert {"objid", "p_merger", "is_merger", "status"} <= set(scored.columns)
    truth = lsdb.from_dataframe(good.rename(columns={"objID": "truth_id"}), ra_column="RAdeg", dec_column="DEdeg")
    matched = scored.crossmatch(
        truth, radius_arcsec=0.1, n_neighbors=1, suffixes=("", "_truth"), suffix_method="all_columns"
    ).compute()
    assert len(matched) == len(good)
    assert (matched["objid"].to_numpy() == matched["truth_id_truth"].to_numpy()).all()
    direct = mergerscan.score(good, images=d / "stamps", engine=cheap_engine).set_index("objid")
    p = direct.loc[matched["objid"].to_numpy(), "p_merger"].to_numpy()
    np.testing.assert_allclose(matched["p_merger"].to_numpy(np.float64), p, rtol=0, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda d, df, e: mergerscan.score(df, images=d / "nowhere", engine=e), "images"),
        (lambda d, df, e: mergerscan.score(df, images=d / "stamps", frames=d, engine=e), "images"),
        (lambda d, df, e: mergerscan.score(df, engine=e), "images"),
        (lambda d, df, e: mergerscan.score(df, images=d / "stamps", engine=e, id_column="nope"), "id_column"),
        (lambda d, df, e: mergerscan.score(str(d / "cat.csv"), images=d / "stamps", engine=e), "table"),
        (lambda d, df, e: mergerscan.score(df, images=d / "stamps", engine=d / "no.onnx"), "engine"),
        (lambda d, df, e: mergerscan.score(df, images=d / "stamps", engine=e, domain="sometimes"), "domain"),
        (lambda d, df, e: mergerscan.score(df, images=d / "stamps", engine=e, batch_size=0), "batch_size"),
        (lambda d, df, e: mergerscan.load_engine(d / "no.onnx"), "path"),
        (lambda d, df, e: mergerscan.load_engine(e, backend="abacus"), "backend"),
        (lambda d, df, e: mergerscan.load_engine(e, views=3), "views"),
        (lambda d, df, e: mergerscan.process_catalog(d / "no.csv", d / "o", images=d / "stamps"), "catalog"),
        (
            lambda d, df, e: mergerscan.process_catalog(d / "cat.csv", d / "o", images=d / "stamps", colour="red"),
            "colour",
        ),
        (
            lambda d, df, e: mergerscan.process_catalog(d / "cat.csv", d / "o", images=d / "stamps", partition_rows=0),
            "partition_rows",
        ),
        (
            lambda d, df, e: mergerscan.process_catalog(
                d / "cat.csv", d / "o", images=d / "stamps", keep_columns=["zz"]
            ),
            "keep_columns",
        ),
        (lambda d, df, e: mergerscan.score_catalog(df, images=d / "stamps", engine=e), "catalog"),
    ],
)
def test_errors_are_value_errors_naming_the_argument(field, cheap_engine, call, argument):
    d, df = field
    with pytest.raises(ValueError) as exc:
        call(d, df, cheap_engine)
    assert isinstance(exc.value, InvalidArgument), f"{type(exc.value).__name__}: {exc.value}"
    assert exc.value.argument == argument, str(exc.value)
    assert "--" not in str(exc.value) and "\n" not in str(exc.value)


def test_score_takes_every_kind_of_image_source(field, cheap_engine):
    """A cutout service (a real HTTP server on 127.0.0.1 serving the same JPEGs by position) and a
    registered source kind give the scores the stamps directory gives."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    d, df = field
    by_position = [
        (ra, dec, d / "stamps" / f"{i}.jpg") for i, ra, dec in df[["objID", "RAdeg", "DEdeg"]].itertuples(index=False)
    ]

    class Stamps(BaseHTTPRequestHandler):
        def do_GET(self):
            q = parse_qs(urlsplit(self.path).query)
            ra, dec = float(q["ra"][0]), float(q["dec"][0])
            hit = [p for a, b, p in by_position if abs(a - ra) < 1e-5 and abs(b - dec) < 1e-5 and p.is_file()]
            body = hit[0].read_bytes() if hit else b"no such object"
            self.send_response(200 if hit else 404)
            self.send_header("Content-Type", "image/jpeg" if hit else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stamps)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cutout"
        served = mergerscan.score(df, service=url, source_options={"retries": 0}, engine=cheap_engine)
    finally:
        httpd.shutdown()
        httpd.server_close()
    stamps = mergerscan.score(df, images=d / "stamps", engine=cheap_engine)
    kind = mergerscan.score(df, source=("stamps", str(d / "stamps")), engine=cheap_engine)
    assert_same_rows(kind, stamps, atol=0)
    ok = stamps["status"] == "ok"
    assert (served["status"][ok] == "ok").all() and ok.sum() == N - 4
    np.testing.assert_allclose(served["p_merger"][ok], stamps["p_merger"][ok], rtol=0, atol=1e-6)
