"""``process-catalog --embeddings [N]`` end to end on the session's real Dask scheduler.

The engine is a small EfficientNet-Lite0 (64 px) exported here with a representation block
(k = 8) fitted on the pooled features of conftest's real SDSS stamps, so nothing depends on the
packaged model.  The catalog holds those 24 stamps, one id without an image and one row with bad
coordinates (both unscored: null embedding, NaN in FITS).  Tolerances: the column equals
``engine.score(features=True).features[:, :N]`` to 1e-5 (same backend, same stamps), the torch
backend's column the ONNX Runtime one to 1e-4 relative to the vectors' scale.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import assert_fits_equals_parquet, need_stilts, parquet_table, run_cli, stilts_tpipe
from mergerscan.engines import load_engine

K, N = 8, 6


@pytest.fixture(scope="module")
def repr_engine(real_stamps, tmp_path_factory):
    """An engine file with a representation block of K components (see the module docstring)."""
    import onnx
    import torch

    from mergerscan.cutouts.preprocess import PreprocessSpec
    from mergerscan.models import MissingWeightsError, create_model
    from mergerscan.training.export import export_onnx
    from mergerscan.training.representation import embed, extract, feature_tensors, fit_block

    torch.manual_seed(1)
    try:
        net = create_model("efficientnet_lite0", init="imagenet")
    except MissingWeightsError:
        net = create_model("efficientnet_lite0")
    card = {"arch": "efficientnet_lite0", "name": "test-lite0-64-embed", "temperature": 1.0, "threshold": 0.5}
    d = tmp_path_factory.mktemp("embed-engine")
    plain = export_onnx(net.eval(), PreprocessSpec(input_size=64), card, d / "plain.onnx")
    tensors = feature_tensors(onnx.load(str(plain)))
    x = extract(plain, real_stamps, {"backbone_pool": tensors["backbone_pool"]})["backbone_pool"]
    rep, ratio = fit_block(x, K)
    updates = {
        "representation": {
            "features": "backbone_pool",
            "k": K,
            "explained_variance_ratio": [round(float(r), 6) for r in np.ravel(ratio)][:K],
            "fitted_on": "the 24 conftest stamps (test)",
        }
    }
    return embed(plain, rep, tensors["backbone_pool"], updates, d / "block.onnx")


@pytest.fixture(scope="module")
def catalog(gz_dir, real_stamps, tmp_path_factory):
    files = sorted(gz_dir.glob("images/*.jpg"))[:24]
    ids = [f.stem for f in files]
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"id": ids, "ra": rng.uniform(150, 151, 24), "dec": rng.uniform(1, 2, 24)})
    extra = pd.DataFrame({"id": ["NO_SUCH_STAMP", ids[0] + "_badpos"], "ra": [150.5, np.nan], "dec": [1.5, 1.0]})
    path = tmp_path_factory.mktemp("embed-cat") / "cat.csv"
    pd.concat([df, extra]).to_csv(path, index=False)
    return path, ids


def _run(dask_client, catalog, gz_dir, out, *extra, engine, capsys=None):
    argv = (catalog[0], "-o", out, "--images", gz_dir / "images", "--id-column", "id", *extra)
    return run_cli(dask_client, *argv, engine=engine, capsys=capsys)


def _vectors(table: pa.Table, ids: list[str]) -> np.ndarray:
    """The embedding column as (len(ids), N) in the order of ``ids`` (None rows: NaN)."""
    by_id = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()))
    return np.array([[np.nan] * N if by_id[i] is None else by_id[i] for i in ids], np.float64)


@pytest.fixture(scope="module")
def runs(dask_client, catalog, gz_dir, repr_engine, tmp_path_factory):
    """{name: OUT} of the runs the tests read: onnxruntime with and without --embeddings, torch."""
    root = tmp_path_factory.mktemp("embed-runs")
    outs = {}
    for name, extra in (
        ("ort", ("--embeddings", str(N))),
        ("plain", ()),
        ("torch", ("--embeddings", str(N), "--backend", "torch")),
    ):
        rc, _, err = _run(dask_client, catalog, gz_dir, root / name, *extra, engine=repr_engine)
        assert rc == 0, err
        outs[name] = root / name
    return outs


def test_column_in_parquet_equals_the_engine_features(runs, catalog, repr_engine, real_stamps):
    t = parquet_table(runs["ort"])
    field = t.schema.field("embedding")
    assert field.type == pa.list_(pa.float32(), N)
    meta = {k.decode(): v.decode() for k, v in field.metadata.items()}
    assert meta["dimension"] == str(N) and meta["k"] == str(K) and meta["features"] == "backbone_pool"
    assert len(json.loads(meta["explained_variance_ratio"])) == N
    assert 0 < float(meta["explained_variance"]) <= 1
    assert (
        'name="embedding" datatype="float" arraysize="6"' in t.schema.metadata[b"IVOA.VOTable-Parquet.content"].decode()
    )
    ids = catalog[1]
    want = load_engine(repr_engine, views=1).score(real_stamps, features=True).features[:, :N]
    got = _vectors(t, ids)
    assert np.abs(got - want).max() <= 1e-5
    rows = dict(zip(t.column("id").to_pylist(), t.column("embedding").to_pylist()))
    status = dict(zip(t.column("id").to_pylist(), t.column("status").to_pylist()))
    assert status["NO_SUCH_STAMP"] == "no_image" and rows["NO_SUCH_STAMP"] is None
    assert status[ids[0] + "_badpos"] == "bad_coords" and rows[ids[0] + "_badpos"] is None
    summary = json.loads((runs["ort"] / "summary.json").read_text())
    assert summary["embeddings"]["dimension"] == N and summary["embeddings"]["k"] == K


def test_fits_vector_column_equals_parquet(runs):
    _, fits, hdr = assert_fits_equals_parquet(runs["ort"])  # incl. TFORM '6E' and NaN vectors for null rows
    assert fits["embedding"].shape == (26, N) and hdr["EMBDIM"] == N
    unscored = np.isin(fits["status"].astype(str), ["no_image", "bad_coords"])
    assert unscored.sum() == 2 and np.isnan(fits["embedding"][unscored]).all()
    assert np.isfinite(fits["embedding"][~unscored]).all()


def test_stilts_reads_the_vector_column(runs):
    need_stilts("the FITS vector column is checked with fitsio above")
    fits = runs["ort"] / "mergers.fits"
    meta = stilts_tpipe(fits, "cmd=keepcols embedding", "omode=meta")
    assert f"embedding(float[{N}])" in meta
    rows = stilts_tpipe(
        fits, 'cmd=select "equals(status, \\"no_image\\")"', "cmd=keepcols embedding", "omode=out", "ofmt=csv"
    )
    assert rows.splitlines()[1].count("NaN") == N


def test_torch_backend_gives_the_same_vectors(runs, catalog):
    ids = catalog[1]
    ref, got = (_vectors(parquet_table(runs[k]), ids) for k in ("ort", "torch"))
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= 1e-4 * scale


def test_without_the_flag_nothing_changes(runs):
    plain, emb = parquet_table(runs["plain"]), parquet_table(runs["ort"])
    assert "embedding" not in plain.column_names
    assert emb.drop_columns(["embedding"]).column_names == plain.column_names
    assert "embeddings" not in json.loads((runs["plain"] / "summary.json").read_text())
    by = dict(zip(plain.column("id").to_pylist(), plain.column("p_merger").to_numpy(zero_copy_only=False)))
    p = emb.column("p_merger").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(p, [by[i] for i in emb.column("id").to_pylist()])  # same call, same scores
    assert b"mergerscan.embedding" not in plain.schema.metadata


def test_refused_dimensions_and_engines(dask_client, catalog, gz_dir, repr_engine, cheap_engine, tmp_path, capsys):
    for extra, engine, says in (
        (("--embeddings", str(K + 1)), repr_engine, f"has {K} components; choose 1..{K}"),
        (("--embeddings",), cheap_engine, "has no representation block"),
    ):
        out = tmp_path / f"refused-{len(extra)}"
        rc, _, err = _run(dask_client, catalog, gz_dir, out, *extra, engine=engine, capsys=capsys)
        assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()  # nothing written
    with pytest.raises(SystemExit) as exc:
        _run(dask_client, catalog, gz_dir, tmp_path / "zero", "--embeddings", "0", engine=repr_engine)
    assert exc.value.code == 2


def test_resume_with_another_dimension_is_refused(runs, dask_client, catalog, gz_dir, repr_engine, capsys):
    rc, _, err = _run(dask_client, catalog, gz_dir, runs["ort"], "--embeddings", "4", engine=repr_engine, capsys=capsys)
    assert rc == 2 and "different embeddings" in err, err


def test_report_has_the_embedding_map_only_with_embeddings(runs):
    from mergerscan.report import build_report

    with_map = build_report(runs["ort"]).read_text()
    assert 'id="embeddings"' in with_map and 'href="#embeddings"' in with_map
    assert 'alt="embedding map"' in with_map  # the figure was drawn, not replaced by a note
    section = with_map.split('id="embeddings"')[1].split("</section>")[0]
    assert section.count('class="stamp') == 12  # the numbered cutouts spread over the map
    assert (runs["ort"] / "report" / "embedding_map.png").stat().st_size > 0
    without = build_report(runs["plain"]).read_text()
    assert 'id="embeddings"' not in without and not (runs["plain"] / "report" / "embedding_map.png").exists()


def test_engine_info_shows_the_representation(repr_engine, cheap_engine, capsys):
    from mergerscan.cli import main as mergerscan

    assert mergerscan(["engine-info", str(repr_engine)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("representation"))
    assert f"{K} PCA components of backbone_pool" in line and f"the first {K}:" in line and "the 24 conftest" in line
    assert mergerscan(["engine-info", str(cheap_engine)]) == 0
    assert "representation none" in capsys.readouterr().out


def test_rerun_retries_transient_rows_and_keeps_the_vectors(runs, dask_client, catalog, gz_dir, repr_engine, capsys):
    """The no_image row is retried on a re-run; the partition's other rows keep their vectors as written."""
    before = parquet_table(runs["ort"])
    rc, _, err = _run(
        dask_client, catalog, gz_dir, runs["ort"], "--embeddings", str(N), engine=repr_engine, capsys=capsys
    )
    assert rc == 0, err
    after = parquet_table(runs["ort"])
    key = ["id", "status", "embedding"]
    assert sorted(after.select(key).to_pylist(), key=str) == sorted(before.select(key).to_pylist(), key=str)


def test_a_kept_embedding_column_is_renamed_only_in_runs_that_write_one():
    from mergerscan.catalogs.schema import output_names
    from mergerscan.catalogs.write import carried_names, column_info

    assert output_names(["embedding", "z"], "id") == {"embedding": "embedding", "z": "z"}
    assert output_names(["Embedding"], "objid", ("embedding",)) == {"Embedding": "in_Embedding"}
    kept = pa.schema([("id", pa.string()), ("embedding", pa.float64())])  # an input column, not the vector
    assert carried_names(kept) == {"embedding"} and column_info("embedding", carried_names(kept))[1] is None
    ours = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), N))])
    assert carried_names(ours) == set() and column_info("embedding")[1] == "src.morph;stat.fit"


class _Recording:
    """The real engine, noting whether each call asked for the features."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    def score(self, stamps, *, features=False):
        self.asked.append(features)
        return self.inner.score(stamps, features=features)


@pytest.mark.parametrize("dim", [0, N])
def test_features_are_asked_for_only_with_the_flag(dim, repr_engine, gz_dir):
    """BatchScorer on the real stamp source: without --embeddings (0) no call asks for the
    features and the scores hold no vectors; with N every call does and the rows get them."""
    from mergerscan.cutouts.sources import SourceConfig, open_source
    from mergerscan.pipeline.rows import Scores
    from mergerscan.pipeline.task import BatchScorer

    engine = _Recording(load_engine(repr_engine, views=1))
    ids = [f.stem for f in sorted(gz_dir.glob("images/*.jpg"))[:6]] + ["NO_SUCH_STAMP"]
    rows = pd.DataFrame({"id": ids, "ra": np.full(7, 150.0), "dec": np.full(7, 2.0)})
    status, scores = np.full(7, "", object), Scores.empty(7, dim)
    src = open_source(SourceConfig("stamps", str(gz_dir / "images")), engine.inner.spec)
    try:
        BatchScorer(src, engine, rows, status, scores, {}, np.arange(7)).run([np.arange(4), np.arange(4, 7)])
    finally:
        src.close()
    assert engine.asked == [dim > 0] * 2 and scores.embedding.shape == (7, dim)
    assert list(status[:6]) == ["ok"] * 6 and status[6] == "no_image"
    if dim:
        assert np.isfinite(scores.embedding[:6]).all() and np.isnan(scores.embedding[6]).all()
