"""Command lines: ``process-catalog`` (= ``mergerscan process``) and ``mergerscan <verb>``.

Across verbs: ``-o/--output`` names what a verb writes, ``--engine`` an engine file, ``--threads``
the threads, the positional ``CATALOG`` the catalog read (:mod:`mergerscan.verb_flags`; earlier
spellings still accepted, hidden); exit statuses come from :mod:`mergerscan.exit_codes`."""

from __future__ import annotations

import argparse
import sys

from .exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from .verb_flags import add_engine_option, check_output, count, engine_file, os_error_text, positive_int


def _report_parser(sub):
    p = sub.add_parser(
        "report",
        help="HTML report of a process-catalog run (summary.json) or a training run (metrics.json)",
        epilog=REPORT_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory: process-catalog OUT or a training --out")
    p.add_argument("--top-n", type=count, default=24, help="mergers in the top gallery")
    p.add_argument(
        "--borderline-n", type=count, default=12, help="objects near the threshold in the borderline gallery"
    )
    return p


REPORT_EXIT = f"""\
Exit status: {EXIT_OK} the report was written (a figure that could not be drawn is left out with a note on
the page), {EXIT_FAILED} it could not be written (one line saying why), {EXIT_BAD_INPUT} RUN is not a run directory or its
summary.json / metrics.json is unreadable (one line), {EXIT_INTERRUPTED} interrupted."""


def _report(ap, a):
    import json
    from pathlib import Path

    from .cutouts.redact import redact_text
    from .run_layout import RunLayout
    from .run_summary import RunSummary, SummaryError

    def fail(status: int, why) -> None:
        ap.exit(status, "mergerscan report: error: " + redact_text(" ".join(str(why).split())) + "\n")

    d = Path(a.run)
    doc = RunLayout(d).summary if RunLayout(d).summary.is_file() else d / "metrics.json"
    if not doc.is_file():
        fail(EXIT_BAD_INPUT, f"{d} has neither summary.json (process-catalog run) nor metrics.json (training run)")
    try:
        text = doc.read_text(encoding="utf-8")
        loaded = json.loads(text)
    except (OSError, ValueError) as exc:
        fail(EXIT_BAD_INPUT, f"{doc}: not readable as JSON ({exc})")
    try:  # JSON, but a list, a number, or keys of the wrong type: not what a run writes
        if doc.name == "summary.json":
            RunSummary.from_json(text)
        elif not isinstance(loaded, dict):
            raise SummaryError(f"a JSON {type(loaded).__name__}, not an object")
    except SummaryError as exc:
        fail(EXIT_BAD_INPUT, f"{doc}: not the {doc.name} of a run ({exc})")
    try:
        from .report import build_report, build_training_report

        if doc.name == "summary.json":
            path = build_report(d, top_n=a.top_n, borderline_n=a.borderline_n)
        else:
            path = build_training_report(d)
    except KeyboardInterrupt:
        fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # never a traceback: one line, the report's own failure
        fail(EXIT_FAILED, f"the report of {d} could not be written: {type(exc).__name__}: {exc}")
    print(path)


def _samp_parser(sub):
    p = sub.add_parser("samp", help="send a run's FITS table to TOPCAT (or any SAMP client) over SAMP")
    p.add_argument("run", help="process-catalog OUT directory (sends OUT/mergers.fits) or a FITS file")
    p.add_argument("--name", help="table name shown in TOPCAT (default: '<OUT> mergers')")
    return p


def _samp(ap, a):
    from .samp import SampError, fits_of, send_table

    try:  # what to send: a wrong path is the input's fault (2), a missing hub or client the session's (1)
        fits_of(a.run)
    except SampError as exc:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan samp: error: {exc}\n")
    try:
        names = send_table(a.run, name=a.name)
    except SampError as exc:
        ap.exit(EXIT_FAILED, f"mergerscan samp: {exc}\n")
    print(f"mergerscan samp: sent to {', '.join(names)}")


def _similar_parser(sub):
    p = sub.add_parser(
        "similar",
        help="the k rows of a run nearest to one object by embedding (faiss index cached under OUT/similar), "
        "with an HTML gallery of their cutouts",
    )
    p.add_argument("out", help="process-catalog OUT directory whose output has an embedding column")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--like", metavar="ID", help="the id (the run's id column) of a row of the run")
    q.add_argument("--like-file", metavar="STAMP", help="a stamp image (the engine's size) not in the catalog")
    p.add_argument("--k", type=positive_int, default=20, help="neighbours to return (default 20)")
    p.add_argument("--column", default="embedding", help="the vector column (default embedding)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached index")
    p.add_argument("--html", help="write the gallery here (default OUT/similar/like-<ID>.html)")
    p.add_argument("--no-html", action="store_true", help="print the neighbours only")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _similar(ap, a):
    import json

    from .run_summary import SummaryError
    from .similar import SimilarError, similar, write_page

    check_output(ap, a, None if a.no_html else a.html, {"--like-file stamp": a.like_file})
    try:
        res = similar(a.out, a.like, like_file=a.like_file, k=a.k, column=a.column, rebuild=a.rebuild)
        page = None if a.no_html else write_page(res, a.html)
    except (SimilarError, FileNotFoundError, SummaryError) as exc:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan similar: error: {exc}\n")
    except OSError as exc:  # a write that failed after the checks (the index cache, the page)
        ap.exit(EXIT_FAILED, f"mergerscan similar: error: {os_error_text(exc)}\n")
    if a.json:
        print(json.dumps(res.to_dict() | {"html": str(page) if page else None}, default=str))
        return
    ix = res.index
    print(
        f"# index: {ix['kind']} {ix['factory']}, {ix['rows']:,} rows of {ix['dim']}-d {ix['column']!r}"
        f"{' (built now)' if res.built_now else ' (cached)'}"
    )
    cols = [c for c in ("rank", "distance", "id", "ra", "dec", "p_merger", "status") if c in res.neighbours]
    print(res.neighbours[cols].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if page:
        print(page)


def _engine_info_parser(sub):
    p = sub.add_parser("engine-info", help="what an engine file says about itself: card, threshold, training domain")
    add_engine_option(p, "engine file (.onnx); default: the packaged engine", required=False)
    p.add_argument("--json", action="store_true", help="the whole card as JSON")
    return p


def engine_info_lines(info) -> list[str]:
    """``mergerscan engine-info``'s text: identity, operating point, training, domain, test metrics."""
    card, dom, t = info.card, info.domain, info.card.training
    sel = dom.selection

    def known(v) -> str:
        return "?" if v is None else str(v)

    lines = [
        f"engine        {info.name}",
        f"file          {info.path}",
        f"sha256        {info.sha256}",
        f"model         {known(card.arch)}, {info.spec.input_size} px input, "
        f"{info.spec.stamp_pixels} px stamps at {info.spec.pixel_scale:g} arcsec/px",
        f"operating     {info.views} view(s): threshold {info.threshold:.4f}, temperature {info.temperature:.4f}",
        f"training      {known(t.labels)}; catalog {known(t.catalog)}, "
        f"{known(t.n_train)} train / {known(t.n_val)} val / {known(t.n_test)} test",
        "domain        " + (sel.describe() if sel else "no training selection recorded"),
    ]
    if sel and sel.reference:
        lines.append(f"              from: {sel.reference}")
    lines.append(
        "image check   "
        + (
            f"{dom.image.score} <= {dom.image.threshold:.4g}"
            if dom.image
            else "none (the engine gives no domain_score)"
        )
    )
    from .engines.representation import describe
    from .pipeline.arguments import EMBEDDINGS_DEFAULT

    lines.append("representation " + describe(card, EMBEDDINGS_DEFAULT))
    m = card.metrics_test.floats() if card.metrics_test else {}
    if m:
        lines.append("test metrics  " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return lines


def _engine_info(ap, a):
    import json

    from .engines import read_engine_info, resolve_engine_path

    try:
        info = read_engine_info(resolve_engine_path(engine_file(ap, a)))
    except (OSError, ValueError) as exc:  # the engine readers' errors name the file already
        path = engine_file(ap, a)
        where = "" if path and path in str(exc) else f"{path}: "
        ap.exit(EXIT_BAD_INPUT, f"mergerscan engine-info: error: {where}{exc}\n")
    if a.json:
        card = info.card.to_dict()
        print(json.dumps({"path": info.path, "sha256": info.sha256, "card": card}, indent=1, sort_keys=True))
    else:
        print("\n".join(engine_info_lines(info)))


def _process_parser(sub) -> None:
    """Listed in ``mergerscan --help``; ``mergerscan process ...`` is parsed by process-catalog's
    own parser (:func:`mergerscan.pipeline.cli.build_parser`)."""
    sub.add_parser("process", help="score every galaxy in a catalog (= process-catalog; see mergerscan process -h)")


VERBS = {
    "operating-curve": lambda ap, a, parsers: parsers["tcli"].curve(ap, a),
    "engine-info": lambda ap, a, parsers: _engine_info(ap, a),
    "similar": lambda ap, a, parsers: _similar(ap, a),
    "calibrate": lambda ap, a, parsers: parsers["tcli"].calibrate(ap, a),
    "samp": lambda ap, a, parsers: _samp(ap, a),
    "report": lambda ap, a, parsers: _report(ap, a),
    "train": lambda ap, a, parsers: parsers["tcli"].train(ap, a, parsers["train"]),
    "finetune": lambda ap, a, parsers: parsers["tcli"].train(ap, a, parsers["finetune"]),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """``mergerscan``'s parser (``process`` is parsed by process-catalog's own) and, for :data:`VERBS`,
    the training room's module and the train / finetune sub-parsers."""
    from .bench import cli as bench_cli
    from .training import cli as tcli

    ap = argparse.ArgumentParser(prog="mergerscan")
    sub = ap.add_subparsers(dest="verb", required=True)
    _process_parser(sub)
    parsers = {"tcli": tcli, "train": tcli.train_parser(sub), "finetune": tcli.finetune_parser(sub)}
    _report_parser(sub)
    _samp_parser(sub)
    tcli.calibrate_parser(sub)
    tcli.curve_parser(sub)
    _engine_info_parser(sub)
    _similar_parser(sub)
    bench_cli.add_parsers(sub)  # bench engine|sources|plan, doctor [--gpu]
    return ap, parsers


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["process"]:
        from .pipeline.cli import main as process_main

        return process_main(argv[1:], prog="mergerscan process")
    from .bench import cli as bench_cli

    ap, parsers = build_parser()
    a = ap.parse_args(argv)
    if a.verb in bench_cli.VERBS:
        bench_cli.run(ap, a)
        return EXIT_OK
    VERBS[a.verb](ap, a, parsers)
    return EXIT_OK


def process_catalog_main(argv=None) -> int:
    from .pipeline.cli import main as pc_main

    return pc_main(argv)


if __name__ == "__main__":
    sys.exit(main())
