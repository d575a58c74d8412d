"""mergerscan: survey-scale galaxy-merger scoring."""

__version__ = "0.1.0"
