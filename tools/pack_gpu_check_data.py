"""Copy 64 real SDSS stamps (JPEGs, ~0.5 MB in all) into a git-ignored folder that travels with the
source tree to a GPU machine for ``mergerscan doctor --gpu`` (the device tool carries ignored
paths named in its ``carry`` list, 64 MiB at most).  A development tool: the stamps come from the
shared data (``$MERGERSCAN_SHARED/data``, default ``<repo>/../shared/data``).

    .venv/bin/python tools/pack_gpu_check_data.py              # -> .gpu-check-data/
    .venv/bin/python tools/pack_gpu_check_data.py --out DIR --n 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MERGERSCAN_SHARED", REPO.parent / "shared")) / "data" / "sdss-gz-mergers"


def pack(out: Path, n: int = 64, source: Path = SHARED) -> list[str]:
    images = sorted((source / "images").glob("*.jpg"))
    if len(images) < n:
        raise SystemExit(f"pack_gpu_check_data: need {n} JPEGs in {source / 'images'}, found {len(images)}")
    # every k-th image: mergers (M*) and non-interacting galaxies alike, not the first n of one kind
    step = len(images) // n
    chosen = images[::step][:n]
    out.mkdir(parents=True, exist_ok=True)
    for f in chosen:
        shutil.copyfile(f, out / f.name)
    (out / "manifest.json").write_text(json.dumps({"source": str(source), "files": [f.name for f in chosen]}, indent=1))
    return [f.name for f in chosen]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / ".gpu-check-data"))
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args(argv)
    names = pack(Path(a.out), a.n)
    size = sum((Path(a.out) / f).stat().st_size for f in names)
    print(f"pack_gpu_check_data: {len(names)} stamps, {size / 2**20:.2f} MiB -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
