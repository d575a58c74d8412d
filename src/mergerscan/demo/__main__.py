"""``python -m mergerscan.demo OUT_DIR``: write the demo field and print the paths written."""

from __future__ import annotations

import sys

from .field import make_demo_field


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m mergerscan.demo OUT_DIR", file=sys.stderr)
        return 2
    paths = make_demo_field(argv[0])
    for p in paths["frames"] + [paths["catalog"]]:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
