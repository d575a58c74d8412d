"""``--domain``: rows outside what the engine was trained on are not scored as if they were.

Two halves (the engine card's ``domain``, :mod:`mergerscan.engines.domain`):

* **catalog rules** -- when the input catalog carries the columns that decide it (SDSS ``type`` /
  ``class`` / ``probPSF``, ``petroMag_r`` / ``modelMag_r`` / ``cModelMag_r`` / ``r``, ``z`` /
  ``redshift``, ``petroR90_r``; case-insensitive, or mapped with ``--domain-column KEY=COLUMN``),
  each row is tested against the card's selection where its magnitude, redshift... are read.  A
  row that fails a rule gets status ``out_of_domain``: not fetched, not scored (the rules are
  evaluated where ``--select`` is, at split time or per HATS pixel).  A missing value (NaN, null,
  an SDSS sentinel such as -9999) cannot decide: that rule does not reject the row.
* **image check** -- the engine's per-row ``domain_score`` against the card's threshold: scored
  rows beyond it keep their ``p_merger`` but are not ``in_domain``, so never ``is_merger``.

The limits are the training set's, with no tolerance (the domain *is* what was trained on);
``--domain-limit mag_max=18.0`` widens one on purpose and is recorded in the summary and the
run's fingerprint.  ``--domain off`` applies neither half; ``catalog`` / ``image`` only one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from ..argument_error import ArgumentError, literal
from ..catalogs.columns import AmbiguousColumn, find_column
from ..catalogs.read import CatalogError
from ..engines.domain import DomainSelection, EngineDomain

MODES = ("on", "off", "catalog", "image")
COLUMN_KEYS = ("class", "psf", "mag", "extinction", "z", "size")  # --domain-column KEY=COLUMN
LIMIT_KEYS = (  # --domain-limit KEY=VALUE|none
    "mag_min",
    "mag_max",
    "redshift_min",
    "redshift_max",
    "size_arcsec_min",
    "size_arcsec_max",
    "image_threshold",
)
# SDSS photometric ``type`` codes and names: 3 GALAXY; these others are not galaxies (0 UNKNOWN,
# 5 KNOWNOBJ and 9 NOTATYPE cannot decide); spectroscopic ``class``: GALAXY / STAR / QSO
NOT_GALAXY = {1: "COSMIC_RAY", 2: "DEFECT", 4: "GHOST", 6: "STAR", 7: "TRAIL", 8: "SKY"}
UNDECIDED = {0: "UNKNOWN", 5: "KNOWNOBJ", 9: "NOTATYPE"}
CLASS_NAMES = {"GALAXY", "QSO", *NOT_GALAXY.values(), *UNDECIDED.values()}
# decidable values (outside: a missing-value sentinel such as SDSS -9999, or nonsense)
VALID = {"mag": (0.0, 40.0), "z": (-1.0, 20.0), "size": (0.0, 3600.0), "psf": (0.0, 1.0)}


class DomainError(ArgumentError):
    """A --domain option that cannot be used; one line (a template naming its argument)."""


def candidates(key: str, sel: DomainSelection) -> list[str]:
    """Column names that decide ``key`` automatically, best first."""
    band = sel.mag_band or "r"
    kind = sel.mag_kind or "petro"
    return {
        "class": ["type", "class"],
        "psf": ["probPSF"],
        "mag": list(
            dict.fromkeys([f"{kind}Mag_{band}", f"petroMag_{band}", f"modelMag_{band}", f"cModelMag_{band}", band])
        ),
        "extinction": [f"extinction_{band}"],
        "z": ["z", "redshift"],
        "size": [f"petroR90_{band}"],
    }[key]


@dataclass(frozen=True)
class DomainRule:
    """One test on one catalog column: ``key`` (class, psf, mag, z, size), the column in the
    file's spelling, and the range it must fall in (None: open)."""

    key: str
    column: str
    low: float | None = None
    high: float | None = None
    minus: str | None = None  # mag: the extinction column subtracted first (a dereddened limit)

    @property
    def columns(self) -> list[str]:
        return [self.column, *([self.minus] if self.minus else [])]

    def fails(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(fails, decidable) per row of ``df``."""
        values = df[self.column]
        if self.key == "class" and pd.api.types.is_numeric_dtype(values.dtype):  # SDSS codes, vectorised
            v = _numbers(values)
            return np.isin(v, list(NOT_GALAXY)), np.isin(v, [3, *NOT_GALAXY])
        if self.key == "class":
            text = values.astype(object).map(_class_name)
            return text.isin(set(NOT_GALAXY.values()) | {"QSO"}).to_numpy(bool), text.notna().to_numpy(bool)
        v = _numbers(values)
        lo, hi = VALID[self.key]
        ok = np.isfinite(v) & (v >= lo) & (v <= hi)
        if self.minus:  # a missing or nonsense extinction: the magnitude as given
            a = _numbers(df[self.minus])
            v = np.where(np.isfinite(a) & (a >= 0) & (a < 10), v - a, v)
        if self.key == "psf":
            return ok & (v >= 0.5), ok
        bad = np.zeros(len(v), bool)
        if self.low is not None:
            bad |= v < self.low
        if self.high is not None:
            bad |= v > self.high
        return ok & bad, ok

    def reason(self) -> str:
        """The rule as the summary names it, e.g. ``petroMag_r > 17.77``."""
        if self.key == "class":
            return f"{self.column}: not a galaxy"
        if self.key == "psf":
            return f"{self.column} >= 0.5: point source"
        name = f"{self.column} - {self.minus}" if self.minus else self.column
        parts = [f"{name} < {self.low:g}"] if self.low is not None else []
        parts += [f"{name} > {self.high:g}"] if self.high is not None else []
        return " or ".join(parts)


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _class_name(v) -> str | None:
    """An SDSS type code or class name -> its upper-case name; None where it cannot decide."""
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, str):
        name = v.strip().upper()
        return name if name in CLASS_NAMES - set(UNDECIDED.values()) else None
    try:
        code = int(v)
    except (TypeError, ValueError):
        return None
    return "GALAXY" if code == 3 and code == v else NOT_GALAXY.get(code) if code == v else None


def looks_like_sdss_class(values: pd.Series) -> bool:
    """Whether a sample of an automatically found ``type``/``class`` column holds SDSS codes or
    names only (a column of morphological types 'Sb', 'E0' must not reject every row)."""
    v = values.dropna()
    if v.empty:
        return True
    if pd.api.types.is_numeric_dtype(v):
        f = v.to_numpy(np.float64)
        return bool(np.all((f == np.round(f)) & (f >= 0) & (f <= 9)))
    names = v.astype(object).map(lambda x: x.decode("ascii", "replace") if isinstance(x, bytes) else str(x))
    return bool(names.str.strip().str.upper().isin(CLASS_NAMES).all())


@dataclass(frozen=True)
class DomainSettings:
    """The run's domain options: mode, column mapping (``None``: ignore that key), limit overrides."""

    mode: str = "on"
    columns: tuple = ()  # ((key, column or None), ...)
    limits: tuple = ()  # ((key, value or None), ...)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DomainError(f"{{domain}} {literal(self.mode)}: choose {', '.join(MODES)}", "domain")
        for k, _ in self.columns:
            if k not in COLUMN_KEYS:
                raise DomainError(
                    f"{{domain_columns}} {literal(k)}=...: KEY is one of {', '.join(COLUMN_KEYS)}", "domain_columns"
                )
        for k, _ in self.limits:
            if k not in LIMIT_KEYS:
                raise DomainError(
                    f"{{domain_limits}} {literal(k)}=...: KEY is one of {', '.join(LIMIT_KEYS)}", "domain_limits"
                )

    @property
    def catalog(self) -> bool:
        return self.mode in ("on", "catalog")

    @property
    def image(self) -> bool:
        return self.mode in ("on", "image")

    def selection(self, domain: EngineDomain) -> DomainSelection | None:
        """The engine's selection with ``--domain-limit`` applied (None: no catalog half)."""
        sel = domain.selection
        lim = {k: v for k, v in self.limits if k != "image_threshold"}
        if sel is None and not lim:
            return None
        return replace(sel or DomainSelection(object_class=None), **lim)

    def image_threshold(self, domain: EngineDomain) -> float | None:
        """The image check's threshold (None: not applied)."""
        if not self.image:
            return None
        lim = dict(self.limits)
        if "image_threshold" in lim:
            return lim["image_threshold"]
        return domain.image.threshold if domain.image is not None else None

    def max_saturated_core(self, domain: EngineDomain) -> int | None:
        """The image check's limit on saturated core pixels (None: not applied)."""
        if not self.image or domain.image is None:
            return None
        return domain.image.max_saturated_core

    def fingerprint(self) -> dict:
        return {"mode": self.mode, "columns": dict(self.columns), "limits": dict(self.limits)}


def parse_pairs(items: list[str], flag: str, number: bool) -> tuple:
    """``KEY=VALUE`` items -> ((key, value), ...); VALUE 'none' -> None; one-line errors."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise DomainError(f"{flag} {item!r}: expected KEY=VALUE")
        v: float | str | None = None if value.strip().lower() == "none" else value.strip()
        if number and v is not None:
            try:
                v = float(v)
            except ValueError:
                raise DomainError(f"{flag} {item!r}: VALUE must be a number or 'none'") from None
        out[key.strip().lower()] = v
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class CatalogRules:
    """The rules a run applies to catalog rows, resolved against the catalog's columns (stored in
    the plan); ``notes``: columns found but not used, and why."""

    rules: tuple[DomainRule, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for r in self.rules for c in r.columns))

    def to_dict(self) -> dict:
        return {"rules": [asdict(r) for r in self.rules], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict | None) -> CatalogRules:
        d = d or {}
        return cls(tuple(DomainRule(**r) for r in d.get("rules", [])), tuple(d.get("notes", [])))

    def evaluate(self, df: pd.DataFrame) -> np.ndarray:
        """int8 per row: 0 in the domain (or undecidable), k = 1 + the index of the first rule it fails."""
        code = np.zeros(len(df), np.int8)
        for k, rule in enumerate(self.rules):
            bad, _ = rule.fails(df)
            code[(code == 0) & bad] = k + 1
        return code

    def reason(self, code: int) -> str:
        return self.rules[code - 1].reason()


def _rule_for(key: str, column: str, sel: DomainSelection, extinction: str | None) -> DomainRule | None:
    lo, hi = {
        "class": (None, None),
        "psf": (None, None),
        "mag": (sel.mag_min, sel.mag_max),
        "z": (sel.redshift_min, sel.redshift_max),
        "size": (sel.size_arcsec_min, sel.size_arcsec_max),
    }[key]
    if key in ("class", "psf"):
        return DomainRule(key, column) if sel.object_class == "galaxy" else None
    minus = extinction if key == "mag" and sel.mag_dereddened else None
    return DomainRule(key, column, lo, hi, minus) if lo is not None or hi is not None else None


def _find(key: str, mapped: dict, sel: DomainSelection, available: list[str], sample, path: str, notes: list):
    """The column deciding ``key``: the user's mapping, else the first candidate name present."""
    if key in mapped:
        if mapped[key] is None:  # --domain-column KEY=none
            return None
        col = find_column(available, mapped[key])
        if col is None:
            raise CatalogError(
                f"{literal(path)}: {{domain_columns}} {literal(key)}={literal(mapped[key])}: not a column",
                "domain_columns",
            )
        return col
    col = None
    for name in candidates(key, sel):
        try:
            col = find_column(available, name)
        except AmbiguousColumn as exc:  # found by name only: never guess between two spellings
            notes.append(
                f"columns {', '.join(exc.matches)} all match {name!r}: none used; name one with --domain-column {key}=..."
            )
            return None
        if col is not None:
            break
    if col is not None and key == "class" and not looks_like_sdss_class(sample([col])[col]):
        notes.append(
            f"column {col!r} does not hold SDSS types (3 galaxy, 6 star): not used as the object class; "
            f"map it with --domain-column class={col} if it does"
        )
        return None
    return col


def resolve_rules(
    settings: DomainSettings, domain: EngineDomain, available: list[str], sample, path: str
) -> CatalogRules:
    """The catalog rules for this catalog: each key's column (mapped, else found by name), kept
    when the engine's selection constrains it.  ``sample(columns)`` gives the first rows (a type
    column of something else than SDSS classes is not used automatically: a note says so)."""
    sel = settings.selection(domain)
    if not settings.catalog or sel is None:
        why = "--domain " + settings.mode if not settings.catalog else "the engine card records no training selection"
        given = [f"{k}={v}" for k, v in settings.columns if v is not None]
        return CatalogRules(notes=(f"--domain-column {', '.join(given)} not used: {why}",) if given else ())
    mapped = dict(settings.columns)
    notes: list[str] = []
    found = {k: _find(k, mapped, sel, available, sample, path, notes) for k in COLUMN_KEYS}
    if found["class"]:
        found["psf"] = None  # the class column decides; probPSF only where there is none
    rules = [
        r
        for k in ("class", "psf", "mag", "z", "size")
        if found[k] and (r := _rule_for(k, found[k], sel, found["extinction"])) is not None
    ]
    return CatalogRules(tuple(rules), tuple(notes))


def mark_domain(rules: CatalogRules, df: pd.DataFrame) -> pd.DataFrame:
    """Add the ``_domain`` column (:meth:`CatalogRules.evaluate`) to one chunk's rows (no-op
    without rules)."""
    return df.assign(_domain=rules.evaluate(df)) if rules.rules else df


def rule_counts(rules: CatalogRules, codes: np.ndarray) -> dict[str, int]:
    """{reason: rows} for the rule codes of out_of_domain rows."""
    ks, ns = np.unique(codes[codes > 0], return_counts=True)
    return {rules.reason(int(k)): int(n) for k, n in zip(ks, ns)}
