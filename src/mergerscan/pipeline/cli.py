"""``process-catalog CATALOG -o OUT [--images DIR | --frames DIR | --cutout-service URL]``."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys

from ..catalogs.read import CatalogError
from ..engines.base import VIEWS
from .arguments import ArgumentError, ProcessArguments, add_embeddings_option
from .domain import DomainError, parse_pairs
from .resume import FingerprintMismatch, OutputError
from .slurm import SlurmOptions

EPILOG = """\
Output: OUT/mergers.fits (one FITS table for TOPCAT), OUT/parquet/ (a HATS catalog: lsdb.open_catalog
("OUT/parquet"); rows without a usable position in OUT/parquet/bad_coords/), OUT/summary.json.  Every
input row appears once; 'status' says why a row has no p_merger.  Re-running the same command resumes
an interrupted run and retries rows flagged fetch_failed, no_image or out_of_memory.

Exit status: 0 finished (at least one row scored), 1 --samp could not deliver the finished table,
2 bad input or arguments (one-line error), 3 finished but no row could be scored (see the reasons
printed), 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="process-catalog",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every galaxy in a catalog for being a merger.",
    )
    p.add_argument(
        "catalog",
        help="input catalog: FITS binary table (.fits/.fit/.fts, gzipped too), Parquet, CSV/TSV (gzipped too) or a HATS catalog directory",
    )
    p.add_argument("-o", "--output", help="output directory (default: <catalog stem>-mergers)")
    src = p.add_argument_group(
        "image source (at most one; none: $MERGERSCAN_DEFAULT_SOURCE, "
        "~/.config/mergerscan/default-source, else SDSS SkyServer ImgCutout)"
    )
    src.add_argument("--images", metavar="DIR", help="pre-cut stamps named <id>.jpg/.png/.fits (or see --path-column)")
    src.add_argument("--frames", metavar="DIR", help="survey frames with WCS (SDSS frame-[gri]-*.fits.bz2)")
    src.add_argument("--cutout-service", metavar="URL", help="HTTP cutout service (SkyServer ImgCutout shape)")
    src.add_argument(
        "--source",
        nargs=2,
        metavar=("KIND", "LOCATION"),
        help="any registered image source (stamps, frames, service, a site's own) or a "
        "module:Class one, at LOCATION (a directory, a URL, ...)",
    )
    src.add_argument(
        "--source-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of --source's class (repeatable; VALUE as JSON if it parses, else text)",
    )
    src.add_argument("--service-timeout", type=float, help="seconds per request (default 10)")
    src.add_argument("--service-retries", type=int, help="default 3")
    src.add_argument(
        "--service-concurrency",
        type=int,
        help="requests at a time per partition task (default 8; 4 for the built-in SkyServer default)",
    )
    src.add_argument(
        "--service-rate",
        type=float,
        help="at most this many requests/s per worker process "
        "(default: unlimited; 8 for the built-in SkyServer default)",
    )
    p.add_argument(
        "--select",
        metavar="EXPR",
        help="score only rows where this expression over catalog columns is true, e.g. "
        '"type == 3 and petroMag_r < 17.77" (comparisons, and/or/not, arithmetic, in [...], abs/sqrt/log10/...; '
        "never run as Python: see docs/output.md); the others are kept with status not_selected",
    )
    dom = p.add_argument_group(
        "training domain (the engine card's: e.g. SDSS main-sample galaxies, r_petro <= 17.77; README 'Domain')"
    )
    dom.add_argument(
        "--domain",
        default="on",
        choices=("on", "off", "catalog", "image"),
        help="on (default): rows whose catalog columns put them outside the engine's training selection get "
        "status out_of_domain (not fetched, not scored) and scored rows beyond the engine's image check are "
        "never is_merger; catalog / image: only that half; off: score and flag everything",
    )
    dom.add_argument(
        "--domain-column",
        action="append",
        default=[],
        metavar="KEY=COLUMN",
        help="the column deciding KEY (class: SDSS type/class, psf: probPSF, mag, extinction: subtracted from mag, "
        "z, size: petroR90 arcsec); "
        "COLUMN 'none' ignores a column found by name (repeatable)",
    )
    dom.add_argument(
        "--domain-limit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one of the card's limits (mag_min, mag_max, redshift_min, redshift_max, size_arcsec_min, "
        "size_arcsec_max, image_threshold), e.g. mag_max=18.0; 'none' lifts it (repeatable; recorded in the summary)",
    )
    p.add_argument(
        "--samp", action="store_true", help="at the end, send OUT/mergers.fits to TOPCAT (or any SAMP client) over SAMP"
    )
    src.add_argument(
        "--service-total-timeout",
        type=float,
        default=None,
        help="seconds per row over all its attempts (default: 2 x (retries + 1) x timeout)",
    )
    p.add_argument("--engine", help="engine file (.onnx); default: the packaged model")
    add_embeddings_option(p)
    p.add_argument(
        "--backend",
        help="onnxruntime (CPU, the default), onnxruntime-cuda (the default with --gpus 1), "
        "torch, torch-cuda, tensorrt; NAME:PRECISION picks the arithmetic, e.g. torch-cuda:fp16, "
        "tensorrt:fp32 (defaults: fp32; torch-cuda bf16; tensorrt fp16). A run resumes only "
        "at the precision it started with",
    )
    p.add_argument(
        "--views",
        type=int,
        choices=tuple(VIEWS),
        help="test-time augmentation: mean logit over this many flips/rotations of each stamp, with "
        "the threshold and temperature fitted on validation for that count (default: the engine "
        "card's; the packaged engine uses 1 - 4 costs 4x the CPU for a higher macro F1)",
    )
    op = p.add_argument_group("operating point (the threshold of is_merger)")
    op.add_argument(
        "--purity",
        type=float,
        metavar="P",
        help="flag the most complete list whose expected purity at --prevalence reaches P, read off the "
        "engine card's validation curve (e.g. 0.9); refused when the curve cannot reach it",
    )
    op.add_argument(
        "--completeness",
        type=float,
        metavar="C",
        help="flag the purest list whose expected completeness reaches C (e.g. 0.8), from the same curve",
    )
    op.add_argument(
        "--prevalence",
        type=float,
        default=0.02,
        metavar="PI",
        help="the survey's merger fraction at which purity is stated (default 0.02)",
    )
    cols = p.add_argument_group("columns")
    cols.add_argument("--id-column")
    cols.add_argument("--ra-column")
    cols.add_argument("--dec-column")
    cols.add_argument("--keep-columns", default="", help="comma-separated input columns to carry through, or '*'")
    cols.add_argument(
        "--path-column",
        metavar="NAME",
        help="with --images: the column holding each row's stamp file (relative to DIR, or "
        "absolute); rows with it empty fall back to DIR/<id>.jpg|png|fits (default: a column "
        "named 'path' if it is kept)",
    )
    dk = p.add_argument_group("Dask")
    dk.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (default 1); with --cluster slurm: SLURM worker jobs",
    )
    dk.add_argument("--threads-per-worker", type=int, default=0, help="default: cores / workers")
    dk.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler instead")
    dk.add_argument("--memory-limit", default="auto", help="per local worker, e.g. 4GiB")
    dk.add_argument("--partition-rows", type=int, default=5000, help="max rows per sky partition")
    dk.add_argument("--chunk-rows", type=int, default=200_000, help="input rows read per task")
    dk.add_argument("--batch-size", type=int, default=128, help="stamps per engine call")
    dk.add_argument(
        "--shared-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="merge the batches of the partitions a worker scores at once into one engine call "
        "(default: on for GPU backends)",
    )
    dk.add_argument(
        "--gpus",
        type=int,
        default=0,
        choices=(0, 1),
        help="GPUs per worker: 1 = one GPU each (--gres=gpu:1, Dask resource GPU=1)",
    )
    sl = p.add_argument_group("SLURM (see slurm/ and README 'Running on a SLURM cluster')")
    sl.add_argument(
        "--cluster",
        default="local",
        choices=("local", "slurm", "slurm-runner"),
        help="local (default); slurm: start workers as SLURM jobs from this (login) node; "
        "slurm-runner: inside one allocation under srun (slurm/process-catalog.sbatch)",
    )
    sl.add_argument("--slurm-cores", type=int, default=4, help="cores per worker job (default 4)")
    sl.add_argument("--slurm-memory", default="16GB", help="memory per worker job (default 16GB)")
    sl.add_argument("--slurm-processes", type=int, default=1, help="Dask worker processes per job (default 1)")
    sl.add_argument(
        "--slurm-walltime",
        default="01:00:00",
        help="per worker job (default 01:00:00); workers retire before it (--lifetime) and are replaced by new jobs",
    )
    sl.add_argument("--slurm-lifetime", help="worker --lifetime (default: walltime minus max(2 min, 15%%))")
    sl.add_argument("--slurm-account", help="sbatch --account")
    sl.add_argument("--slurm-partition", help="sbatch --partition")
    sl.add_argument(
        "--slurm-prologue",
        action="append",
        default=[],
        metavar="CMD",
        help="shell line run before each worker starts, e.g. 'module load cuda' (repeatable)",
    )
    sl.add_argument(
        "--slurm-directive",
        action="append",
        default=[],
        metavar="OPT",
        help="extra #SBATCH option for worker jobs, e.g. --slurm-directive=--qos=long (repeatable)",
    )
    sl.add_argument("--slurm-interface", help="network interface for scheduler and workers, e.g. ib0")
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


def _source_options(items: list[str]) -> dict:
    import json

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ArgumentError(f"--source-option {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def arguments_from(ns: argparse.Namespace, argv) -> ProcessArguments:
    from pathlib import Path

    output = ns.output or str(Path(ns.catalog).name.split(".")[0] + "-mergers")
    keep = [k.strip() for k in ns.keep_columns.split(",") if k.strip()]
    backend = ns.backend or ("onnxruntime-cuda" if ns.gpus else "onnxruntime")
    slurm = SlurmOptions(
        cores=ns.slurm_cores,
        memory=ns.slurm_memory,
        processes=ns.slurm_processes,
        walltime=ns.slurm_walltime,
        lifetime=ns.slurm_lifetime,
        account=ns.slurm_account,
        partition=ns.slurm_partition,
        prologue=list(ns.slurm_prologue),
        directives=list(ns.slurm_directive),
        interface=ns.slurm_interface,
    )
    return ProcessArguments(
        catalog=ns.catalog,
        output=output,
        images=ns.images,
        frames=ns.frames,
        cutout_service=ns.cutout_service,
        engine=ns.engine,
        backend=backend,
        id_column=ns.id_column,
        ra_column=ns.ra_column,
        dec_column=ns.dec_column,
        keep_columns=keep,
        path_column=ns.path_column,
        workers=ns.workers,
        threads_per_worker=ns.threads_per_worker,
        scheduler=ns.scheduler,
        cluster=ns.cluster,
        gpus=ns.gpus,
        slurm=slurm,
        shared_batch=ns.shared_batch,
        views=ns.views,
        purity=ns.purity,
        completeness=ns.completeness,
        prevalence=ns.prevalence,
        memory_limit=ns.memory_limit,
        partition_rows=ns.partition_rows,
        chunk_rows=ns.chunk_rows,
        batch_size=ns.batch_size,
        overwrite=ns.overwrite,
        progress=not ns.no_progress,
        report=not ns.no_report,
        mode="plan" if ns.plan else "shard" if ns.shard else "finalize" if ns.finalize else "all",
        shard=_parse_shard(ns.shard),
        service_options={
            k: v
            for k, v in (
                ("timeout", ns.service_timeout),
                ("retries", ns.service_retries),
                ("max_concurrency", ns.service_concurrency),
                ("max_rate", ns.service_rate),
                ("total_timeout", ns.service_total_timeout),
            )
            if v is not None
        },
        source_kind=ns.source[0] if ns.source else None,
        source_location=ns.source[1] if ns.source else None,
        source_options=_source_options(ns.source_option),
        select=ns.select,
        domain=ns.domain,
        domain_columns=parse_pairs(ns.domain_column, "--domain-column", number=False),
        domain_limits=parse_pairs(ns.domain_limit, "--domain-limit", number=True),
        samp=ns.samp,
        embeddings=ns.embeddings,
        command=shlex.join(["process-catalog", *argv]),  # redacted by ProcessArguments
    )


def _error(message, status: int) -> int:
    """One line on stderr (credentials in URLs redacted), the exit status."""
    from ..cutouts.sources import redact_text

    text = " ".join(str(message).split())
    print(f"process-catalog: error: {redact_text(text)}", file=sys.stderr)
    return status


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        from ..run_summary import RunSummary
        from .run import format_summary, run

        args = arguments_from(ns, argv)
        if args.cluster == "slurm-runner":
            # every task of the srun step gets here; only the client task (1) returns from entering
            from .cluster import slurm_runner

            with slurm_runner(args.threads_per_worker, args.memory_limit, args.gpus) as address:
                args.scheduler = address
                summary = run(args)
        else:
            summary = run(args)
        if not isinstance(summary, RunSummary):  # --plan / --shard
            print("process-catalog: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
            return 0
    except (ArgumentError, DomainError, CatalogError, FingerprintMismatch, OutputError, FileNotFoundError) as exc:
        return _error(exc, 2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C while exiting: no traceback either
        print(
            "process-catalog: interrupted; finished partitions are kept - re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # e.g. OUT became unwritable or full mid-run
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _error(f"{where}{exc.strerror or exc}", 1)
    except RuntimeError as exc:  # tasks failed after retries: the first failure, in one line
        return _error(exc, 1)
    print(format_summary(summary))
    if args.samp:  # the catalog is done either way: a SAMP problem is a message
        from ..samp import SampError, send_table

        try:
            print(f"  sent to           {', '.join(send_table(summary.fits))} (SAMP)")
        except SampError as exc:
            print(f"process-catalog: --samp: {exc}", file=sys.stderr)
            return 1
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
