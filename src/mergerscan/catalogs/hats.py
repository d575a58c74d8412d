"""HATS in and out: the output is a HATS catalog, and a HATS catalog is accepted as input.

Output layout (``OUT/parquet`` is the HATS catalog root; ``lsdb.open_catalog(OUT/parquet)``)::

    OUT/parquet/hats.properties, partition_info.csv      (hats' own writers)
    OUT/parquet/dataset/_metadata, _common_metadata      (hats.io.write_parquet_metadata)
    OUT/parquet/dataset/Norder=k/Dir=d/Npix=p.parquet    (one file per sky partition)
    OUT/parquet/bad_coords/part-0000.parquet             (rows without a usable position)

A pixel that the plan cut into row-number sub-partitions (more rows than ``--partition-rows``
at the planning order) is scored as pieces, which finalize joins into the pixel's one file
(:func:`join_pieces`): one file per pixel, as hats' validator wants.  Rows with bad
coordinates have no place on a HEALPix sky: they live beside the HATS dataset (in the FITS
table too) so that every input row is still in the output once.  The spatial index column is
``_healpix_29`` (hats' ``SPATIAL_INDEX_COLUMN``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .read import CatalogError, refuse_duplicate_names

DATASET = "dataset"
BAD_COORDS = "bad_coords"
PROPERTIES = "hats.properties"
HEALPIX = "_healpix_29"


# ---------------------------------------------------------------- output
def partition_file(root: Path, order: int, pixel: int, sub: int = 0) -> Path:
    """Output file of one pixel under the HATS root ``root`` (order -1: bad coordinates, by piece)."""
    root = Path(root)
    if order < 0:
        return root / BAD_COORDS / f"part-{sub:04d}.parquet"
    return root / DATASET / f"Norder={order}" / f"Dir={pixel // 10000 * 10000}" / f"Npix={pixel}.parquet"


def join_pieces(pieces: list, path: Path) -> Path:
    """Join a dense pixel's pieces (same schema) into its one file, atomically, one piece in memory
    at a time; the same pieces give the same bytes (re-running finalize is harmless)."""
    import pyarrow.parquet as pq

    path = Path(path)
    schema = pq.read_schema(pieces[0])
    # the temporary (.Npix=p.parquet.<pid>.<random>.tmp) is no .parquet file: hats' metadata writer skips it
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema, compression="zstd", write_statistics=True) as w:
        for f in pieces:
            w.write_table(pq.read_table(f).replace_schema_metadata(schema.metadata))
    return path


def output_files(root: Path) -> list[Path]:
    """Every partition file a run wrote under ``root`` (HATS dataset and bad-coordinate rows)."""
    root = Path(root)
    files = [*(root / DATASET).rglob("*.parquet"), *(root / BAD_COORDS).glob("*.parquet")]
    return sorted(f for f in files if not f.name.startswith((".", "_")))


def write_hats_metadata(
    root: Path, pixels: list[tuple[int, int]], total_rows: int, max_rows: int, name: str = "mergers"
) -> Path:
    """hats' own writers: ``partition_info.csv``, ``dataset/_metadata`` + ``_common_metadata``
    and ``hats.properties`` for the partition files already under ``root/dataset``."""
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import paths
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math import HealpixPixel
    from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER

    root = Path(root)
    info = PartitionInfo.from_healpix(sorted({HealpixPixel(o, p) for o, p in pixels}))
    info.write_to_file(paths.get_partition_info_pointer(root))
    rows = write_parquet_metadata(root)
    if rows != total_rows:
        raise RuntimeError(f"{root}: HATS dataset holds {rows} rows, the partitions {total_rows}")
    # field names, not the properties-file aliases mypy sees as TableProperties' parameters (pydantic)
    fields: dict[str, Any] = dict(
        catalog_name=name,
        catalog_type="object",
        total_rows=int(total_rows),
        ra_column="ra",
        dec_column="dec",
        healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=SPATIAL_INDEX_ORDER,
        hats_max_rows=int(max_rows),
        hats_order=info.get_highest_order(),
        moc_sky_fraction=f"{info.calculate_fractional_coverage():0.5f}",
        hats_builder="mergerscan process-catalog",
    )
    TableProperties(**fields).to_properties_file(root)
    return root


# ---------------------------------------------------------------- input
def is_hats(path: str | Path) -> bool:
    """A HATS catalog directory (``hats.properties`` at its root)."""
    p = Path(path)
    return p.is_dir() and (p / PROPERTIES).is_file()


class HatsInput:
    """A HATS catalog as input: its columns, row count and pixels (with their files and row
    counts from ``dataset/_metadata``, else from each file's footer).  Rows are numbered in
    partition order: ``input_row`` = the pixel's offset + the row's position in its file(s)."""

    def __init__(self, path: str | Path):
        import hats
        import pyarrow.parquet as pq
        from hats.catalog.healpix_dataset.healpix_dataset import HealpixDataset
        from hats.io import paths

        self.path = Path(path)
        try:
            cat = hats.read_hats(self.path)
            if not isinstance(cat, HealpixDataset):
                raise CatalogError(f"{self.path}: a HATS {type(cat).__name__}, not a catalog of rows")
            info = cat.catalog_info
            self.npix_suffix = info.npix_suffix
            self.pixels = [(hp.order, hp.pixel) for hp in cat.get_healpix_pixels()]
            schema = (
                pq.read_schema(paths.get_common_metadata_pointer(self.path))
                if paths.get_common_metadata_pointer(self.path).exists()
                else cat.schema
            )
            if schema is None:
                raise CatalogError(f"{self.path}: HATS catalog without a schema (no _common_metadata)")
        except CatalogError:
            raise
        except Exception as exc:  # any failure to open it is the catalog's
            raise CatalogError(
                f"{self.path}: cannot read as a HATS catalog "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        self.pixels.sort(key=lambda op: op[1] << (2 * (29 - op[0])))  # spatial (nested) order
        self.columns = [c for c in schema.names if not c.startswith("__")]  # pandas index columns left out
        refuse_duplicate_names(self.path, self.columns)
        self.ra_column, self.dec_column = info.ra_column, info.dec_column
        self.healpix_column = info.healpix_column if info.healpix_column in self.columns else None
        self.rows = self._row_counts()
        self.nrows = int(sum(self.rows.values()))
        self.offsets, pos = {}, 0
        for op in self.pixels:
            self.offsets[op] = pos
            pos += self.rows[op]

    def _row_counts(self) -> dict:
        import pyarrow.parquet as pq
        from hats.io import paths

        counts = {op: 0 for op in self.pixels}
        meta = Path(str(paths.get_parquet_metadata_pointer(self.path)))
        if meta.is_file():
            md = pq.read_metadata(meta)
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                hp = paths.get_healpix_from_path(rg.column(0).file_path)
                if (hp.order, hp.pixel) in counts:
                    counts[(hp.order, hp.pixel)] += rg.num_rows
            if sum(counts.values()) > 0:
                return counts
        for op in self.pixels:
            counts[op] = sum(pq.read_metadata(f).num_rows for f in self._files(*op))
        return counts

    def _files(self, order: int, pixel: int) -> list[Path]:
        return pixel_files(self.path, order, pixel, self.npix_suffix)


def pixel_files(root: str | Path, order: int, pixel: int, npix_suffix: str = ".parquet") -> list[Path]:
    """The Parquet file(s) of one pixel of a HATS catalog (a directory of files with suffix '/')."""
    from hats.io import paths
    from hats.pixel_math import HealpixPixel

    f = Path(str(paths.pixel_catalog_file(root, HealpixPixel(int(order), int(pixel)), npix_suffix=npix_suffix)))
    return sorted(g for g in f.glob("*.parquet") if not g.name.startswith((".", "_"))) if f.is_dir() else [f]


def read_pixel(root: str | Path, order: int, pixel: int, columns: list[str], npix_suffix: str = ".parquet"):
    """An Arrow table of ``columns`` of one pixel (only those columns are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = pixel_files(root, order, pixel, npix_suffix)
    if not files or not files[0].exists():
        raise CatalogError(f"{root}: pixel Norder={order}/Npix={pixel} is listed but has no file")
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def sub_rows(n: int, sub: int, nsub: int) -> np.ndarray:
    """Positions (within a pixel of n rows) of sub-partition ``sub`` of ``nsub`` (by row number)."""
    return np.arange(sub, n, nsub, dtype=np.int64)
