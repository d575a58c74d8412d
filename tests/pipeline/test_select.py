"""--select EXPR: a valid expression scores a subset (the rest kept as not_selected, the summary
adds up), an unknown column and a syntax error stop the run at the start with one line."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from conftest import cli_words, make_stamps, read_out, two_patch_catalog, write_fits_catalog
from mergerscan.catalogs.read import CatalogError
from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments
from mergerscan.pipeline.cli import main as process_catalog
from mergerscan.pipeline.run import run
from mergerscan.pipeline.select import evaluate, expression_names, resolve

EXPR = "mag_r < 16.5 and objID % 3 != 0"


@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    d = tmp_path_factory.mktemp("select")
    shutil.copy(cheap_engine, d / "engine.onnx")  # what is selected does not depend on the model
    df = two_patch_catalog(60, seed=11, width=0.3, id_step=1)
    df["type"] = np.where(np.arange(60) % 4 == 0, 6, 3).astype(np.int16)  # SDSS: 3 galaxy, 6 star
    df.loc[7, "mag_r"] = np.nan  # NaN compares false
    sel = (df["mag_r"] < 16.5) & (df["objID"] % 3 != 0)
    # stamps only for the selected rows: a row scored although unselected would be no_image
    make_stamps(d / "stamps", df.loc[sel, "objID"].tolist(), seed=1)
    write_fits_catalog(d / "cat.fits", df)
    return d, df, sel.to_numpy()


def _args(d, out, select, **kw):
    return ProcessArguments(
        catalog=str(d / "cat.fits"),
        output=str(out),
        images=str(d / "stamps"),
        partition_rows=25,
        chunk_rows=20,
        progress=False,
        views=1,
        command="test",
        report=False,
        select=select,
        engine=str(d / "engine.onnx"),
        **kw,
    )


def test_select_scores_the_subset_and_the_summary_adds_up(field, dask_client, tmp_path):
    d, df, sel = field
    assert 0 < sel.sum() < len(df)
    s = run(_args(d, tmp_path / "out", EXPR), client=dask_client)
    got = read_out(tmp_path / "out")
    assert got["objid"].tolist() == df["objID"].tolist()  # every row, once, in order
    assert (got.loc[~sel, "status"] == "not_selected").all() and got.loc[~sel, "p_merger"].isna().all()
    assert (got.loc[sel, "status"] == "ok").all() and got.loc[sel, "p_merger"].notna().all()
    assert s["not_selected"] == (~sel).sum() and s["scored"] == sel.sum() and s["flagged"] == 0
    assert s["rows"] == s["scored"] + s["flagged"] + s["not_selected"] == len(df)
    assert sum(s["status"].values()) == s["rows"] and s["select"] == EXPR


def test_unknown_column_stops_at_the_start(field, tmp_path):
    d, _, _ = field
    with pytest.raises(CatalogError) as e:
        run(_args(d, tmp_path / "out", "petroMag_r < 17.77 and type == 3"))
    msg = str(e.value)
    assert "petroMag_r" in msg and "not a column" in msg and str(d / "cat.fits") in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing planned or written


def test_syntax_error_is_one_line(field, tmp_path, capsys):
    d, _, _ = field
    with pytest.raises(ArgumentError, match=r"syntax error at character"):
        _args(d, tmp_path / "out", "mag_r < < 17")
    rc = process_catalog(
        [
            str(d / "cat.fits"),
            "--images",
            str(d / "stamps"),
            "-o",
            str(tmp_path / "o"),
            "--select",
            "type == 3 and (mag_r < 17",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("process-catalog: error: --select") and "\n" not in err
    assert "Traceback" not in err


def test_type_error_found_on_the_first_rows(field, tmp_path):
    d, _, _ = field
    with pytest.raises(CatalogError) as e:
        run(_args(d, tmp_path / "out", "mag_r < 'bright'"))
    assert re.search(r"--select .* fails on rows 0\.\.", cli_words(e.value)), cli_words(e.value)
    assert e.value.argument == "select" and "--" not in str(e.value)
    with pytest.raises(CatalogError, match="one true/false per row"):
        run(_args(d, tmp_path / "out2", "mag_r + 1"))


def test_expression_names_and_case_insensitive_columns():
    assert sorted(expression_names("type == 3 and log10(petroMag_r) < 1.25 and not flag")) == [
        "flag",
        "petroMag_r",
        "type",
    ]
    cols = resolve("TYPE == 3 and petromag_r < 17.77", ["type", "petroMag_r", "ra"], "cat.fits")
    assert cols == {"TYPE": "type", "petromag_r": "petroMag_r"}
    import pandas as pd

    df = pd.DataFrame({"type": [3, 6, 3], "petroMag_r": [17.0, 15.0, np.nan]})
    assert evaluate("TYPE == 3 and petromag_r < 17.77", cols, df, "cat.fits").tolist() == [True, False, False]


ATTACKS = [
    "ra.__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "mag_r.to_csv('{tmp}/written')",
    "__import__('os').system('touch {tmp}/touched')",
    "@var",
    "mag_r > 1 and open('{tmp}/opened', 'w')",
    "(lambda: __import__('os').system('touch {tmp}/touched'))()",
    "[x for x in mag_r]",
    "mag_r.__class__.__init__.__globals__",
    "mag_r[0] > 1",
    "f'{{mag_r}}' == 'x'",
    "(w := 1) > 0",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_code_in_select_is_refused_before_anything_runs(attack, field, cheap_cli, tmp_path, capsys, monkeypatch):
    """An expression outside the grammar (attribute access, calls, dunders, '@', lambdas, ...):
    exit 2 with one line naming the offending token, nothing created, OUT not made."""
    d, _, _ = field
    monkeypatch.chdir(tmp_path)  # a relative 'touch f' would land here
    expr = attack.format(tmp=tmp_path)
    rc, out, err = cheap_cli(
        d / "cat.fits", "--images", d / "stamps", "-o", tmp_path / "out", "--select", expr, capsys=capsys
    )
    err = err.strip()
    assert rc == 2 and err.startswith("process-catalog: error: --select") and "\n" not in err, err
    assert "not allowed" in err and "Traceback" not in err + out
    assert list(tmp_path.iterdir()) == []  # no OUT, nothing written, touched or opened for writing


def test_missing_values_never_satisfy_a_comparison(field, cheap_cli, tmp_path, capsys):
    """mag_r is NaN on row 7: neither `mag_r < 99` nor `mag_r != 1` nor `mag_r not in [1]` selects
    it (as documented); `not (mag_r < 99)` does."""
    d, df, _ = field
    for expr, want in (
        ("mag_r < 99", False),
        ("mag_r != 1", False),
        ("mag_r not in [1]", False),
        ("not (mag_r < 99)", True),
    ):
        out = tmp_path / f"o{abs(hash(expr))}"
        rc, _, err = cheap_cli(d / "cat.fits", "--images", d / "stamps", "-o", out, "--select", expr, capsys=capsys)
        assert rc in (0, 3) and "Traceback" not in err, err
        got = read_out(out)
        assert (got.loc[7, "status"] != "not_selected") == want, expr
        assert len(got) == len(df)
