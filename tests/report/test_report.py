"""Run and training reports: exact streamed statistics, and the page rendered in a real headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mergerscan import __version__
from mergerscan.catalogs.write import write_partition
from mergerscan.cli import main
from mergerscan.engines import default_engine_path, read_engine_info
from mergerscan.pipeline.cli import main as process_catalog
from mergerscan.pipeline.plan import healpix29
from mergerscan.report import build_report, build_training_report

BIG = 588018055654998067
HAVE_STAMPS = importlib.util.find_spec("mergerscan.cutouts.stamps") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _stamp(rng, size=256):
    yy, xx = np.mgrid[:size, :size] - size / 2
    img = rng.normal(10, 3, (size, size, 3))
    for _ in range(1 + (rng.random() < 0.4)):
        cx, cy = rng.normal(0, 18, 2)
        r = np.hypot(xx - cx, (yy - cy) * rng.uniform(1, 2))
        img += np.exp(-r / rng.uniform(4, 12))[..., None] * rng.uniform(120, 220, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_summary(out: Path, **fields) -> None:
    """OUT/summary.json with the keys given, the one place these tests build a run summary (the
    report reads it as a RunSummary: a key left out is its default, as in a run of an older version)."""
    (out / "summary.json").write_text(json.dumps(fields, indent=1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished-looking process-catalog output: 6 partitions on 3 sky patches, markers, summary, stamps."""
    d = tmp_path_factory.mktemp("report")
    out, stamps = d / "out", d / "stamps"
    stamps.mkdir()
    rng = np.random.default_rng(7)
    info = read_engine_info(default_engine_path())
    thr = info.threshold
    patches = [(150.2, 2.2), (210.3, -0.7), (35.0, 0.5)]
    n_part, t0 = 200, 1_700_000_000.0
    meta = {
        "engine_name": info.name,
        "engine_sha256": info.sha256,
        "threshold": thr,
        "mergerscan_version": __version__,
        "source": "stamps",
        "model_card": json.dumps(info.card.to_dict()),
    }
    for k in range(6):
        ra0, dec0 = patches[k % 3]
        ra = ra0 + rng.uniform(-0.6, 0.6, n_part) + 1.3 * (k // 3)
        dec = dec0 + rng.uniform(-0.6, 0.6, n_part)
        status = rng.choice(["ok", "edge", "no_image", "outside_footprint"], n_part, p=[0.86, 0.06, 0.05, 0.03])
        status = status.astype(object)
        ra[:2] = np.nan  # bad coordinates
        status[:2] = "bad_coords"
        status[5] = "ok"
        scored = np.isin(status, ["ok", "edge"])
        p = np.where(scored, rng.beta(0.45, 4, n_part), np.nan).astype(np.float32)
        p[5] = thr  # exactly on the threshold
        valid = np.isfinite(ra) & np.isfinite(dec)
        truth = rng.choice(["merger", "normal", "star"], n_part, p=[0.1, 0.8, 0.1]).astype(object)
        df = pd.DataFrame(
            {
                "objid": BIG + np.arange(k * n_part, (k + 1) * n_part, dtype=np.int64) * 3,
                "ra": ra,
                "dec": dec,
                "p_merger": p,
                "is_merger": np.nan_to_num(p, nan=-1) >= thr,
                "status": status,
                "input_row": np.arange(k * n_part, (k + 1) * n_part, dtype=np.int64),
                "_healpix_29": healpix29(np.nan_to_num(ra), np.nan_to_num(dec), valid),
                "redshift": rng.gamma(3, 0.03, n_part).astype(np.float32),
                "mag_r": rng.uniform(14, 17.7, n_part).astype(np.float32),
                "truth": truth,
            }
        )
        df.loc[7, "redshift"] = np.nan  # a missing value in a carried column
        write_partition(df, out / "parquet" / "Norder=3" / "Dir=0" / f"Npix={k}.parquet", meta)
        for oid in df["objid"][scored]:
            Image.fromarray(_stamp(rng)).save(stamps / f"{oid}.jpg", quality=90)
        mk = out / "_work" / "scored" / f"part-{k:06d}.json"
        mk.parent.mkdir(parents=True, exist_ok=True)
        started = t0 + 4.0 * k
        mk.write_text(
            json.dumps(
                {
                    "pid": k,
                    "rows": n_part,
                    "status": df["status"].value_counts().to_dict(),
                    "mergers": int(df["is_merger"].sum()),
                    "started": started,
                    "finished": started + 6.5,
                    "seconds": 6.5,
                    "fetch_seconds": 2.5,
                    "infer_seconds": 3.2,
                }
            )
        )
    whole = pd.read_parquet(out / "parquet")
    write_summary(
        out,
        rows=len(whole),
        scored=int(whole["status"].isin(["ok", "edge"]).sum()),
        status=whole["status"].value_counts().to_dict(),
        mergers=int(whole["is_merger"].sum()),
        threshold=thr,
        partitions=6,
        seconds=30.5,
        objects_per_s=round(len(whole) / 30.5, 1),
        engine=info.name,
        engine_sha256=info.sha256,
        engine_path=str(default_engine_path()),
        mergerscan_version=__version__,
        catalog=str(d / "cat.fits"),
        command="process-catalog cat.fits --images stamps -o out --keep-columns redshift,mag_r,truth",
        source={"kind": "stamps", "location": str(stamps), "options": {}},
        id_column="objid",
        keep=["redshift", "mag_r", "truth"],
        path_column=None,
    )
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    # tiny batches and a small reservoir: the streaming path is what gets tested
    return build_report(run_dir, top_n=9, borderline_n=6, sample_rows=300, max_memory_rows=97)


def _all(run_dir) -> pd.DataFrame:
    import pyarrow.dataset as ds

    return ds.dataset(sorted((run_dir / "parquet").rglob("*.parquet")), format="parquet").to_table().to_pandas()


def test_streamed_statistics_are_exact(run_dir, report):
    doc = json.loads((report.parent / "report.json").read_text())
    df = _all(run_dir)
    scored = df[df["status"].isin(["ok", "edge"])]
    assert doc["rows"] == len(df) == 1200 and doc["scored"] == len(scored)
    assert doc["status"] == df["status"].value_counts().to_dict()
    assert doc["mergers"] == int(df["is_merger"].sum())
    assert doc["score_hist"] == np.histogram(scored["p_merger"].astype(float), doc["score_bins"])[0].tolist()
    top = scored.sort_values(["p_merger", "objid"], ascending=[False, True]).head(9)
    assert [r["id"] for r in doc["top"]] == top["objid"].tolist()  # int64 ids exact
    dist = (scored["p_merger"].astype(float) - doc["threshold"]).abs()
    assert {r["id"] for r in doc["borderline"]} == set(scored.loc[dist.nsmallest(6).index, "objid"])
    z = doc["columns"]["redshift"]
    edges = np.array(z["edges"])
    v = scored["redshift"].to_numpy(float)
    inside = np.isfinite(v) & (v >= edges[0]) & (v <= edges[-1])
    assert z["n"] == np.histogram(v[inside], edges)[0].tolist()
    assert z["outside"] == [int(np.isnan(v).sum()), int((v < edges[0]).sum()), int((v > edges[-1]).sum())]
    t = doc["columns"]["truth"]
    assert dict(zip(t["categories"], t["n"])) == scored["truth"].value_counts().to_dict()
    assert dict(zip(t["categories"], t["mergers"])) == scored.groupby("truth")["is_merger"].sum().to_dict()
    assert doc["sample_rows"] == 300 and doc["presample_rows"] > 0
    for name in ("scores", "sky", "columns", "sample", "status", "throughput"):
        assert (report.parent / f"{name}.png").stat().st_size > 5000


def test_page_content(run_dir, report):
    html = report.read_text()
    assert not re.search(r'(src|href)="(?!data:|#|https://www\.legacysurvey\.org/)', html)  # nothing to load
    assert "<script src" not in html and "@import" not in html and "url(" not in html
    info = read_engine_info(default_engine_path())
    for text in (
        info.sha256,
        info.name,
        f"{info.card.metrics_test.roc_auc:.4f}",
        "--keep-columns",
        "reservoir",
        "300 scored rows",
        "Legacy Surveys viewer",
        str(BIG + 3 * 5),
    ):
        assert text in html, text
    assert html.count('class="stamp') == 9 + 6


@pytest.mark.skipif(not CHROMIUM, reason="needs chromium (make system-deps installs it)")
def test_report_renders_in_chromium(report, tmp_path):
    dom, shot = _chromium(report, tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images-ok="yes"' in body, body
    assert 'data-errors=""' in body, body
    assert int(re.search(r'data-images="(\d+)"', body).group(1)) == 6 + 9 + 6
    im = np.asarray(Image.open(shot).convert("L"), float)
    assert im.shape == (3000, 1200) and im.std() > 20  # not blank
    if HAVE_STAMPS:  # the gallery shows the real stamps, not "no cutout" placeholders
        assert json.loads((report.parent / "report.json").read_text())["cutouts"] == {"fetched": 15, "shown": 15}


def _chromium(page: Path, tmp: Path) -> tuple[str, Path]:
    common = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(common + ["--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    r = subprocess.run(
        common + [f"--screenshot={shot}", "--window-size=1200,3000", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    return dom.stdout, shot


@pytest.fixture
def training_dir(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = tmp_path / "train"
    d.mkdir()
    for name in ("roc", "pr", "reliability", "confusion"):
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.plot([0, 1], [0, 1])
        fig.savefig(d / f"{name}.png")
        plt.close(fig)
    split = {
        "roc_auc": 0.95,
        "pr_auc": 0.9,
        "precision_at_2pct": 0.31,
        "ece": 0.02,
        "threshold": 0.47,
        "n": 100,
        "merger": {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 30},
    }
    card = {"name": "effl0-test", "arch": "efficientnet_lite0", "command": "mergerscan train --catalog c.csv"}
    (d / "metrics.json").write_text(json.dumps({"card": card, "test": split, "val": split}))
    (d / "table1.md").write_text(
        "## effl0-test (test split)\n\n| class | precision | recall | F1 | support |\n"
        "|---|---|---|---|---|\n| merger | 0.800 | 0.700 | 0.750 | 30 |\n"
    )
    (d / "history.json").write_text(
        json.dumps(
            [{"n_train": 5}]
            + [
                {
                    "phase": "a" if e < 2 else "b",
                    "epoch": e,
                    "train_loss": 1 / (e + 1),
                    "val_loss": 1.1 / (e + 1),
                    "val_roc_auc": 0.8 + 0.03 * e,
                }
                for e in range(4)
            ]
        )
    )
    return d


def test_training_report(training_dir, tmp_path):
    path = build_training_report(training_dir)
    html = path.read_text()
    assert path == training_dir / "report.html"
    assert html.count("<img") == 5 and "effl0-test" in html and '<td class="num">0.750</td>' in html
    # the card, read as an EngineCard: its keys as rows, the command as code, the name in the title
    assert "<code>mergerscan train --catalog c.csv</code>" in html and "efficientnet_lite0" in html
    assert "mergerscan training report — effl0-test" in html
    m = json.loads((training_dir / "metrics.json").read_text())
    (training_dir / "card.json").write_text(json.dumps({**m.pop("card"), "name": "from-card-json"}))
    (training_dir / "metrics.json").write_text(json.dumps(m))  # a run whose metrics.json has no card
    assert "mergerscan training report — from-card-json" in build_training_report(training_dir).read_text()
    if CHROMIUM:
        dom, _ = _chromium(path, tmp_path)
        assert 'data-images-ok="yes"' in dom and 'data-errors=""' in dom


def test_cli_report(run_dir, training_dir, tmp_path, capsys):
    assert main(["report", str(training_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(training_dir / "report.html")
    run = shutil.copytree(run_dir, tmp_path / "run")  # leave the module's report alone
    assert main(["report", str(run), "--top-n", "3"]) == 0
    assert len(json.loads((run / "report" / "report.json").read_text())["top"]) == 3
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "profile")])
    assert e.value.code == 2
    assert "neither summary.json" in capsys.readouterr().err


def test_report_of_a_run_with_nothing_scored(tmp_path):
    """String ids, every row flagged, the engine file and the image directory gone: still a page, with warnings."""
    out = tmp_path / "out"
    n = 50
    ra, dec = np.linspace(10, 11, n), np.linspace(-5, -4, n)
    df = pd.DataFrame(
        {
            "id": [f"J{i:04d}" for i in range(n)],
            "ra": ra,
            "dec": dec,
            "p_merger": np.full(n, np.nan, np.float32),
            "is_merger": np.zeros(n, bool),
            "status": np.full(n, "no_image", object),
            "input_row": np.arange(n, dtype=np.int64),
            "_healpix_29": healpix29(ra, dec, np.ones(n, bool)),
            "mag_r": np.linspace(15, 18, n),
        }
    )
    card = {"name": "gone-engine", "metrics_test": {"roc_auc": 0.9123}}
    write_partition(df, out / "parquet" / "Norder=0" / "Dir=0" / "Npix=4.parquet", {"model_card": json.dumps(card)})
    write_summary(
        out,
        rows=n,
        threshold=0.5,
        engine="gone-engine",
        engine_path=str(tmp_path / "gone.onnx"),
        engine_sha256="0" * 64,
        source={"kind": "stamps", "location": str(tmp_path / "nope"), "options": {}},
        id_column="id",
        command="process-catalog c.csv",
        mergerscan_version=__version__,
    )
    html = build_report(out).read_text()
    assert "unreadable" in html and "0.9123" in html and "no scored rows" in html
    doc = json.loads((out / "report" / "report.json").read_text())
    assert doc["rows"] == n and doc["scored"] == 0 and doc["status"] == {"no_image": n} and doc["top"] == []


@pytest.mark.skipif(not HAVE_STAMPS, reason="needs the stamps image source")
@pytest.mark.parametrize("fmt, column", [("csv", "File"), ("fits", "Status")])
def test_report_of_a_path_column_run_shows_its_cutouts(fmt, column, dask_client, tmp_path):
    """process-catalog --path-column (a column named anything but 'path', given in another case;
    ``Status`` clashes with an output column and comes out as ``in_Status``): stamp files named
    unlike the ids are scored, and the run's report re-fetches every gallery cutout from them."""
    n = 12
    rng = np.random.default_rng(11)
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    files = [f"sub/galaxy-{k}.jpg" for k in range(n)]  # not <id>.jpg: only the column finds them
    for f in files:
        Image.fromarray(_stamp(rng, 96)).save(imgs / f, quality=90)
    ra, dec = rng.uniform(150, 150.2, n), rng.uniform(2, 2.2, n)
    catalog = tmp_path / f"cat.{fmt}"
    if fmt == "csv":
        pd.DataFrame({"objid": np.arange(1, n + 1), "ra": ra, "dec": dec, column: files}).to_csv(catalog, index=False)
    else:
        import fitsio

        fitsio.write(
            str(catalog),
            np.rec.fromarrays(
                [np.arange(1, n + 1), ra, dec, np.array(files, "S32")], names=["objid", "ra", "dec", column]
            ),
        )
    out = tmp_path / "out"
    rc = process_catalog(
        [
            str(catalog),
            "--images",
            str(imgs),
            "--path-column",
            column.lower(),
            "-o",
            str(out),
            "--scheduler",
            dask_client.scheduler.address,
            "--views",
            "1",
            "--no-progress",
            "--domain",  # synthetic blobs: the image check would move some out of the top gallery
            "off",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 0 and summary["scored"] == n, summary["status"]
    assert summary["path_column"] == ("in_Status" if column == "Status" else column)
    assert (out / "report" / "index.html").is_file()
    doc = json.loads((out / "report" / "report.json").read_text())
    shown = len(doc["top"]) + len(doc["borderline"])
    assert shown == 2 * n and doc["cutouts"] == {"fetched": shown, "shown": shown}
    assert summary["path_column"] not in doc["columns"]  # stamp paths are not binned
