"""Survey-prevalence evaluation (training/survey.py) and the report sections that show it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergerscan.training import survey


def test_precision_at_prevalence_from_rates_and_its_interval():
    """300 mergers, 900 non-mergers; at threshold 0.5: TPR 0.9, FPR 0.01.  Precision at 2 % is
    0.02*0.9 / (0.02*0.9 + 0.98*0.01) = 0.6475; the interval holds it and is wider at 1 %."""
    y = np.r_[np.ones(300), np.zeros(900)]
    p = np.r_[np.full(270, 0.9), np.full(30, 0.1), np.full(9, 0.8), np.full(891, 0.2)]
    m = survey.at_threshold(y, p, 0.5, n_boot=4000)
    assert m["recall"] == 0.9 and m["false_positive_rate"] == 0.01 and m["false_positives"] == 9
    assert m["precision_at_2pct"] == pytest.approx(0.018 / (0.018 + 0.0098), abs=1e-4)
    for pi in ("1", "2", "5"):
        lo, hi = m[f"precision_at_{pi}pct_ci95"]
        assert lo < m[f"precision_at_{pi}pct"] < hi
    width = lambda k: m[k][1] - m[k][0]
    assert m["precision_at_1pct"] < m["precision_at_2pct"] < m["precision_at_5pct"]
    lo, hi = m["recall_ci95"]
    assert lo < 0.9 < hi and width("recall_ci95") < 0.1
    assert width("precision_at_2pct_ci95") > 0.1  # 9 false positives: an honest, wide interval
    # the same seed gives the same interval; no false positive at all gives precision 1
    assert survey.at_threshold(y, p, 0.5, n_boot=4000) == m
    assert survey.at_threshold(y, p, 0.85)["precision_at_2pct"] == 1.0


def test_no_false_positive_still_has_an_interval():
    """0 false positives of 1,064: the rate is 0, but 0 of 1,064 only bounds it (~3/1,064), so the
    interval of precision at 1 % must reach well below 1 (not the zero-width [1, 1] a binomial
    resample at rate 0 gives); the same for a recall of 1."""
    y = np.r_[np.ones(363), np.zeros(1064)]
    p = np.r_[np.full(235, 0.99), np.full(128, 0.5), np.full(1064, 0.1)]
    m = survey.at_threshold(y, p, 0.9)
    assert m["false_positives"] == 0 and m["precision_at_1pct"] == 1.0
    lo, hi = m["false_positive_rate_ci95"]
    assert 0 <= lo < hi and 1.0 / 1064 < hi < 5.0 / 1064
    lo, hi = m["precision_at_1pct_ci95"]
    assert 0.5 < lo < 0.95 and hi > 0.999
    assert m["precision_at_2pct_ci95"][0] > lo  # higher prevalence: a narrower interval
    every = survey.at_threshold(y, p, 0.05)  # every merger flagged
    assert every["recall"] == 1.0 and every["recall_ci95"][0] < 1.0


def test_threshold_for_precision_is_the_lowest_that_reaches_it():
    y = np.r_[np.ones(100), np.zeros(1000)]
    p = np.r_[np.linspace(0.5, 1.0, 100), np.linspace(0.0, 0.7, 1000)]
    t = survey.threshold_for_precision(y, p, target=0.9, prevalence=0.02)
    tpr = (p[:100] >= t).mean()
    fpr = (p[100:] >= t).mean()
    assert survey.precision_at(tpr, fpr, 0.02) >= 0.9
    below = p[p < t].max()  # the next threshold down misses the target
    assert survey.precision_at((p[:100] >= below).mean(), (p[100:] >= below).mean(), 0.02) < 0.9
    assert survey.threshold_for_precision(y, np.r_[np.zeros(100), np.ones(1000)], 0.9) is None


def test_worst_failures_are_the_most_confident_errors():
    ids = np.array([f"G{i}" for i in range(8)])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.05, 0.95, 0.6, 0.1, 0.3, 0.49])
    f = survey.worst_failures(ids, y, p, [f"{i}.jpg" for i in ids], 0.5, k=2)
    assert [r["id"] for r in f["false_positives"]] == ["G3", "G4"]
    assert [r["id"] for r in f["false_negatives"]] == ["G2", "G1"]
    assert f["false_negatives"][0] == {"id": "G2", "is_merger": 1, "p_merger": 0.05, "image": "G2.jpg"}


def test_calibrate_eval_dir_renders_survey_and_failure_gallery(tmp_path, capsys):
    """`mergerscan calibrate --eval-dir` writes an evaluation directory for the default view count;
    `mergerscan report` on it shows the prevalence table and the failures with their cutouts."""
    from test_training import _labelled_dir, _tiny_engine

    from mergerscan.cli import main
    from mergerscan.engines.engine_file import read_card

    eng = _tiny_engine(tmp_path / "tiny.onnx")
    data = _labelled_dir(tmp_path / "data", n=120)
    ev_dir = tmp_path / "eval"
    argv = ["calibrate", str(data), "--engine", str(eng), "-o", str(tmp_path / "cal.onnx")]
    main([*argv, "--cache", str(tmp_path / "cache"), "--threads", "1", "--eval-dir", str(ev_dir)])
    m = json.loads((ev_dir / "metrics.json").read_text())
    card = read_card(tmp_path / "cal.onnx")
    assert m["card"]["views"] == card["views"] and m["test"]["threshold"] == card["threshold"]
    s = m["survey"]["at_engine_threshold"]
    assert s["threshold"] == card["threshold"] and s["n_mergers"] + s["n_non_mergers"] == m["test"]["n"]
    fails = m["failures"]["false_positives"] + m["failures"]["false_negatives"]
    assert fails and all((data / "images").is_dir() and r["image"].endswith(".jpg") for r in fails)
    npz = np.load(ev_dir / "test_scores.npz")
    assert len(npz["p"]) == m["test"]["n"]
    main(["report", str(ev_dir)])
    html = (ev_dir / "report.html").read_text()
    assert 'id="survey"' in html and 'id="failures"' in html and "precision @ 2 %" in html
    assert html.count('alt="cutout of ') == len(fails) and "image not found" not in html
    for r in fails:
        assert f">{r['id']}<" in html


def test_calibrating_fewer_views_computes_only_those_and_agrees(tmp_path):
    """`calibrate --views 1 2` runs only the views it needs and fits what a full 1/2/4/8 run fits."""
    from test_training import _labelled_dir, _tiny_engine

    from mergerscan.engines import load_engine
    from mergerscan.training.calibrate import calibrate_views
    from mergerscan.training.data import build_labelled_set

    eng = load_engine(_tiny_engine(tmp_path / "tiny.onnx"), views=1)
    ds = build_labelled_set(_labelled_dir(tmp_path / "data", n=60) / "catalog.csv", cache=str(tmp_path / "c"))
    calls = []
    logits = eng.logits
    eng.logits = lambda x: calls.append(len(x)) or logits(x)  # count the images the net sees
    args = (ds.stamps, ds.table["label"].to_numpy(), ds.table["split"].to_numpy())
    few = calibrate_views(eng, *args, views=(1, 2))
    n_few, calls[:] = sum(calls), []
    full = calibrate_views(eng, *args, views=(1, 2, 4, 8))
    assert n_few * 4 == sum(calls)  # 2 views per stamp instead of 8
    for n in (1, 2):
        assert (few[n].temperature, few[n].threshold) == (full[n].temperature, full[n].threshold)
        np.testing.assert_array_equal(few[n].p_test, full[n].p_test)


def test_calibrate_default_views_fixes_the_cost_and_keeps_other_counts(tmp_path, capsys):
    """`calibrate --views 1 2 --default-views 1`: the card runs 1 view by default (a cost budget),
    the 2-view calibration stays in by_views; a default outside --views is a one-line error."""
    from test_training import _labelled_dir, _tiny_engine

    from mergerscan.cli import main
    from mergerscan.engines import load_engine
    from mergerscan.engines.engine_file import read_card

    eng = _tiny_engine(tmp_path / "tiny.onnx")
    data = _labelled_dir(tmp_path / "data", n=60)
    base = ["calibrate", str(data), "--engine", str(eng), "--cache", str(tmp_path / "c"), "--threads", "1"]
    main([*base, "-o", str(tmp_path / "cal.onnx"), "--views", "1", "2", "--default-views", "1"])
    card = read_card(tmp_path / "cal.onnx")
    assert card["views"] == 1 and set(card["by_views"]) == {"1", "2"}
    assert card["threshold"] == card["by_views"]["1"]["threshold"] and "fixed at 1" in card["views_rule"]
    assert load_engine(tmp_path / "cal.onnx").info.views == 1
    assert load_engine(tmp_path / "cal.onnx", views=2).info.threshold == card["by_views"]["2"]["threshold"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*base, "-o", str(tmp_path / "bad.onnx"), "--views", "1", "2", "--default-views", "4"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and "--default-views 4" in err
    assert not (tmp_path / "bad.onnx").exists()
