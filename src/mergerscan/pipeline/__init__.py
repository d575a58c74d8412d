"""Dask orchestration: plan, partition tasks, resume, run.  The only place that creates a Dask client."""
