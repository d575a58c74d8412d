"""Pictures of a run: :func:`build_report` (process-catalog output) and :func:`build_training_report`."""

from .run import build_report
from .training import build_training_report

__all__ = ["build_report", "build_training_report"]
