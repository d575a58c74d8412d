"""--domain through process-catalog on the session's Dask scheduler: a catalog with SDSS columns
gets the engine card's catalog rules automatically (stars, too faint, too far: out_of_domain, not
fetched, counted with their rule); one without them is only scored; --domain off scores
everything; user column mappings and limits; a changed --domain never reuses OUT silently."""

from __future__ import annotations

import json
import shutil

import fitsio
import numpy as np
import pandas as pd
import pytest

from conftest import (
    assert_fits_equals_parquet,
    cli_words,
    make_stamps,
    read_out,
    run_cli,
    two_patch_catalog,
    write_fits_catalog,
)
from mergerscan.engines.engine_file import read_card, write_metadata
from mergerscan.pipeline.domain import CatalogRules, DomainRule, DomainSettings, looks_like_sdss_class

SELECTION = {
    "object_class": "galaxy",
    "mag_band": "r",
    "mag_kind": "petro",
    "mag_max": 17.77,
    "redshift_min": 0.005,
    "redshift_max": 0.1,
}
N = 48


@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    """A catalog with SDSS columns, the expected rule per row, stamps for in-domain rows only
    (``stamps``: a row fetched although out of the domain would be no_image) and for all
    (``stamps_all``), and the cheap engine with a training selection in its card."""
    d = tmp_path_factory.mktemp("domain")
    write_metadata(cheap_engine, d / "engine.onnx", card_updates={"domain": {"selection": SELECTION}})
    df = two_patch_catalog(N, seed=5, width=0.3, id_step=1).drop(columns="mag_r")
    k = np.arange(N)
    df["type"] = np.where(k % 6 == 0, 6, 3).astype(np.int16)  # SDSS: 3 galaxy, 6 star
    df["petroMag_r"] = np.where(k % 5 == 1, 18.4, 16.0 + (k % 7) * 0.2).astype(np.float32)
    df.loc[3, "petroMag_r"] = np.nan  # missing: decides nothing
    df["z"] = np.where(k % 8 == 3, 0.25, 0.05)
    df.loc[5, "z"] = -9999.0  # an SDSS sentinel: decides nothing
    rule = np.full(N, "", dtype=object)  # the first rule each row fails, in the order class, mag, z
    rule[(rule == "") & (df["type"] == 6).to_numpy()] = "type: not a galaxy"
    rule[(rule == "") & (df["petroMag_r"] > 17.77).to_numpy()] = "petroMag_r > 17.77"
    rule[(rule == "") & ((df["z"] > 0.1) | (df["z"].between(-1, 0.005, inclusive="neither"))).to_numpy()] = (
        "z < 0.005 or z > 0.1"
    )
    inside = rule == ""
    assert 0 < inside.sum() < N and len(set(rule[~inside])) == 3
    make_stamps(d / "stamps", df.loc[inside, "objID"].tolist(), seed=2)
    shutil.copytree(d / "stamps", d / "stamps_all")
    make_stamps(d / "stamps_all", df.loc[~inside, "objID"].tolist(), seed=3)
    write_fits_catalog(d / "sdss.fits", df)
    write_fits_catalog(d / "plain.fits", df.drop(columns=["type", "petroMag_r", "z"]))
    renamed = df.rename(columns={"type": "cls", "petroMag_r": "rmag_petro", "z": "zspec"})
    write_fits_catalog(d / "renamed.fits", renamed)
    return d, df, rule


def _run(client, d, catalog, out, *extra, stamps="stamps", capsys=None):
    return run_cli(
        client, d / catalog, "--images", d / stamps, "-o", out, "--partition-rows", "20", *extra,
        capsys=capsys, engine=d / "engine.onnx",
    )  # fmt: skip


def _check_domain_run(out, df, rule):
    got = read_out(out)
    assert got["objid"].tolist() == df["objID"].tolist()  # every row once, in order
    outside = rule != ""
    assert (got.loc[outside, "status"] == "out_of_domain").all()
    assert got.loc[outside, "p_merger"].isna().all() and not got.loc[outside, "in_domain"].any()
    assert not got.loc[outside, "is_merger"].any() and got.loc[outside, "domain_score"].isna().all()
    assert (got.loc[~outside, "status"] == "ok").all()  # fetched: no_image here would mean a wasted fetch
    assert got.loc[~outside, "in_domain"].all() and got.loc[~outside, "p_merger"].notna().all()
    s = json.loads((out / "summary.json").read_text())
    assert s["out_of_domain"] == outside.sum() and s["scored"] == (~outside).sum()
    assert s["rows"] == s["scored"] + s["flagged"] + s["out_of_domain"] == len(df) and s["flagged"] == 0
    assert s["domain_rules"] == pd.Series(rule[outside]).value_counts().to_dict()
    assert s["domain"]["mode"] == "on" and len(s["domain"]["catalog_rules"]) == 3
    assert "out_of_domain" in [f["status"] for f in s["failures"]]
    assert assert_fits_equals_parquet(out)[2]["DOMAIN"] == "on"
    return s


def test_sdss_columns_get_the_catalog_rules(field, dask_client, tmp_path, capsys):
    d, df, rule = field
    rc, out, err = _run(dask_client, d, "sdss.fits", tmp_path / "out", capsys=capsys)
    assert rc == 0, err
    s = _check_domain_run(tmp_path / "out", df, rule)
    assert "out of domain     " + str(s["out_of_domain"]) + " not scored" in out
    assert "petroMag_r > 17.77" in out
    ex = next(f["example"] for f in s["failures"] if f["status"] == "out_of_domain")
    assert "id " in ex and any(r in ex for r in set(rule) - {""})


def test_a_catalog_without_them_is_scored_whole(field, dask_client, tmp_path):
    d, _, _ = field
    rc, _, err = _run(dask_client, d, "plain.fits", tmp_path / "out", stamps="stamps_all")
    assert rc == 0, err
    got = read_out(tmp_path / "out")
    assert (got["status"] == "ok").all() and got["in_domain"].all()
    assert got["domain_score"].isna().all()  # the cheap engine has no image check
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["out_of_domain"] == 0 and s["domain"]["catalog_rules"] == [] and s["domain"]["image_threshold"] is None
    # is_merger is p_merger >= threshold where nothing puts a row outside the domain
    assert (got["is_merger"] == (got["p_merger"] >= s["threshold"])).all()


def test_domain_off_scores_everything_and_says_so(field, dask_client, tmp_path, capsys):
    d, df, _ = field
    rc, out, err = _run(
        dask_client, d, "sdss.fits", tmp_path / "out", "--domain", "off", stamps="stamps_all", capsys=capsys
    )
    assert rc == 0, err
    got = read_out(tmp_path / "out")
    assert (got["status"] == "ok").all() and got["in_domain"].all()
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["domain"]["mode"] == "off" and s["out_of_domain"] == 0 and s["scored"] == len(df)
    assert "domain            off" in out
    assert fitsio.read_header(str(tmp_path / "out" / "mergers.fits"), ext="MERGERS")["DOMAIN"] == "off"


def test_user_column_mapping(field, dask_client, tmp_path, capsys):
    d, df, rule = field
    maps = ["--domain-column", "class=CLS", "--domain-column", "mag=rmag_petro", "--domain-column", "z=zspec"]
    rc, _, err = _run(dask_client, d, "renamed.fits", tmp_path / "out", *maps, capsys=capsys)
    assert rc == 0, err
    renamed = {"type: not a galaxy": "cls: not a galaxy", "petroMag_r > 17.77": "rmag_petro > 17.77"}
    want = np.array([renamed.get(r, r.replace("z ", "zspec ")) for r in rule], dtype=object)
    want[rule == ""] = ""
    _check_domain_run(tmp_path / "out", df, want)
    rc, _, err = _run(dask_client, d, "renamed.fits", tmp_path / "o2", "--domain-column", "mag=nosuch", capsys=capsys)
    assert rc == 2 and "--domain-column mag=nosuch" in err and "\n" not in err.strip()


def test_a_widened_limit_and_a_changed_domain_are_a_different_run(field, dask_client, tmp_path, capsys):
    d, df, _ = field
    out = tmp_path / "out"
    args = ["--domain-limit", "mag_max=18.5", "--domain-column", "z=none"]
    rc, _, err = _run(dask_client, d, "sdss.fits", out, *args, stamps="stamps_all", capsys=capsys)
    assert rc == 0, err
    got = read_out(out)
    star = (df["type"] == 6).to_numpy()
    assert (got.loc[star, "status"] == "out_of_domain").all() and (got.loc[~star, "status"] == "ok").all()
    s = json.loads((out / "summary.json").read_text())
    assert s["domain"]["limits"] == {"mag_max": 18.5} and s["domain"]["catalog_rules"] == [
        "type: not a galaxy",
        "petroMag_r > 18.5",
    ]
    rc, _, err = _run(dask_client, d, "sdss.fits", out, stamps="stamps_all", capsys=capsys)
    assert rc == 2 and "different domain" in err and "--overwrite" in err  # OUT is not reused silently


def test_a_type_column_of_something_else_is_not_used(field, dask_client, tmp_path, capsys):
    d, df, _ = field
    other = df.drop(columns=["petroMag_r", "z"]).assign(type=np.where(np.arange(N) % 2, "Sb", "E0"))
    write_fits_catalog(tmp_path / "morph.fits", other)
    rc, _, err = run_cli(
        dask_client, tmp_path / "morph.fits", "--images", d / "stamps_all", "-o", tmp_path / "out",
        capsys=capsys, engine=d / "engine.onnx",
    )  # fmt: skip
    assert rc == 0, err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["out_of_domain"] == 0 and any("does not hold SDSS types" in w for w in s["warnings"])


def test_rules_on_values():
    """Missing values and sentinels decide nothing; names and codes both work."""
    rules = CatalogRules(
        (DomainRule("class", "type"), DomainRule("mag", "petroMag_r", None, 17.77), DomainRule("z", "z", 0.005, 0.1))
    )
    df = pd.DataFrame(
        {
            "type": [3, 6, "STAR", "galaxy", None, 0, 3, 3, 3, 3],
            "petroMag_r": [17.0, 15.0, 15.0, 15.0, 15.0, 15.0, 17.78, np.nan, -9999.0, 15.0],
            "z": [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.2],
        }
    )
    assert rules.evaluate(df).tolist() == [0, 1, 1, 0, 0, 0, 2, 0, 0, 3]
    dereddened = CatalogRules((DomainRule("mag", "petroMag_r", None, 17.77, minus="extinction_r"),))
    mags = pd.DataFrame({"petroMag_r": [17.85, 17.85, 17.85], "extinction_r": [0.1, np.nan, -9999.0]})
    assert dereddened.evaluate(mags).tolist() == [0, 1, 1]  # a missing extinction: the magnitude as given
    assert dereddened.rules[0].reason() == "petroMag_r - extinction_r > 17.77"
    assert looks_like_sdss_class(pd.Series([3, 6, 3])) and not looks_like_sdss_class(pd.Series(["Sb", "E0"]))
    from mergerscan.engines.domain import DomainSelection, EngineDomain
    from mergerscan.pipeline.domain import resolve_rules

    both = resolve_rules(
        DomainSettings(),
        EngineDomain(DomainSelection(redshift_max=0.1)),
        ["zz", "REDSHIFT", "Redshift"],
        None,
        "c",
    )
    assert both.rules == () and "--domain-column z=" in both.notes[0]  # two spellings: never a guess
    assert CatalogRules((DomainRule("class", "type"),)).evaluate(
        pd.DataFrame({"type": [3.0, 6.0, 3.5, np.nan]})
    ).tolist() == [0, 1, 0, 0]
    unused = resolve_rules(
        DomainSettings("image", (("mag", "rmag"),)), EngineDomain(DomainSelection(mag_max=17.77)), ["rmag"], None, "c"
    )
    assert unused.rules == () and unused.notes == ("--domain-column mag=rmag not used: --domain image",)
    with pytest.raises(ValueError) as e:
        DomainSettings("sometimes")
    assert "--domain" in cli_words(e.value) and e.value.argument == "domain" and "--" not in str(e.value)


# a plan.json as mergerscan 1.x (main, before the plan held its rules typed) wrote it: Plan.to_json,
# json.dumps(asdict(plan), indent=1), with the rules as CatalogRules.to_dict()
MAIN_PLAN = {
    "catalog": "/d/cat.fits",
    "source_catalog": "/d/cat.fits",
    "nrows": 5,
    "columns": {"id": "objid", "ra": "ra", "dec": "dec"},
    "keep": ["petroMag_r"],
    "id_kind": "int",
    "chunks": [[0, 5]],
    "hist_order": 7,
    "partitions": [{"pid": 0, "order": 3, "pixel": 17, "sub": 0, "nsub": 1, "rows": 5}],
    "split": {"format": "x", "buckets": [[0, 5, 0, 1]]},
    "select": None,
    "select_columns": {},
    "domain": {
        "rules": [
            {"key": "mag", "column": "petroMag_r", "low": None, "high": 17.77, "minus": "extinction_r"},
            {"key": "class", "column": "type", "low": None, "high": None, "minus": None},
        ],
        "notes": ["columns a, b all match 'z': none used"],
    },
    "hats": None,
    "names": {"petroMag_r": "petroMag_r"},
}


def test_the_plan_holds_its_catalog_rules_typed_and_plan_json_is_unchanged():
    """The plan keeps the typed CatalogRules; plan.json holds them as before, byte for byte: a
    plan.json written by main loads and is written back with the same text; one without rules
    (``"domain": {}``) loads with none."""
    from mergerscan.pipeline.plan import Plan

    text = json.dumps(MAIN_PLAN, indent=1)
    plan = Plan.from_json(text)
    assert isinstance(plan.domain, CatalogRules) and plan.domain == CatalogRules(
        (DomainRule("mag", "petroMag_r", None, 17.77, "extinction_r"), DomainRule("class", "type")),
        ("columns a, b all match 'z': none used",),
    )
    assert plan.domain.columns == ["petroMag_r", "extinction_r", "type"]
    assert plan.to_json() == text
    bare = Plan.from_json(json.dumps({**MAIN_PLAN, "domain": {}}, indent=1))
    assert bare.domain == CatalogRules() and bare.domain.columns == []


def test_packaged_engine_card_records_its_training_selection():
    from mergerscan.engines import default_engine_path

    sel = (read_card(default_engine_path()).get("domain") or {}).get("selection")
    if sel is None:
        pytest.skip("the packaged engine's card has no domain selection yet")
    assert sel["object_class"] == "galaxy" and sel["mag_max"] == 17.77 and sel["mag_band"] == "r"
    assert sel["redshift_min"] <= 0.0052 and sel["redshift_max"] >= 0.0999


def test_hats_input_gets_the_rules_per_pixel(field, dask_client, tmp_path):
    pytest.importorskip("hats_import", reason="needs hats-import (pip install -e '.[dev]')")
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    from mergerscan.pipeline.arguments import ProcessArguments
    from mergerscan.pipeline.run import run

    d, df, rule = field
    df.to_csv(tmp_path / "in.csv", index=False)
    imp = ImportArguments(
        output_artifact_name="in",
        input_file_list=[str(tmp_path / "in.csv")],
        file_reader="csv",
        ra_column="RAdeg",
        dec_column="DEdeg",
        output_path=str(tmp_path),
        pixel_threshold=15,
        highest_healpix_order=8,
        progress_bar=False,
        tmp_dir=str(tmp_path / "tmp"),
        resume=False,
    )
    pipeline_with_client(imp, dask_client)
    args = dict(output=str(tmp_path / "out"), images=str(d / "stamps"), partition_rows=20, progress=False)
    s = run(
        ProcessArguments(
            catalog=str(tmp_path / "in"), **args, views=1, command="t", report=False, engine=str(d / "engine.onnx")
        ),
        client=dask_client,
    )
    got = read_out(tmp_path / "out").set_index("objid").loc[df["objID"]]
    assert (got["status"].to_numpy() == np.where(rule == "", "ok", "out_of_domain")).all()
    assert s["domain_rules"] == pd.Series(rule[rule != ""]).value_counts().to_dict()


def test_a_backend_without_domain_score_is_warned_about(field, dask_client, cheap_engine, tmp_path):
    """The card has an image check but the engine gives no domain_score: the rows count as in the
    domain and the summary says so (never a silent check that did not happen)."""
    d, df, _ = field
    engine = tmp_path / "e.onnx"
    write_metadata(cheap_engine, engine, card_updates={"domain": {"image": {"score": "x", "threshold": 1.0}}})
    rc, _, err = run_cli(
        dask_client, d / "plain.fits", "--images", d / "stamps_all", "-o", tmp_path / "out", engine=engine
    )
    assert rc == 0, err
    got = read_out(tmp_path / "out")
    assert got["in_domain"].all() and got["domain_score"].isna().all()
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["domain"]["image_threshold"] == 1.0
    assert any(f"{len(df)} scored row(s) got no domain_score" in w for w in s["warnings"])
