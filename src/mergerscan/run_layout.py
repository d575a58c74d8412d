"""Where every file of a process-catalog run lives: the one owner of the run directory's layout.

::

    OUT/mergers.fits                the FITS table (TOPCAT)
    OUT/parquet/                    the HATS catalog (catalogs/hats.py: dataset/, bad_coords/, metadata)
    OUT/summary.json                the run summary (run_summary.RunSummary)
    OUT/report/index.html           the HTML report
    OUT/similar/                    the vector index of the embedding column and its provenance,
                                    neighbour pages (``mergerscan similar``)
    OUT/_work/                      bookkeeping, see :class:`WorkLayout`

The pipeline writes these paths and the report and the command line read them; nobody else
spells a file name of a run.  A top-level module (beside ``atomic``), not part of ``pipeline``:
the report reads runs and the pipeline runs the report, so neither may import the other's
modules for it.  Changing a name here changes the on-disk format (old runs stop resuming).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .catalogs.hats import partition_file

WORK = "_work"
CATALOG = "parquet"
FITS = "mergers.fits"
SUMMARY = "summary.json"
REPORT = "report"
SIMILAR = "similar"
# everything a run writes under OUT (the only entries --overwrite removes)
OUTPUTS = (WORK, CATALOG, FITS, SUMMARY, REPORT, SIMILAR)


class PartitionLike(Protocol):
    """What the layout needs of a sky partition (pipeline.plan.Partition)."""

    @property
    def pid(self) -> int: ...
    @property
    def order(self) -> int: ...
    @property
    def pixel(self) -> int: ...
    @property
    def sub(self) -> int: ...
    @property
    def nsub(self) -> int: ...


def _part(pid: int) -> str:
    return f"part-{pid:06d}"


class WorkLayout:
    """``OUT/_work``: plan, fingerprint, split files, done markers, retries, pieces, logs.

    Tasks get the work directory as a string (picklable) and rebuild this view of it."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def __repr__(self) -> str:
        return f"WorkLayout({str(self.dir)!r})"

    # the run's identity and plan
    @property
    def plan(self) -> Path:
        return self.dir / "plan.json"

    @property
    def fingerprint(self) -> Path:
        return self.dir / "fingerprint.json"

    @property
    def content_cache(self) -> Path:
        """{stat key: sha256} of the input files, so an unchanged input is not hashed again."""
        return self.dir / "content-cache.json"

    @property
    def staged_csv(self) -> Path:
        """A CSV catalog converted once to Parquet row groups (plan.stage_csv)."""
        return self.dir / "input.parquet"

    # the split (pipeline/split.py)
    @property
    def split_dir(self) -> Path:
        return self.dir / "split"

    @property
    def runs_dir(self) -> Path:
        return self.split_dir / "runs"

    def run_file(self, chunk_id: int) -> Path:
        """One input chunk's rows sorted on the sky (removed once every bucket is written)."""
        return self.runs_dir / f"chunk-{chunk_id:06d}.arrow"

    def bucket_file(self, bucket_id: int) -> Path:
        return self.split_dir / f"bucket-{bucket_id:06d}.arrow"

    # scoring
    @property
    def scored_dir(self) -> Path:
        return self.dir / "scored"

    def marker(self, pid: int) -> Path:
        """A partition's done marker (its pipeline.result.PartitionResult as JSON): present = the
        partition is written (pipeline.resume.ResumePlan reads and writes it)."""
        return self.scored_dir / f"{_part(pid)}.json"

    def done_markers(self) -> list[Path]:
        """The done markers present, in partition order (the report reads them for its throughput
        figure; the run itself asks pipeline.resume.ResumePlan what is done)."""
        return sorted(self.scored_dir.glob("part-*.json"))

    @property
    def retry_dir(self) -> Path:
        return self.dir / "retry"

    def retry_marker(self, pid: int) -> Path:
        """Present while a partition holds rows whose failure may be transient (a re-run retries them)."""
        return self.retry_dir / _part(pid)

    @property
    def pieces_dir(self) -> Path:
        return self.dir / "pieces"

    def piece(self, pid: int) -> Path:
        """One row-number piece of a dense pixel; finalize joins a pixel's pieces into its file."""
        return self.pieces_dir / f"{_part(pid)}.parquet"

    @property
    def slurm_logs(self) -> Path:
        """Worker job logs of ``--cluster slurm``."""
        return self.dir / "slurm-logs"


class RunLayout:
    """The paths of the run in ``out_dir`` (nothing is created or checked here)."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.work = WorkLayout(self.root / WORK)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    @property
    def fits(self) -> Path:
        return self.root / FITS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def similar_dir(self) -> Path:
        """``mergerscan similar``'s files: the index (built once, rebuilt when the dataset changes)."""
        return self.root / SIMILAR

    @property
    def similar_index(self) -> Path:
        return self.similar_dir / "index.faiss"

    @property
    def similar_provenance(self) -> Path:
        """What the index was built from (column, rows, dataset fingerprint, index kind, versions)."""
        return self.similar_dir / "index.json"

    def similar_page(self, name: str) -> Path:
        """A neighbour gallery; ``name`` is made file-safe here."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")[:80] or "query"
        return self.similar_dir / f"like-{safe}.html"

    @property
    def catalog_dir(self) -> Path:
        """The output HATS catalog (``lsdb.open_catalog(OUT/parquet)``)."""
        return self.root / CATALOG

    def partition_file(self, order: int, pixel: int, sub: int = 0) -> Path:
        """A pixel's file in the output catalog (order -1: the bad-coordinate rows, piece ``sub``)."""
        return partition_file(self.catalog_dir, order, pixel, sub)

    def dataset_file(self, part: PartitionLike) -> Path:
        """The file a partition task writes: its pixel's file in the output catalog, or, for one
        row-number piece of a dense pixel, a piece that finalize joins into the pixel's file."""
        if part.order >= 0 and part.nsub > 1:
            return self.work.piece(part.pid)
        return self.partition_file(part.order, part.pixel, part.sub)

    def outputs(self) -> list[Path]:
        """Every entry a run writes directly under OUT (:data:`OUTPUTS`)."""
        return [self.root / name for name in OUTPUTS]
