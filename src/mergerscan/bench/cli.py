"""The command lines of this room: ``mergerscan bench engine|sources|plan`` and
``mergerscan doctor [--gpu]``.  ``mergerscan.cli`` registers them with :func:`add_parsers`
and hands the parsed arguments to :func:`run`; every error is one line with an exit status
from the project's exit codes."""

from __future__ import annotations

import shlex
from dataclasses import replace

from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from ..verb_flags import check_output, os_error_text, positive_int

VERBS = ("bench", "doctor")
# not yet among the project's exit codes (pipeline.failures): the lead moves it there at merge


def _output(p, default: str | None) -> None:
    p.add_argument("-o", "--output", default=default, help=f"the result JSON (default {default or 'none'})")


def _engine_parser(sub) -> None:
    p = sub.add_parser("engine", help="engine speed: objects/s per backend, views, threads and batch size")
    p.add_argument("--engine", help="engine file (.onnx); default: the packaged engine")
    p.add_argument(
        "--backend", default="onnxruntime", help="comma-separated backends[:precision] (default onnxruntime)"
    )
    p.add_argument("--views", default="", help="comma-separated view counts (default: 1 and the card's)")
    p.add_argument("--threads", default="1", help="comma-separated engine threads (default 1)")
    p.add_argument("--batch-size", default="128", help="comma-separated stamps per call (default 128)")
    p.add_argument("--n", type=positive_int, default=256, help="stamps timed per point (default 256)")
    p.add_argument("--images", metavar="DIR", help="real stamps (.jpg/.png) to time on (default: noise stamps)")
    _output(p, "bench-engine.json")


def _sources_parser(sub) -> None:
    p = sub.add_parser("sources", help="image-source speed: stamps, a local cutout service, frames")
    p.add_argument("--images", metavar="DIR", help="stamp folder: times the stamps source and a local service")
    p.add_argument("--frames", metavar="DIR", help="frame folder: times the frames source")
    p.add_argument("--n", type=positive_int, default=256, help="rows per source (default 256)")
    p.add_argument("--threads", type=positive_int, default=2, help="decoding threads / requests in flight (default 2)")
    p.add_argument("--no-service", action="store_true", help="leave out the local cutout service")
    _output(p, "bench-sources.json")


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="planning at survey scale: process-catalog --plan against its floor")
    p.add_argument("--rows", type=positive_int, default=1_000_000, help="rows of the generated catalog (default 1e6)")
    p.add_argument("--formats", default="parquet,fits", help="catalog formats (default parquet,fits)")
    p.add_argument("--threads", type=positive_int, default=1, help="threads of the planning worker (default 1)")
    p.add_argument("--tmp", metavar="DIR", help="where the generated catalogs go (default: a temporary folder)")
    p.add_argument("--process-args", default="", help="more process-catalog options, quoted as one string")
    _output(p, "bench-plan.json")


def _doctor_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check this environment (versions, backends, the engine); --gpu: the GPU path")
    p.add_argument("--engine", help="engine file to load (default: the packaged engine)")
    p.add_argument("--gpu", action="store_true", help="measure the GPU path (CUDA/TensorRT): ceiling, copies, parity")
    p.add_argument("--cpu", action="store_true", help="with --gpu: dry-run every section on the CPU (tiny sizes)")
    p.add_argument("--images", metavar="DIR", default=".gpu-check-data", help="with --gpu: real JPEG stamps")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="with --gpu: host threads (default min(8, cores))"
    )
    _output(p, None)


def add_parsers(sub) -> None:
    """``bench`` (with its own verbs) and ``doctor`` under ``mergerscan``."""
    b = sub.add_parser("bench", help="speed on this machine: engine, image sources, planning (JSON results)")
    bsub = b.add_subparsers(dest="bench", required=True)
    _engine_parser(bsub)
    _sources_parser(bsub)
    _plan_parser(bsub)
    _doctor_parser(sub)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from .common import parse_ints

    return tuple(parse_ints(text, flag)) if text else ()


def _bench_doc(a) -> dict:
    if a.bench == "engine":
        from .engine import EngineBench, run_engine_bench

        cfg = EngineBench(
            engine=a.engine,
            backends=tuple(b for b in a.backend.split(",") if b),
            views=_ints(a.views, "--views"),
            threads=_ints(a.threads, "--threads") or (1,),
            batches=_ints(a.batch_size, "--batch-size") or (128,),
            n=a.n,
            images=a.images,
        )
        return run_engine_bench(cfg)
    if a.bench == "sources":
        from .sources import SourcesBench, run_sources_bench

        return run_sources_bench(SourcesBench(a.images, a.frames, a.n, a.threads, not a.no_service))
    from .plan import PlanBench, run_plan_bench

    formats = tuple(f for f in a.formats.split(",") if f)
    try:
        more = tuple(shlex.split(a.process_args))
    except ValueError as exc:  # an unclosed quote
        raise ValueError(f"--process-args {a.process_args!r}: {exc}") from None
    return run_plan_bench(PlanBench(a.rows, formats, a.threads, a.tmp, more))


def _doctor(ap, a) -> None:
    if a.gpu:
        return _doctor_gpu(ap, a)
    from pathlib import Path

    from .common import write_json
    from .doctor import doctor_lines, run_doctor

    if a.engine and not Path(a.engine).is_file():  # a typo, not the environment (which exits 1)
        ap.exit(EXIT_BAD_INPUT, f"mergerscan doctor: error: --engine {a.engine}: no such file\n")

    doc, chk = run_doctor(a.engine)
    print("\n".join(doctor_lines(doc)))
    if a.output:
        print(write_json(a.output, doc))
    if not chk.ok:
        ap.exit(EXIT_FAILED, f"mergerscan doctor: error: the engine does not load here: {chk.error}\n")


def _doctor_gpu(ap, a) -> None:
    from .gpu import GpuCheck, no_gpu_reason, run_gpu_check

    why = None if a.cpu else no_gpu_reason()
    if why:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan doctor --gpu: no GPU here: {why} (--cpu dry-runs the check on the CPU)\n")
    cfg = GpuCheck(images=a.images, output=a.output, cpu=a.cpu)
    print(run_gpu_check(replace(cfg, threads=a.threads) if a.threads else cfg))


def _inputs(a) -> dict:
    """What a verb reads, which its -o must not overwrite: the engine (by default the packaged one),
    the stamp and frame folders."""
    from ..engines import default_engine_path

    inputs = {f"{flag} input": getattr(a, flag.strip("-"), None) for flag in ("--images", "--frames")}
    if hasattr(a, "engine"):
        inputs["engine"] = a.engine or default_engine_path()
    return inputs


def run(ap, a) -> None:
    """Run a parsed ``bench`` or ``doctor`` command; errors are one line (never a traceback)."""
    what = f"mergerscan {a.verb}" + (f" {a.bench}" if a.verb == "bench" else "")
    check_output(ap, a, a.output, _inputs(a))
    try:
        if a.verb == "doctor":
            return _doctor(ap, a)
        from .common import write_json

        doc = _bench_doc(a)
        print(write_json(a.output, doc))
    except KeyboardInterrupt:
        ap.exit(EXIT_INTERRUPTED, f"{what}: interrupted\n")
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        ap.exit(EXIT_BAD_INPUT, f"{what}: error: {' '.join(str(exc).split())}\n")
    except RuntimeError as exc:
        ap.exit(EXIT_FAILED, f"{what}: error: {' '.join(str(exc).split())}\n")
    except OSError as exc:  # a write that failed after the checks (a full disk, a vanished folder)
        ap.exit(EXIT_FAILED, f"{what}: error: {os_error_text(exc)}\n")
