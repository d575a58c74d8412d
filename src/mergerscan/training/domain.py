"""The training set's selection as data: the engine card's ``domain.selection``.

The labelled set's galaxies are Galaxy Zoo 1 objects (Lintott et al. 2008, MNRAS 389, 1179;
2011, MNRAS 410, 166; the mergers of Darg et al. 2010, MNRAS 401, 1043 are GZ1 objects too).
GZ1 classified the SDSS DR7 Main Galaxy Sample (Strauss et al. 2002, AJ 124, 1810): objects
photometrically classified as galaxies with Petrosian r <= 17.77 after correction for Galactic
extinction.  That is the base selection; the training catalog's own columns narrow it where it
has them: its redshift range (and magnitude / size ranges if it carries them), rounded outward so
that every training galaxy is inside.

``python -m mergerscan.training.domain ENGINE --catalog CATALOG`` writes it into an engine's
card (metadata only, through :func:`engine_file.write_metadata`: the weights, and so the scores,
do not change; an image-level ``domain.image`` already there is kept).  Training records it too.
With ``--saturation`` it also sets the image check's ``max_saturated_core``
(:func:`saturation_limit`: from the VALIDATION split's stamps).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..catalogs.columns import find_column
from ..engines.domain import DomainSelection
from ..engines.engine_file import read_engine_card, write_metadata

GZ1_MAIN_SAMPLE = DomainSelection(
    object_class="galaxy",
    mag_band="r",
    mag_kind="petro",
    mag_max=17.77,
    mag_dereddened=True,
    description="SDSS DR7 Main Galaxy Sample as classified by Galaxy Zoo 1: galaxies (SDSS type 3) with "
    "extinction-corrected Petrosian r <= 17.77",
    reference="Strauss et al. 2002, AJ 124, 1810 (main sample limit); Lintott et al. 2008, MNRAS 389, 1179 and "
    "2011, MNRAS 410, 166 (Galaxy Zoo 1)",
)
# training-catalog columns that narrow the selection: (field prefix, candidate names, decimals, valid range)
RANGES = (
    ("redshift", ("redshift", "z"), 3, (-1.0, 20.0)),
    ("mag", ("petroMag_r",), 2, (0.0, 40.0)),
    ("size_arcsec", ("petroR90_r",), 1, (0.0, 3600.0)),
)


def _outward(values: np.ndarray, decimals: int) -> tuple[float, float]:
    k = 10**decimals
    return math.floor(values.min() * k) / k, math.ceil(values.max() * k) / k


def training_selection(catalog: str | Path, base: DomainSelection = GZ1_MAIN_SAMPLE) -> DomainSelection:
    """``base`` narrowed by the ranges of the training catalog's own columns (missing values and
    sentinels such as -9999 left out).  A column the catalog lacks leaves ``base``'s limit."""
    import pandas as pd

    from ..catalogs.read import read_table

    df = read_table(catalog)
    if not len(df):  # a header alone: no training selection to record
        raise ValueError(f"{catalog}: the catalog has no rows")
    changes: dict = {}
    used = []
    for field, names, decimals, (lo, hi) in RANGES:
        col = next((c for c in (find_column(df.columns, n) for n in names) if c), None)
        if col is None:
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        v = v[np.isfinite(v) & (v > lo) & (v < hi)]
        if len(v) == 0:
            continue
        low, high = _outward(v, decimals)
        limit_max = getattr(base, f"{field}_max")
        changes[f"{field}_min"] = low
        changes[f"{field}_max"] = high if limit_max is None else min(high, limit_max)
        used.append(f"{col} {low:g}..{high:g} ({len(v)} objects)")
    note = f"; training catalog {Path(catalog).name}: " + ", ".join(used) if used else ""
    return replace(base, **changes, reference=base.reference + note)


def record_selection(engine: str | Path, catalog: str | Path, out: str | Path | None = None) -> dict:
    """Write the training selection into ``engine``'s card (``out``: a copy; default in place).
    Idempotent; only ``card["domain"]["selection"]`` changes.  Returns the selection written."""
    selection = training_selection(catalog)
    domain = replace(read_engine_card(engine).engine_domain, selection=selection)
    write_metadata(engine, out, card_updates={"domain": domain.to_dict()})
    return selection.to_dict()


def saturation_limit(catalog: str | Path, split_seed: int = 0, quantile: float = 0.999, cache=None) -> int:
    """The saturated-core limit (:func:`mergerscan.engines.domain.saturated_core`): the largest of
    the classes' ``quantile`` on the validation split (training.data's split), rounded up, so that
    at least that share of each class's validation galaxies pass."""
    from ..engines.domain import saturated_core
    from .data import build_labelled_set

    ls = build_labelled_set(catalog, seed=split_seed, cache=cache)
    val = (ls.table["split"] == "val").to_numpy()
    sat, labels = saturated_core(ls.stamps[val]), ls.table["label"].to_numpy()[val]
    return math.ceil(max(np.quantile(sat[labels == c], quantile) for c in np.unique(labels)))


def record_saturation_limit(engine: str | Path, limit: int, out: str | Path | None = None) -> dict:
    """Set ``card["domain"]["image"]["max_saturated_core"]`` (the image check must exist)."""
    domain = read_engine_card(engine).engine_domain
    if domain.image is None:
        raise ValueError(f"{engine}: the card has no image check (domain.image) to add a saturation limit to")
    image = replace(domain.image, max_saturated_core=int(limit))
    write_metadata(engine, out, card_updates={"domain": replace(domain, image=image).to_dict()})
    return image.to_dict()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
    from ..verb_flags import check_output, os_error_text

    p = argparse.ArgumentParser(prog="python -m mergerscan.training.domain", description=record_selection.__doc__)
    p.add_argument("engine", help="engine file (.onnx) whose card gets domain.selection")
    p.add_argument("--catalog", required=True, help="the labelled catalog it was trained on (e.g. catalog.csv)")
    p.add_argument("-o", "--output", dest="out", help="write a copy here instead of changing ENGINE in place")
    p.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # earlier spelling
    p.add_argument("--saturation", action="store_true", help="also fit the image check's saturated-core limit")
    p.add_argument("--cache", help="decoded-image cache directory (with --saturation)")
    a = p.parse_args(argv)
    for what, path in (("ENGINE", a.engine), ("--catalog", a.catalog)):
        if not Path(path).is_file():
            p.error(f"{what} {path}: no such file")
    check_output(p, a, a.out, {"--catalog file": a.catalog})
    try:
        print(json.dumps(record_selection(a.engine, a.catalog, a.out), indent=1))
        if a.saturation:
            limit = saturation_limit(a.catalog, cache=a.cache)
            print(json.dumps(record_saturation_limit(a.out or a.engine, limit), indent=1))
    except ValueError as exc:  # not a labelled catalog, not an engine, an unreadable stamp
        p.exit(EXIT_BAD_INPUT, f"{p.prog}: error: {exc}\n")
    except OSError as exc:  # a write that failed after the checks
        p.exit(EXIT_FAILED, f"{p.prog}: error: {os_error_text(exc)}\n")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
