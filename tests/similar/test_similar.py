"""mergerscan similar: k nearest rows of a real process-catalog run by its embedding column.

The run is real (process-catalog on real shared stamps with the session's cheap engine); until the
pipeline writes ``--embeddings`` itself, the fixture adds the ``embedding`` column to the run's own
partition files, computed from each row's stamp by a toy backend (registered here, as
tests/pipeline/test_toy_plugins.py does) whose ``score(features=True)`` gives a 12-d colour-layout
vector.  ``--like-file`` embeds a stamp with that same backend, so the row of that stamp must come
back first at distance ~0.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mergerscan.catalogs.hats import output_files
from mergerscan.cutouts.preprocess import prepare_batch
from mergerscan.engines.base import Engine, EngineInfo, EngineOutput
from mergerscan.engines.engine_file import load_metadata
from mergerscan.engines.registry import register_backend, unregister_backend

faiss = pytest.importorskip("faiss", reason="similarity search needs faiss-cpu (the search extra)")

from conftest import run_cli  # noqa: E402
from mergerscan.cli import main as mergerscan_main  # noqa: E402
from mergerscan.similar import SimilarError, load_index, open_run, plan_index, similar, write_page  # noqa: E402

DIM = 12


@dataclass(frozen=True)
class FeatureOptions:
    precision: str | None = None


@register_backend("toy-features", options=FeatureOptions, precisions=("fp32",), default_precision="fp32")
class ToyFeatureEngine(Engine):
    """The engine file's own logits are not needed here: p = sigmoid(mean); features = the mean of
    each colour band in a 2 x 2 grid of the prepared input (12 values)."""

    backend = "toy-features"

    def __init__(self, path, options: FeatureOptions, threads: int = 1, views: int | None = None):
        super().__init__(EngineInfo.from_metadata(path, load_metadata(path)))

    def _logits(self, x):
        return x.reshape(len(x), -1).mean(axis=1)

    def score(self, stamps, *, features=False):
        x = prepare_batch(np.asarray(stamps), self.spec)
        n, c, s, _ = x.shape
        f = x.reshape(n, c, 2, s // 2, 2, s // 2).mean(axis=(3, 5)).reshape(n, -1).astype(np.float32)
        return EngineOutput(self.predict(stamps), None, f if features else None)


@pytest.fixture(scope="module", autouse=True)
def _backend():
    yield
    unregister_backend("toy-features")


def _embed(engine, images: list[Path]) -> np.ndarray:
    stamps = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    return engine.score(stamps, features=True).features


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_client, cheap_engine, gz_dir):
    """A real run on 60 shared stamps (30 mergers, 30 not), plus one id with no stamp (not scored),
    whose partition files then get the embedding column (null where the row has no stamp)."""
    from mergerscan.engines import load_engine

    d = tmp_path_factory.mktemp("similar")
    cat = pd.read_csv(gz_dir / "catalog.csv")
    rows = pd.concat([cat[cat.is_merger == 1].head(30), cat[cat.is_merger == 0].head(30)])
    rows = rows[["id", "ra", "dec", "is_merger"]].rename(columns={"is_merger": "truth"})
    rows = pd.concat([rows, pd.DataFrame([{"id": "NOSTAMP", "ra": 150.0, "dec": 2.0, "truth": 0}])])
    rows.to_csv(d / "cat.csv", index=False)
    out = d / "out"
    rc, _, _ = run_cli(
        dask_client, d / "cat.csv", "--images", gz_dir / "images", "-o", out, "--no-report", engine=cheap_engine
    )
    assert rc in (0, 1)  # 1: the row without a stamp
    eng = load_engine(cheap_engine, backend="toy-features")
    for f in output_files(out / "parquet"):
        t = pq.read_table(f)
        ids, status = t.column("id").to_pylist(), t.column("status").to_pylist()
        has = [s in ("ok", "edge") for s in status]
        vec = _embed(eng, [gz_dir / "images" / f"{i}.jpg" for i, h in zip(ids, has) if h]) if any(has) else None
        it = iter(vec if vec is not None else [])
        values = [list(map(float, next(it))) if h else None for h in has]
        col = pa.array(values, type=pa.list_(pa.float32(), DIM))
        t = t.append_column(pa.field("embedding", col.type, metadata={"dimension": str(DIM)}), col)
        pq.write_table(t.replace_schema_metadata(t.schema.metadata), f)
    return out


def _all_vectors(out: Path) -> pd.DataFrame:
    t = pa.concat_tables([pq.read_table(f) for f in output_files(out / "parquet")]).to_pandas()
    return t[t["embedding"].notna()].reset_index(drop=True)


def test_like_id_returns_the_exact_k_nearest_without_itself(run):
    rows = _all_vectors(run)
    V = np.stack(rows["embedding"].to_numpy())
    for qi in (0, 17, 45):
        res = similar(run, rows["id"][qi], k=7)
        d = np.sqrt(((V - V[qi]) ** 2).sum(1))
        d[qi] = np.inf
        want = np.argsort(d, kind="stable")[:7]
        assert list(res.neighbours["id"]) == list(rows["id"][want])
        np.testing.assert_allclose(res.neighbours["distance"], d[want], rtol=1e-5, atol=1e-6)
        assert list(res.neighbours["rank"]) == list(range(1, 8))
        got = rows.set_index("id").loc[res.neighbours["id"]]
        np.testing.assert_allclose(res.neighbours["p_merger"], got["p_merger"])
        np.testing.assert_allclose(res.neighbours["ra"], got["ra"])
        assert res.query["id"] == rows["id"][qi]


def test_index_is_cached_with_provenance_and_rebuilt_when_the_run_changes(run):
    first = similar(run, "M0001", k=3)
    prov = json.loads((run / "similar" / "index.json").read_text())
    assert prov["rows"] == 60 and prov["dim"] == DIM and prov["kind"] == "flat" and prov["column"] == "embedding"
    assert prov["column_metadata"] == {"dimension": str(DIM)}
    again = similar(run, "M0001", k=3)
    assert not again.built_now and again.index == prov
    f = output_files(run / "parquet")[0]
    pq.write_table(pq.read_table(f), f)  # rewritten: the fingerprint changes
    third = similar(run, "M0001", k=3)
    assert third.built_now and list(third.neighbours["id"]) == list(first.neighbours["id"])


def test_like_file_embeds_with_the_runs_engine(run, gz_dir, tmp_path):
    res = similar(run, like_file=gz_dir / "images" / "M0007.jpg", k=4, backend="toy-features")
    assert res.neighbours["id"][0] == "M0007" and res.neighbours["distance"][0] < 1e-5
    assert res.query["file"].endswith("M0007.jpg") and 0 <= res.query["p_merger"] <= 1
    small = tmp_path / "small.jpg"
    Image.open(gz_dir / "images" / "M0007.jpg").resize((100, 100)).save(small)
    with pytest.raises(SimilarError, match="100x100 px; the run's engine takes 256x256"):
        similar(run, like_file=small, backend="toy-features")
    with pytest.raises(SimilarError, match="gives no embedding"):  # the ONNX engine has no features output
        similar(run, like_file=gz_dir / "images" / "M0007.jpg")


def test_cli_prints_neighbours_and_writes_the_gallery(run, capsys):
    assert mergerscan_main(["similar", str(run), "--like", "M0003", "--k", "5"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0].startswith("# index: flat") and lines[1].split()[:3] == ["rank", "distance", "id"]
    page = Path(lines[-1])
    assert page == run / "similar" / "like-M0003.html"
    html = page.read_text()
    assert html.count('class="stamp') == 1 + 5 and "no cutout" not in html  # real cutouts, from the run's images
    assert html.count("data:image/jpeg;base64,") == 6
    assert mergerscan_main(["similar", str(run), "--like", "M0003", "--k", "5", "--json", "--no-html"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in doc["neighbours"]] == [ln.split()[2] for ln in lines[2:7]]
    assert doc["html"] is None and doc["index"]["rows"] == 60


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--like", "NOPE"], "no row with id = NOPE"),
        (["--like", "NOSTAMP"], "row id = NOSTAMP has no embedding"),
        (["--like", "M0001", "--column", "p_merger"], "column 'p_merger' is float, not a vector"),
        (["--like", "M0001", "--column", "vec"], "has no column 'vec' (run process-catalog with --embeddings"),
    ],
)
def test_cli_errors_are_one_line(run, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        mergerscan_main(["similar", str(run), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_directory_that_is_no_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        mergerscan_main(["similar", str(tmp_path), "--like", "1"])
    assert "no process-catalog output" in capsys.readouterr().err


def test_ivfpq_index_finds_the_true_neighbours_and_reports_exact_distances(tmp_path):
    """Above exact_max_rows the index is IVF-PQ; the candidates are re-ranked exactly."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (30, 16))
    V = (centres[rng.integers(0, 30, 6000)] + rng.normal(0, 1, (6000, 16))).astype(np.float32)
    out = tmp_path / "run"
    f = out / "parquet" / "dataset" / "Norder=0" / "Dir=0" / "Npix=1.parquet"
    f.parent.mkdir(parents=True)
    t = pa.table(
        {
            "id": pa.array([f"g{i}" for i in range(len(V))]),
            "ra": np.linspace(0, 10, len(V)),
            "dec": np.zeros(len(V)),
            "p_merger": rng.random(len(V)).astype(np.float32),
            "status": ["ok"] * len(V),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(V.ravel()), 16),
        }
    )
    pq.write_table(t, f, row_group_size=1000)
    (out / "summary.json").write_text(json.dumps({"id_column": "id", "threshold": 0.5}))
    plan = plan_index(len(V), 16, exact_max_rows=1000)
    assert plan.kind == "ivfpq" and plan.m == 8 and plan.nlist <= len(V) // 39
    vi, built = load_index(open_run(out), exact_max_rows=1000)
    assert built and vi.provenance["kind"] == "ivfpq" and vi.index.ntotal == len(V)
    hits = 0
    for qi in range(0, 6000, 300):
        d = np.sqrt(((V - V[qi]) ** 2).sum(1))
        d[qi] = np.inf
        want = set(np.argsort(d)[:10])
        res = similar(out, f"g{qi}", k=10)
        got = [int(i[1:]) for i in res.neighbours["id"]]
        hits += len(want & set(got))
        np.testing.assert_allclose(res.neighbours["distance"], d[got], rtol=1e-5)  # exact, not PQ's estimate
    assert hits / (20 * 10) >= 0.9
    page = write_page(similar(out, "g0", k=3))
    assert "cutouts could not be fetched" in page.read_text()  # no image source: placeholders, a note


def test_gallery_of_a_moved_run_still_writes(run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    res = similar(moved, "M0002", k=2)
    assert write_page(res, tmp_path / "g.html").is_file()
