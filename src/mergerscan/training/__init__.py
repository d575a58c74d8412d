"""Produces engines: data, models, the E1/E2 experiments, metrics, export."""
