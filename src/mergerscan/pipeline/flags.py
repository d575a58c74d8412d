"""The flags of ``process-catalog`` / ``mergerscan process``, in argument groups.

Each flag takes its default from the dataclass field it fills (:class:`ProcessArguments`,
``SlurmOptions``, the service source's ``Options``): defaults are written once, there.  The parsed
flags become those dataclasses by their fields (:func:`mergerscan.verb_flags.from_namespace`, in ``cli``).
"""

from __future__ import annotations

import argparse

from ..cutouts.registry import source_class
from ..engines.base import VIEWS
from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOTHING_SCORED, EXIT_OK
from .arguments import ProcessArguments, add_embeddings_option, default_of
from .slurm import SlurmOptions

EPILOG = f"""\
Output: OUT/mergers.fits (one FITS table for TOPCAT), OUT/parquet/ (a HATS catalog: lsdb.open_catalog
("OUT/parquet"); rows without a usable position in OUT/parquet/bad_coords/), OUT/summary.json.  Every
input row appears once; 'status' says why a row has no p_merger.  Re-running the same command resumes
an interrupted run and retries rows flagged fetch_failed, no_image or out_of_memory.

Exit status: {EXIT_OK} finished (at least one row scored), {EXIT_FAILED} --samp could not deliver the finished table,
{EXIT_BAD_INPUT} bad input or arguments (one-line error), {EXIT_NOTHING_SCORED} finished but no row could be scored (see the reasons
printed), {EXIT_INTERRUPTED} interrupted."""

# ProcessArguments fields whose flag is not their own name with dashes (for ArgumentError.render)
FIELD_FLAGS = {
    "source_kind": "--source",
    "source_location": "--source",
    "source_options": "--source-option",
    "service_options": "--service-*",
    "domain_columns": "--domain-column",
    "domain_limits": "--domain-limit",
    "threads_per_worker": "--threads",
    "default_source": "--source",
    "output": "-o",  # as the messages about the run directory word it
}

# SlurmOptions / ServiceOptions fields whose flag's dest is not --slurm-<field> / --service-<field>
SLURM_RENAME = {"directives": "slurm_directive"}
SERVICE_RENAME = {"max_concurrency": "service_concurrency", "max_rate": "service_rate"}


def _field(name: str, cls=ProcessArguments):
    """``default=`` the dataclass field's own default (the one place it is written)."""
    return {"default": default_of(cls, name)}


def _hidden_alias(group, alias: str, dest: str, **kw) -> None:
    """An old spelling, still accepted, not shown in --help."""
    group.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def _catalog_and_output(p) -> None:
    p.add_argument(
        "catalog",
        help="input catalog: FITS binary table (.fits/.fit/.fts, gzipped too), Parquet, CSV/TSV (gzipped too) or a HATS catalog directory",
    )
    p.add_argument("-o", "--output", help="output directory (default: <catalog stem>-mergers)")


def _source_group(p) -> None:
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
    service = source_class("service").Options  # the service source's own defaults, for the help text
    svc = default_of(service, "timeout"), default_of(service, "retries")
    src.add_argument("--service-timeout", type=float, help=f"seconds per request (default {svc[0]:g})")
    src.add_argument("--service-retries", type=int, help=f"default {svc[1]}")
    src.add_argument(
        "--service-concurrency",
        type=int,
        help=f"requests at a time per partition task (default {default_of(service, 'max_concurrency')}; "
        "4 for the built-in SkyServer default)",
    )
    src.add_argument(
        "--service-rate",
        type=float,
        help="at most this many requests/s per worker process (default: unlimited; 8 for the built-in SkyServer default)",
    )
    src.add_argument(
        "--service-total-timeout",
        type=float,
        help="seconds per row over all its attempts (default: 2 x (retries + 1) x timeout)",
    )


def _rows_group(p) -> None:
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
        choices=("on", "off", "catalog", "image"),
        help="on (default): rows whose catalog columns put them outside the engine's training selection get "
        "status out_of_domain (not fetched, not scored) and scored rows beyond the engine's image check are "
        "never is_merger; catalog / image: only that half; off: score and flag everything",
        **_field("domain"),
    )
    dom.add_argument(
        "--domain-column",
        action="append",
        default=[],
        metavar="KEY=COLUMN",
        help="the column deciding KEY (class: SDSS type/class, psf: probPSF, mag, extinction: subtracted from mag, "
        "z, size: petroR90 arcsec); COLUMN 'none' ignores a column found by name (repeatable)",
    )
    dom.add_argument(
        "--domain-limit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one of the card's limits (mag_min, mag_max, redshift_min, redshift_max, size_arcsec_min, "
        "size_arcsec_max, image_threshold), e.g. mag_max=18.0; 'none' lifts it (repeatable; recorded in the summary)",
    )


def _engine_group(p) -> None:
    p.add_argument("--engine", metavar="FILE", help="engine file (.onnx); default: the packaged model")
    add_embeddings_option(p)
    p.add_argument(
        "--backend",
        help=f"{default_of(ProcessArguments, 'backend')} (CPU, the default), onnxruntime-cuda (the default with --gpus 1), "
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
        **_field("views"),
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
        metavar="PI",
        help="the survey's merger fraction at which purity is stated (default %(default)s)",
        **_field("prevalence"),
    )


def _comma_list(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _columns_group(p) -> None:
    cols = p.add_argument_group("columns")
    cols.add_argument("--id-column")
    cols.add_argument("--ra-column")
    cols.add_argument("--dec-column")
    cols.add_argument(
        "--keep-columns",
        type=_comma_list,
        help="comma-separated input columns to carry through, or '*'",
        **_field("keep_columns"),
    )
    cols.add_argument(
        "--path-column",
        metavar="NAME",
        help="with --images: the column holding each row's stamp file (relative to DIR, or "
        "absolute); rows with it empty fall back to DIR/<id>.jpg|png|fits (default: a column "
        "named 'path' if it is kept)",
    )


def _dask_group(p) -> None:
    dk = p.add_argument_group("Dask")
    dk.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default %(default)s); with --cluster slurm: SLURM worker jobs",
        **_field("workers"),
    )
    dk.add_argument(
        "--threads",
        dest="threads_per_worker",
        type=int,
        metavar="N",
        help="threads per worker (default: cores / workers)",
        **_field("threads_per_worker"),
    )
    _hidden_alias(dk, "--threads-per-worker", "threads_per_worker", type=int)
    dk.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler instead")
    dk.add_argument("--memory-limit", help="per local worker, e.g. 4GiB", **_field("memory_limit"))
    dk.add_argument("--partition-rows", type=int, help="max rows per sky partition", **_field("partition_rows"))
    dk.add_argument("--chunk-rows", type=int, help="input rows read per task", **_field("chunk_rows"))
    dk.add_argument("--batch-size", type=int, help="stamps per engine call", **_field("batch_size"))
    dk.add_argument(
        "--shared-batch",
        action=argparse.BooleanOptionalAction,
        help="merge the batches of the partitions a worker scores at once into one engine call "
        "(default: on for GPU backends)",
        **_field("shared_batch"),
    )
    dk.add_argument(
        "--gpus",
        type=int,
        choices=(0, 1),
        help="GPUs per worker: 1 = one GPU each (--gres=gpu:1, Dask resource GPU=1)",
        **_field("gpus"),
    )


def _slurm_group(p) -> None:
    sl = p.add_argument_group("SLURM (see slurm/ and README 'Running on a SLURM cluster')")
    sl.add_argument(
        "--cluster",
        choices=("local", "slurm", "slurm-runner"),
        help="local (default); slurm: start workers as SLURM jobs from this (login) node; "
        "slurm-runner: inside one allocation under srun (slurm/process-catalog.sbatch)",
        **_field("cluster"),
    )
    opt = lambda name: _field(name, SlurmOptions)
    sl.add_argument("--slurm-cores", type=int, help="cores per worker job (default %(default)s)", **opt("cores"))
    sl.add_argument("--slurm-memory", help="memory per worker job (default %(default)s)", **opt("memory"))
    sl.add_argument(
        "--slurm-processes", type=int, help="Dask worker processes per job (default %(default)s)", **opt("processes")
    )
    sl.add_argument(
        "--slurm-walltime",
        help="per worker job (default %(default)s); workers retire before it (--lifetime) and are replaced by new jobs",
        **opt("walltime"),
    )
    sl.add_argument("--slurm-lifetime", help="worker --lifetime (default: walltime minus max(2 min, 15%%))")
    sl.add_argument("--slurm-account", help="sbatch --account")
    sl.add_argument("--slurm-partition", help="sbatch --partition")
    sl.add_argument(
        "--slurm-prologue",
        action="append",
        metavar="CMD",
        help="shell line run before each worker starts, e.g. 'module load cuda' (repeatable)",
        **opt("prologue"),
    )
    sl.add_argument(
        "--slurm-directive",
        action="append",
        metavar="OPT",
        help="extra #SBATCH option for worker jobs, e.g. --slurm-directive=--qos=long (repeatable)",
        **opt("directives"),
    )
    sl.add_argument("--slurm-interface", help="network interface for scheduler and workers, e.g. ib0")


def _run_group(p) -> None:
    arr = p.add_argument_group("array jobs (see slurm/)")
    m = arr.add_mutually_exclusive_group()
    m.add_argument("--plan", action="store_true", help="only plan and split the catalog into partitions, then exit")
    m.add_argument("--shard", metavar="I/N", help="score partitions with pid %% N == I of an existing plan")
    m.add_argument("--finalize", action="store_true", help="write _metadata, the FITS table and the summary")
    p.add_argument(
        "--samp",
        action="store_true",
        help="at the end, send OUT/mergers.fits to TOPCAT (or any SAMP client) over SAMP",
        **_field("samp"),
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing, different run in OUT", **_field("overwrite")
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", **_field("progress"))
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="skip the HTML run report (OUT/report/)",
        **_field("report"),
    )


def build_parser(prog: str = "process-catalog") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every galaxy in a catalog for being a merger.",
    )
    for group in (
        _catalog_and_output,
        _source_group,
        _rows_group,
        _engine_group,
        _columns_group,
        _dask_group,
        _slurm_group,
        _run_group,
    ):
        group(p)
    return p


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Argument (field) name -> its flag, for :meth:`ArgumentError.render`."""
    names = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}
    return names | FIELD_FLAGS
