"""``mergerscan bench sources``: image-source speed, rows -> uint8 stamps, per source.

* ``stamps``: a folder of stamp files (``--images``), rows named after its files;
* ``service``: the same files served by an HTTP server this command starts on 127.0.0.1 (the
  client's cost: request, stream, decode, checks; no network in the figure);
* ``frames``: a folder of frames (``--frames``), ``n`` positions drawn uniformly in its fields,
  in catalog (not sky) order; one fetch that reads the frames, then the same rows again with
  every frame in memory (the cutting alone).

Each fetch is timed on the wall clock and the process CPU clock, and its status counts kept."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from .common import machine, rate, timed_objects

STAMP_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class SourcesBench:
    images: str | None = None  # stamp folder: the stamps and service sources
    frames: str | None = None  # frame folder: the frames source
    n: int = 256
    threads: int = 2  # decoding threads (stamps), requests in flight (service), bz2 threads (frames)
    service: bool = True


def timed_fetch(src, rows: pd.DataFrame) -> dict:
    row, (_, status) = timed_objects(lambda: src.fetch(rows), len(rows))
    row["objects_per_cpu_s"] = rate(len(rows), row["cpu_s"])
    return row | {"status_counts": dict(Counter(str(s) for s in status))}


def stamp_rows(folder: Path, n: int) -> pd.DataFrame:
    """``n`` rows (files repeated when fewer) with made-up distinct positions for the service."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in STAMP_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ValueError(f"--images {folder}: no .jpg or .png stamps there")
    pick = [files[i % len(files)] for i in range(n)]
    return pd.DataFrame(
        {
            "id": [p.stem for p in pick],
            "ra": 150.0 + 1e-3 * np.arange(n),
            "dec": np.full(n, 2.0),
            "file": [str(p) for p in pick],
        }
    )


class _Stamps(BaseHTTPRequestHandler):
    """GET /cutout?ra=..&dec=..: the stamp file of the row at that position."""

    def do_GET(self):
        q = parse_qs(urlsplit(self.path).query)
        key = (round(float(q["ra"][0]), 6), round(float(q["dec"][0]), 6))
        body = self.server.files.get(key)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: the figures are the output
        pass


@contextmanager
def local_service(rows: pd.DataFrame):
    """An HTTP cutout service on 127.0.0.1 serving each row's file at its position; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stamps)
    httpd.daemon_threads = True
    httpd.files = {  # type: ignore[attr-defined]
        (round(r.ra, 6), round(r.dec, 6)): Path(r.file).read_bytes() for r in rows.itertuples()
    }
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cutout"
    finally:
        httpd.shutdown()
        httpd.server_close()


def bench_stamps(cfg: SourcesBench, spec) -> dict:
    from ..cutouts.registry import SourceConfig, open_source

    folder = Path(cfg.images or "")
    rows = stamp_rows(folder, cfg.n)
    out = {}
    src = open_source(SourceConfig("stamps", str(folder), (("threads", cfg.threads),)), spec)
    try:
        out["stamps"] = timed_fetch(src, rows[["id", "ra", "dec"]]) | {"threads": cfg.threads}
    finally:
        src.close()
    if cfg.service:
        with local_service(rows) as url:
            opts = (("max_concurrency", cfg.threads), ("retries", 0))
            src = open_source(SourceConfig("service", url, opts), spec)
            try:
                out["service"] = timed_fetch(src, rows[["id", "ra", "dec"]]) | {"max_concurrency": cfg.threads}
            finally:
                src.close()
    return out


def frame_rows(src, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` positions uniform in the fields' reference frames, shuffled (catalog order)."""
    rng = np.random.default_rng(seed)
    keys = src.field_keys
    if not keys:
        raise ValueError(f"--frames {src.directory}: no readable frames there")
    ra, dec = np.empty(n), np.empty(n)
    for i, fi in enumerate(rng.integers(0, len(keys), n)):
        f = src.field(int(fi))
        h, w = f.ref_shape
        ra[i], dec[i] = f.ref_wcs.all_pix2world([[rng.uniform(0, w - 1), rng.uniform(0, h - 1)]], 0)[0]
    return pd.DataFrame({"id": [f"b{i}" for i in range(n)], "ra": ra, "dec": dec})


def bench_frames(cfg: SourcesBench, spec) -> dict:
    from ..cutouts.frames import FrameSource

    src = FrameSource(cfg.frames, spec, threads=cfg.threads, max_fields=64, index_cache=None)
    try:
        rows = frame_rows(src, cfg.n)
        first = timed_fetch(src, rows)
        cached = timed_fetch(src, rows)
    finally:
        src.close()
    return {"frames": first | {"fields": len(src.field_keys), "threads": cfg.threads, "frames_in_memory": cached}}


def run_sources_bench(cfg: SourcesBench) -> dict:
    """The document ``mergerscan bench sources`` writes."""
    from ..cutouts.preprocess import PreprocessSpec

    if not (cfg.images or cfg.frames):
        raise ValueError("give --images DIR (stamps and service) and/or --frames DIR (frames)")
    if cfg.n < 1 or cfg.threads < 1:
        raise ValueError(f"--n {cfg.n} / --threads {cfg.threads}: at least 1")
    if cfg.frames and not Path(cfg.frames).is_dir():
        raise ValueError(f"--frames {cfg.frames}: not a folder")
    spec = PreprocessSpec()
    doc: dict = {"bench": "sources", "machine": machine(), "sources": {}}
    if cfg.images:
        doc["sources"] |= bench_stamps(cfg, spec)
    if cfg.frames:
        doc["sources"] |= bench_frames(cfg, spec)
    for name, r in doc["sources"].items():
        print(f"bench sources: {name}: {r['objects_per_s']} objects/s ({r['status_counts']})", file=sys.stderr)
    return doc
