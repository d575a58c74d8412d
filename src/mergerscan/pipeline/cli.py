"""``process-catalog CATALOG -o OUT [--images DIR | --frames DIR | --cutout-service URL]``."""

from __future__ import annotations

import argparse
import sys

from ..catalogs.read import CatalogError
from .arguments import ArgumentError, ProcessArguments
from .resume import FingerprintMismatch

EPILOG = """\
Output: OUT/mergers.fits (one FITS table for TOPCAT), OUT/parquet/ (HEALPix-partitioned Parquet
dataset with _metadata), OUT/summary.json.  Every input row appears once; 'status' says why a
row has no p_merger.  Re-running the same command resumes an interrupted run."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="process-catalog", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Score every galaxy in a catalog for being a merger.")
    p.add_argument("catalog", help="input catalog: FITS binary table, Parquet or CSV")
    p.add_argument("-o", "--output", help="output directory (default: <catalog stem>-mergers)")
    src = p.add_argument_group("image source (exactly one)")
    src.add_argument("--images", metavar="DIR", help="pre-cut stamps named <id>.jpg/.png/.fits (or a 'path' column)")
    src.add_argument("--frames", metavar="DIR", help="survey frames with WCS (SDSS frame-[gri]-*.fits.bz2)")
    src.add_argument("--cutout-service", metavar="URL", help="HTTP cutout service (SkyServer ImgCutout shape)")
    src.add_argument("--service-timeout", type=float, default=10.0, help="seconds per request")
    src.add_argument("--service-retries", type=int, default=3)
    src.add_argument("--service-concurrency", type=int, default=8)
    p.add_argument("--engine", help="engine file (.onnx); default: the packaged model")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (CPU), onnxruntime-cuda, torch, tensorrt")
    cols = p.add_argument_group("columns")
    cols.add_argument("--id-column"); cols.add_argument("--ra-column"); cols.add_argument("--dec-column")
    cols.add_argument("--keep-columns", default="", help="comma-separated input columns to carry through, or '*'")
    dk = p.add_argument_group("Dask")
    dk.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    dk.add_argument("--threads-per-worker", type=int, default=0, help="default: cores / workers")
    dk.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler instead")
    dk.add_argument("--memory-limit", default="auto", help="per local worker, e.g. 4GiB")
    dk.add_argument("--partition-rows", type=int, default=5000, help="max rows per sky partition")
    dk.add_argument("--chunk-rows", type=int, default=200_000, help="input rows read per task")
    dk.add_argument("--batch-size", type=int, default=128, help="stamps per engine call")
    arr = p.add_argument_group("array jobs (see slurm/)")
    m = arr.add_mutually_exclusive_group()
    m.add_argument("--plan", action="store_true", help="only plan and split the catalog into partitions, then exit")
    m.add_argument("--shard", metavar="I/N", help="score partitions with pid %% N == I of an existing plan")
    m.add_argument("--finalize", action="store_true", help="write _metadata, the FITS table and the summary")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different run in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="skip the HTML run report (OUT/report/)")
    return p


def _parse_shard(text):
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.replace("%", "/").split("/"))
    except ValueError:
        raise ArgumentError(f"--shard {text}: expected I/N, e.g. 3/16") from None
    return (i, n)


def arguments_from(ns: argparse.Namespace, argv) -> ProcessArguments:
    from pathlib import Path
    output = ns.output or str(Path(ns.catalog).name.split(".")[0] + "-mergers")
    keep = [k.strip() for k in ns.keep_columns.split(",") if k.strip()]
    return ProcessArguments(
        catalog=ns.catalog, output=output, images=ns.images, frames=ns.frames,
        cutout_service=ns.cutout_service, engine=ns.engine, backend=ns.backend,
        id_column=ns.id_column, ra_column=ns.ra_column, dec_column=ns.dec_column, keep_columns=keep,
        workers=ns.workers, threads_per_worker=ns.threads_per_worker, scheduler=ns.scheduler,
        memory_limit=ns.memory_limit, partition_rows=ns.partition_rows, chunk_rows=ns.chunk_rows,
        batch_size=ns.batch_size, overwrite=ns.overwrite, progress=not ns.no_progress, report=not ns.no_report,
        mode="plan" if ns.plan else "shard" if ns.shard else "finalize" if ns.finalize else "all",
        shard=_parse_shard(ns.shard),
        service_options={"timeout": ns.service_timeout, "retries": ns.service_retries,
                         "max_concurrency": ns.service_concurrency},
        command="process-catalog " + " ".join(argv))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    from .run import format_summary, run
    try:
        summary = run(arguments_from(ns, argv))
        if "rows" not in summary or "scored" not in summary:     # --plan / --shard
            print("process-catalog: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
            return 0
    except (ArgumentError, CatalogError, FingerprintMismatch, FileNotFoundError) as exc:
        print(f"process-catalog: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("process-catalog: interrupted; finished partitions are kept - re-run the same command to resume",
              file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
