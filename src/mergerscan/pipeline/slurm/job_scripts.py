"""The SLURM job scripts: templates shipped as package data (``templates/``), rendered as text.

``job_script(name, ...)`` is the text ``sbatch`` gets, with ``#SBATCH`` directives replaced, added
or removed and the Python interpreter baked in; the tests check it as text (as dask-jobqueue's
``job_script()`` is checked).  The repository's top-level ``slurm/`` holds the same files, ready
to submit from a checkout (a test keeps the two identical).
"""

from __future__ import annotations

import re
import stat
from importlib.resources import files
from pathlib import Path

TEMPLATES = ("process-catalog.sbatch", "plan.sbatch", "shard.sbatch", "finalize.sbatch", "submit-array.sh")


def template_text(name: str, templates: str | Path | None = None) -> str:
    """The unrendered text of template ``name`` (from the package, or from the directory ``templates``)."""
    if name not in TEMPLATES:
        raise ValueError(f"no SLURM template {name!r} (templates: {', '.join(TEMPLATES)})")
    if templates is not None:
        return (Path(templates) / name).read_text()
    return files("mergerscan.pipeline.slurm").joinpath("templates").joinpath(name).read_text()


_DIRECTIVE = re.compile(r"^#SBATCH\s+(--?[\w-]+)(?:[=\s]\s*(.*?))?\s*(#.*)?$")


def _directive_line(key: str, value) -> str:
    key = key.lstrip("-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"


def render_text(text: str, python: str | None = None, directives: dict | None = None) -> str:
    """A template with ``#SBATCH`` directives replaced, added (``key: value``) or removed
    (``key: None``/``False``), and the Python interpreter baked in as the default."""
    lines = text.splitlines()
    directives = {k.lstrip("-"): v for k, v in (directives or {}).items()}
    seen, out, last = set(), [], None
    for line in lines:
        m = _DIRECTIVE.match(line)
        if m and m.group(1).lstrip("-") in directives:
            key = m.group(1).lstrip("-")
            seen.add(key)
            v = directives[key]
            if v is None or v is False:
                continue
            line = _directive_line(key, v)
        if python and line.startswith("PYTHON=${MERGERSCAN_PYTHON:-"):
            line = f"PYTHON=${{MERGERSCAN_PYTHON:-{python}}}"
        out.append(line)
        if line.startswith("#SBATCH"):
            last = len(out)
    extra = [_directive_line(k, v) for k, v in directives.items() if k not in seen and v not in (None, False)]
    if extra:
        at = last if last is not None else 1
        out[at:at] = extra
    return "\n".join(out) + "\n"


def job_script(
    name: str, python: str | None = None, directives: dict | None = None, templates: str | Path | None = None
) -> str:
    """Template ``name`` rendered (:func:`render_text`)."""
    return render_text(template_text(name, templates), python=python, directives=directives)


def render_all(
    dest: str | Path,
    python: str | None = None,
    directives: dict | None = None,
    per_template: dict | None = None,
    templates: str | Path | None = None,
) -> dict:
    """Write every template into ``dest`` (rendered); returns {name: path}.  ``directives`` apply to
    every job script, ``per_template[name]`` on top (e.g. the shard job's ``gres``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in TEMPLATES:
        d = dict(directives or {}) if name.endswith(".sbatch") else {}
        d.update((per_template or {}).get(name, {}))
        p = dest / name
        p.write_text(job_script(name, python=python, directives=d, templates=templates))
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        paths[name] = p
    return paths
