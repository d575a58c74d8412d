"""Per-epoch training checkpoints that load without unpickling code.

A checkpoint is one ``torch.save`` of a dict holding only tensors and plain types (str, int,
float, bool, None, lists, dicts): model and optimizer state, the phase/epoch reached, the
schedule's step, the phase's best-validation weights and early-stopping counter, the history,
and every random state the run draws from (torch's CPU generator - dropout -, numpy's and
Python's).  It is read with ``torch.load(weights_only=True)``, which refuses anything else, so
a checkpoint from elsewhere cannot run code.  It is written atomically: a kill leaves the
previous checkpoint or the new one, never a torn file.

Batch order and augmentation need no saved generator: they are functions of the seed, the
phase and the epoch (:mod:`.loader`).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_json

FORMAT = "mergerscan-train-checkpoint/1"
CHECKPOINT = "checkpoint.pt"
CONFIG = "train_config.json"
# options that change how a run executes but not what it computes: a resume may change them
RUNTIME_OPTIONS = ("cache", "command", "export", "prefetch", "stop_after_epochs", "threads", "resume")


class ResumeError(ValueError):
    """A run directory cannot be resumed with this command; the message says why in one line."""


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT} | state, tmp)
    return path


def load_checkpoint(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ResumeError(
            f"--resume {run_dir}: no {CHECKPOINT} there (the run stopped before its first "
            "epoch ended, or this is not a training run directory)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn/foreign file: one line, never a traceback
        raise ResumeError(
            f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{path}: not a {FORMAT} checkpoint")
    return state


def config_of(args_dict: dict) -> dict:
    """The options that determine a run's result (catalog as an absolute path)."""
    cfg = {k: v for k, v in args_dict.items() if k not in RUNTIME_OPTIONS and k != "out"}
    cfg["catalog"] = str(Path(cfg["catalog"]).resolve())
    return cfg


def write_config(run_dir: str | Path, args_dict: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, args_dict, indent=1, sort_keys=True)


def read_config(run_dir: str | Path) -> dict:
    """The run's configuration, from its checkpoint (the JSON copy is for people to read)."""
    return dict(load_checkpoint(run_dir)["args"])


def resume_arguments(run_dir: str | Path, given: dict) -> dict:
    """TrainArguments fields for resuming ``run_dir``: its own configuration, plus the runtime
    options in ``given``.  Any other option in ``given`` (the ones typed on the command line)
    must equal the run's, else :class:`ResumeError` naming the first that differs."""
    saved = read_config(run_dir)
    saved.setdefault("split_seed", saved.get("seed", 0))  # runs begun when --seed also set the split
    if given.get("out") is not None and Path(given["out"]).resolve() != Path(run_dir).resolve():
        raise ResumeError(f"--out {given['out']} differs from --resume {run_dir}; give only --resume")
    ref = config_of(saved)
    for key, value in given.items():
        if key in RUNTIME_OPTIONS or key == "out" or value is None:
            continue
        mine = str(Path(value).resolve()) if key == "catalog" else value
        if key in ref and mine != ref[key]:
            raise ResumeError(
                f"--{key.replace('_', '-')} {value} differs from the run's {saved[key]!r} "
                f"(in {Path(run_dir) / CONFIG}); a resume continues that run's configuration "
                "- start a new --out to change it"
            )
    out = dict(saved)
    out.pop("stop_after_epochs", None)  # a budget for one invocation, never inherited
    out["catalog"] = ref["catalog"]
    out["out"] = str(run_dir)
    for key in RUNTIME_OPTIONS:
        if key in given and given[key] is not None and key != "resume":
            out[key] = given[key]
    return out
