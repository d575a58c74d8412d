"""mergerscan finetune: an E2 run that starts from an engine file's own network (new head, the
engine's preprocessing), exported as an engine that process-catalog runs.  Tiny real runs: a small
EfficientNet-Lite0 engine at 32 px on generated blobs (fast: resume, frozen blocks, errors), and
the packaged engine on a few real shared stamps (the real case, through process-catalog)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mergerscan
from conftest import blob_catalog, read_out, run_cli
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.engines import load_engine, read_engine_info
from mergerscan.engines.base import file_sha256
from mergerscan.engines.engine_file import write_metadata
from mergerscan.engines.torch import rebuild_model
from mergerscan.training.data import build_labelled_set, subsample_train, with_splits


def _cli(*argv, ok=True):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(mergerscan.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    r = subprocess.run(
        [sys.executable, "-m", "mergerscan.cli", *map(str, argv)], env=env, capture_output=True, text=True, timeout=900
    )
    if ok:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small real engine file (EfficientNet-Lite0, random weights, 32 px stamps and input)."""
    from mergerscan.models import create_model
    from mergerscan.training.export import export_onnx

    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("finetune")
    net = create_model("efficientnet_lite0", hidden=16).eval()
    spec = PreprocessSpec(stamp_pixels=32, pixel_scale=0.8, input_size=32)
    card = {"name": "tiny-source", "arch": "efficientnet_lite0", "labels": "source labels", "temperature": 1.0}
    return (
        root,
        export_onnx(net, spec, card, root / "source.onnx"),
        blob_catalog(root / "data", n_per_class=16, seed=2, prefix="B", label="twoblob", ext="jpg", sideways=False),
    )


FAST = ["--label-column", "twoblob", "--epochs-top", "1", "--epochs", "1", "--batch-size", "8"]
FAST += ["--unfreeze-blocks", "2", "--threads", "1"]


def test_finetune_stops_resumes_and_keeps_the_frozen_backbone(source, dask_client):
    root, engine, catalog = source
    run = root / "run"
    cache = ["--cache", root / "cache"]
    r = _cli("finetune", catalog, "--engine", engine, *FAST, *cache, "-o", run, "--stop-after-epochs", 1)
    assert "--resume" in r.stdout and not (run / "model.onnx").exists()
    _cli("finetune", "--resume", run, *cache)
    card = json.loads((run / "metrics.json").read_text())["card"]
    assert card["finetuned_from"]["sha256"] == file_sha256(engine) and card["init"] == "engine"
    assert card["finetuned_from"]["labels"] == "source labels" and card["label_column"] == "twoblob"
    assert "column twoblob of catalog.csv" in card["labels"] and card["name"] == "tiny-source-finetuned-twoblob"
    info = read_engine_info(run / "model.onnx")
    assert info.spec == read_engine_info(engine).spec  # the source's preprocessing, pixel scale included
    # it started from the engine: the blocks it never unfroze are the source's, bit for bit; the head is new
    src, _ = rebuild_model(engine)
    tuned = torch.load(run / "model.pt", weights_only=True)
    ref = src.state_dict()
    frozen = [k for k in ref if k.startswith("base._blocks.0.") or k.startswith("base._conv_stem")]
    assert frozen and all(torch.equal(tuned[k], ref[k]) for k in frozen)
    assert not torch.equal(tuned["top.4.weight"], ref["top.4.weight"])
    assert any(not torch.equal(tuned[k], ref[k]) for k in ref if k.startswith("base._blocks.15."))
    # a normal engine file: both backends agree, and process-catalog runs it
    stamps = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "data" / "images").glob("*.jpg"))])
    p_ort = load_engine(run / "model.onnx").predict(stamps)
    p_torch = load_engine(run / "model.onnx", backend="torch").predict(stamps)
    np.testing.assert_allclose(p_ort, p_torch, atol=1e-5)
    out = root / "scored"
    rc, _, _ = run_cli(dask_client, catalog, "--images", root / "data" / "images", "-o", out, engine=run / "model.onnx")
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 0 and summary["scored"] == len(stamps) and summary["engine_sha256"] == file_sha256(run / "model.onnx")
    got = read_out(out).sort_values("id")
    np.testing.assert_allclose(got["p_merger"].to_numpy(), p_ort, atol=1e-5)


def test_finetune_from_the_packaged_engine_on_real_stamps(gz_dir, dask_client, tmp_path):
    """The real case: --from default on a few real stamps at the engine's 224 px, then process-catalog."""
    run = tmp_path / "run"
    _cli(
        "finetune", gz_dir / "catalog.csv", "--limit-per-class", 6, "--epochs-top", 1, "--epochs", 1,
        "--batch-size", 8, "--unfreeze-blocks", 1, "--threads", 2, "--cache", tmp_path / "cache", "-o", run,
    )  # fmt: skip
    card = read_engine_info(run / "model.onnx").card
    default = read_engine_info(mergerscan.engines.default_engine_path())
    assert card.training.finetuned_from["sha256"] == default.sha256 and card.training.input_size == 224
    assert read_engine_info(run / "model.onnx").spec == default.spec
    ids = pd.read_csv(gz_dir / "catalog.csv").head(5)[["id", "ra", "dec"]]
    ids.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / "out"
    rc, _, _ = run_cli(
        dask_client, tmp_path / "few.csv", "--images", gz_dir / "images", "-o", out, engine=run / "model.onnx"
    )
    got = read_out(out)
    assert rc == 0 and (got["status"] == "ok").all() and got["p_merger"].between(0, 1).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--from", "nowhere.onnx"], "engine file nowhere.onnx not found"),
        (["--from", "CATALOG"], "catalog.csv: not a readable engine file"),
        (["--label-column", "nope"], "has no column 'nope'"),
        (["--label-column", "ra"], "column 'ra' must hold 0/1 labels"),
        (["--label-column", "twoblob", "--split-column", "image"], "holds 'images/b000.jpg'; use train, val, test"),
    ],
)
def test_finetune_bad_input_is_one_line(source, capsys, extra, message):
    from mergerscan.cli import main

    root, engine, catalog = source
    argv = ["finetune", str(catalog), "--engine", str(engine), "-o", str(root / "bad"), "--threads", "1"]
    with pytest.raises(SystemExit) as e:
        main([*argv, *(str(catalog) if x == "CATALOG" else x for x in extra)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_resume_refuses_a_changed_source_engine(source, tmp_path):
    _, engine, catalog = source
    copy = tmp_path / "source.onnx"
    copy.write_bytes(engine.read_bytes())
    run = tmp_path / "run"
    _cli("finetune", catalog, "--engine", copy, *FAST, "-o", run, "--stop-after-epochs", 1)
    write_metadata(copy, copy, card_updates={"name": "another"})  # a different engine under the same name
    r = _cli("finetune", "--resume", run, ok=False)
    assert r.returncode == 2 and "changed since the run began" in r.stderr


def test_split_column_must_be_object_disjoint_and_subsets_are_stratified(tmp_path):
    n = 200
    rng = np.random.default_rng(0)
    t = pd.DataFrame(
        {
            "id": [f"o{i}" for i in range(n)],
            "label": (rng.random(n) < 0.2).astype(int),
            "ra": np.arange(n, dtype=float),
            "dec": np.zeros(n),
            "split": rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15]),
        }
    )
    t.loc[1, ["ra", "split"]] = [0.0 + 30 / 3600, "test" if t.loc[0, "split"] != "test" else "val"]
    with pytest.raises(ValueError, match=r'objects o0 and o1 .*within 100"'):
        with_splits(t.copy())
    ok = with_splits(t.drop(index=1).reset_index(drop=True))
    assert (ok["split"].to_numpy() == t.drop(index=1)["split"].to_numpy()).all()  # the user's split, kept
    sub = subsample_train(ok, 40, seed=3)
    kept = sub[sub["split"] == "train"]
    train = ok[ok["split"] == "train"]
    assert len(kept) == 40 and kept["label"].sum() == round(40 * train["label"].mean())
    assert (sub["split"] == "unused").sum() == len(train) - 40 and len(sub) == len(ok)
    assert (sub.loc[ok["split"] != "train", "split"] == ok.loc[ok["split"] != "train", "split"]).all()
    assert sub["split"].equals(subsample_train(ok, 40, seed=3)["split"])


def test_train_labels_keeps_one_stamp_cache(source, tmp_path):
    _, _, catalog = source
    a = build_labelled_set(catalog, label_column="twoblob", cache=tmp_path, train_labels=8)
    b = build_labelled_set(catalog, label_column="twoblob", cache=tmp_path)
    assert len(list(tmp_path.glob("stamps-*.npy"))) == 1 and len(a.indices("train")) == 8
    assert a.data_hash != b.data_hash and len(a.table) == len(b.table)
