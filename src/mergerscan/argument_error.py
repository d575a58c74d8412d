"""The one error type of bad arguments: a one-line template whose ``{name}`` placeholders are
arguments, worded as flags by the command line (``ArgumentError.render(flag_names(parser))``) and
as Python names everywhere else.  A leaf module, so every room can raise it (the catalog readers,
the engines' operating point, the pipeline) and ``mergerscan.api`` needs no translation."""

from __future__ import annotations

from typing import Any

# placeholders that are not field names, in Python terms (the command line has a flag for each)
PYTHON_NAMES = {
    "source": "source_kind/source_location",
    "service_options": "service_options",
    **{k: f"service_options.{k.removeprefix('service_')}" for k in ("service_timeout", "service_retries")},
    "service_concurrency": "service_options.max_concurrency",
    "service_rate": "service_options.max_rate",
    "service_total_timeout": "service_options.total_timeout",
    "plan": "mode='plan'",
    **{f"slurm_{k}": f"slurm.{k}" for k in ("cores", "processes", "lifetime", "walltime")},
}


def literal(value: Any) -> str:
    """``value`` as text inside an :class:`ArgumentError` template (its braces are not names)."""
    return str(value).replace("{", "{{").replace("}", "}}")


class _Names(dict):
    def __missing__(self, name: str) -> str:
        return PYTHON_NAMES.get(name, name)


def _rebuilt(cls: type[ArgumentError], message: str, template: str | None, argument: str | None) -> ArgumentError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.template, exc.argument = template, argument
    return exc


class ArgumentError(ValueError):
    """Bad arguments, in one line.  ``argument`` names the field at fault (None where the message
    comes from elsewhere and is shown as it is).  With an argument, the message is a template:
    ``{name}`` is an argument, worded by :meth:`render`; values in it pass through :func:`literal`."""

    def __init__(self, message: str, argument: str | None = None):
        self.argument = argument
        self.template = message if argument is not None else None
        super().__init__(self.render() if argument is not None else message)

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each ``{name}`` as ``names[name]`` (the command line's flags), else in
        Python terms (the field's name)."""
        if self.template is None:
            return str(self)
        return self.template.format_map(_Names(names or {}))

    def __reduce__(self):
        # template and argument survive a Dask worker -> client round trip, whatever the
        # subclass's __init__ takes (the CLI renders a task's error with its flags too)
        return _rebuilt, (type(self), str(self), self.template, self.argument)
