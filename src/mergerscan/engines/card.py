"""The engine card: what an engine file says about itself, as one typed, frozen object.

The card travels with the weights (JSON under ``mergerscan.card`` in the ONNX metadata, read and
written by :mod:`.engine_file`); :class:`EngineCard` is how the package reads it.  Its blocks:

* calibration: ``threshold``/``temperature`` (at the default ``views``) and ``by_views``, one
  :class:`ViewCalibration` per calibrated view count (fitted on validation);
* ``model``: the architecture's configuration (:class:`ModelConfig`, for
  :func:`mergerscan.models.create_model`); ``precision`` of a converted file (int8, fp16);
* ``training``: the provenance a training run records (:class:`TrainingProvenance`; flat keys
  of the card's JSON);
* ``metrics_test`` (:class:`Metrics`), ``val_curve`` (:class:`ValCurve`), ``domain``
  (:class:`~.domain.EngineDomain`), ``representation`` (:class:`RepresentationCard`).

``EngineCard.from_dict(d).to_dict() == d`` for every card (unknown keys kept in ``extra``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .blocks import Block, by_count
from .domain import EngineDomain

__all__ = [
    "CurveCounts",
    "EngineCard",
    "Metrics",
    "ModelConfig",
    "RepresentationCard",
    "TrainingProvenance",
    "ValCurve",
    "ViewCalibration",
]


@dataclass(frozen=True)
class ModelConfig(Block):
    """``card["model"]``: the keyword arguments of :func:`mergerscan.models.create_model`."""

    arch: str | None = None
    hidden: int | None = None
    dropout: float | None = None

    def kwargs(self) -> dict[str, Any]:
        return self.to_dict()


@dataclass(frozen=True)
class Metrics(Block):
    """Test-split metrics at the card's threshold (``metrics_test``, or ``by_views[n].test``)."""

    roc_auc: float | None = None
    pr_auc: float | None = None
    precision_at_2pct: float | None = None
    ece: float | None = None
    threshold: float | None = None
    macro_f1: float | None = None
    merger_f1: float | None = None
    merger_precision: float | None = None
    merger_recall: float | None = None
    views: int | None = None

    def floats(self) -> dict[str, float]:
        """The float-valued metrics by name, sorted (the engine-info and report line)."""
        return {k: v for k, v in sorted(self.to_dict().items()) if isinstance(v, float)}


@dataclass(frozen=True)
class ViewCalibration(Block):
    """Temperature and threshold fitted on validation for one view count (``by_views[n]``)."""

    temperature: float | None = None
    threshold: float | None = None
    val_macro_f1: float | None = None
    test: Metrics | None = None

    PARSERS: ClassVar = {"test": Metrics.from_dict}


@dataclass(frozen=True)
class CurveCounts(Block):
    """One view count's validation curve as stored; :func:`mergerscan.engines.operating.card_curve`
    checks it (a malformed curve is refused when a target asks for it, not when the engine loads)."""

    n_pos: int | None = None
    n_neg: int | None = None
    threshold: tuple[float, ...] | None = None
    tp: tuple[int, ...] | None = None
    fp: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ValCurve(Block):
    """``val_curve``: per calibrated view count, the validation curve, and where it comes from."""

    source: str | None = None
    by_views: Mapping[int, CurveCounts] = field(default_factory=dict)

    PARSERS: ClassVar = {"by_views": by_count(CurveCounts.from_dict)}


@dataclass(frozen=True)
class RepresentationCard(Block):
    """``representation``: what the engine's representation block reads and how it was fitted
    (:mod:`mergerscan.engines.representation`)."""

    features: str | None = None  # backbone_pool | hidden
    tensor: str | None = None
    dim: int | None = None
    k: int | None = None
    explained_variance_ratio: tuple[float, ...] | None = None
    explained_variance: float | None = None
    score: str | None = None
    score_weights: tuple[float, ...] | None = None
    fitted_on: str | None = None
    data_hash: str | None = None


@dataclass(frozen=True)
class TrainingProvenance(Block):
    """What a training run records about itself (flat keys of the card)."""

    experiment: str | None = None
    init: str | None = None
    input_size: int | None = None
    labels: str | None = None
    label_column: str | None = None
    train_labels: str | None = None
    catalog: str | None = None
    split: str | None = None
    data_hash: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    train_seconds: float | None = None
    hardware: str | None = None
    training_precision: str | None = None
    augmentation: str | None = None
    weights_kept: str | None = None
    mergerscan_version: str | None = None
    command: str | None = None
    onnx_parity_max_abs: float | None = None
    distilled_from: Mapping[str, Any] | None = None
    finetuned_from: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EngineCard(Block):
    """The whole card.  Absent entries are None; the accessors give the engines' defaults."""

    name: str | None = None
    arch: str | None = None
    model: ModelConfig | None = None
    precision: str | None = None  # "int8" (quantised), "fp16" (converted); None: float32
    quantization: str | None = None
    views: int | None = None
    views_rule: str | None = None
    threshold: float | None = None
    temperature: float | None = None
    by_views: Mapping[int, ViewCalibration] | None = None
    metrics_test: Metrics | None = None
    val_curve: ValCurve | None = None
    domain: EngineDomain | None = None
    representation: RepresentationCard | None = None
    training: TrainingProvenance = field(default_factory=TrainingProvenance)

    PARSERS: ClassVar = {
        "model": ModelConfig.from_dict,
        "by_views": by_count(ViewCalibration.from_dict),
        "metrics_test": Metrics.from_dict,
        "val_curve": ValCurve.from_dict,
        "domain": EngineDomain.from_dict,
        "representation": RepresentationCard.from_dict,
    }

    @classmethod
    def keys(cls) -> frozenset[str]:
        return super().keys() - {"training"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineCard:
        mine = TrainingProvenance.keys()
        card = super().from_dict({k: v for k, v in data.items() if k not in mine})
        return replace(card, training=TrainingProvenance.from_dict({k: v for k, v in data.items() if k in mine}))

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | self.training.to_dict()

    # ---- what the engines read
    @property
    def default_views(self) -> int:
        return int(self.views or 1)

    def calibrated_views(self) -> set[int]:
        """The view counts the card has a temperature and threshold for."""
        return set(self.by_views or {}) | {self.default_views}

    def calibration(self, views: int) -> ViewCalibration:
        """The temperature and threshold for ``views`` views (the card's own, without ``by_views``)."""
        own = (self.by_views or {}).get(views)
        if own is not None and own.to_dict():  # an empty entry falls back to the card's own
            return own
        return ViewCalibration(temperature=self.temperature, threshold=self.threshold)

    @property
    def file_precision(self) -> str:
        """The precision of the graph itself: int8 (quantised), fp16 (converted) or fp32."""
        return self.precision if self.precision in ("int8", "fp16") else "fp32"

    @property
    def engine_domain(self) -> EngineDomain:
        return self.domain or EngineDomain()

    @property
    def n_components(self) -> int:
        """The representation block's k (0: the engine has none)."""
        return int(self.representation.k or 0) if self.representation else 0

    def without_val_curve(self) -> EngineCard:
        """The card less its validation curve (long: the output files state the operating point instead)."""
        return replace(self, val_curve=None, present=(self.present or frozenset()) - {"val_curve"})
