"""The study's experiments.  E1: random init + mini-batch SGD.  E2: ImageNet weights; phase 1
trains the added top with Adam on a frozen base, phase 2 unfreezes the last conv blocks and
fine-tunes with SGD + momentum at a small learning rate.  Ends by evaluating on the test split
(threshold and temperature fitted on validation) and exporting an engine file.

Every epoch ends with a weights-only checkpoint (:mod:`.checkpoint`); ``--resume OUT`` continues
a stopped run to the result an uninterrupted run gives.  Batches are prepared in a loader thread
(:mod:`.loader`) while the model computes; on CPUs with native bf16 (AVX512-BF16 / AMX) the
forward pass runs under bf16 autocast with channels_last tensors (``--bf16 auto|on|off``).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..atomic import atomic_path, atomic_write_json, atomic_write_text
from ..cutouts.preprocess import PreprocessSpec, prepare_batch
from ..engines.base import sigmoid
from ..models import imagenet_weights_path, trainable_tail
from . import checkpoint as ckpt
from . import evaluate as ev
from . import survey
from .arguments import TrainArguments
from .data import LabelledSet, build_labelled_set
from .export import export_onnx, parity, quantize_int8
from .hardware import cpu_flags, cpu_model, use_bf16
from .loader import BatchLoader, epoch_batches
from .source import card_entries, data_options, initial_network, training_spec


class StoppedEarly(Exception):
    """--stop-after-epochs reached: the checkpoint is written, the run can be resumed."""


@dataclass
class TrainContext:
    """One training run as every step sees it: its arguments and data, the network, and the log
    and checkpoint it writes.  ``epochs_run`` counts the epochs this process has run."""

    args: TrainArguments
    out: Path
    data: LabelledSet
    spec: PreprocessSpec
    bf16: bool
    run_args: dict  # the arguments as train_config.json and the checkpoint record them
    history: list = field(default_factory=list)
    t_start: float = 0.0
    seconds_before: float = 0.0  # training time of the run before this process resumed it
    net: Any = None
    phases: list[tuple[str, int]] = field(default_factory=list)
    pos_weight: Any = None  # torch scalar: non-mergers / mergers in the training split
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # per-row training targets
    distilled: dict | None = None  # --distill: the teacher's record
    epochs_run: int = 0

    @property
    def labels(self) -> np.ndarray:
        return self.data.table["label"].to_numpy()

    @property
    def tr(self) -> np.ndarray:
        return self.data.indices("train")

    @property
    def va(self) -> np.ndarray:
        return self.data.indices("val")

    @property
    def te(self) -> np.ndarray:
        return self.data.indices("test")

    def log(self, rec: dict) -> None:
        """Append ``rec`` to the history (printed, and history.json rewritten)."""
        self.history.append(rec)
        print(json.dumps(rec), flush=True)
        atomic_write_json(self.out / "history.json", self.history, indent=1)

    def elapsed(self) -> float:
        """Training seconds of the whole run, this process's included."""
        return self.seconds_before + time.time() - self.t_start

    def save(self, phase: int, st: dict, opt, finished: bool = False) -> None:
        """The checkpoint after an epoch (or, ``finished``, after the last phase)."""
        ckpt.save_checkpoint(
            self.out,
            {
                "args": self.run_args,
                "data_hash": self.data.data_hash,
                "bf16": self.bf16,
                "phase": phase,
                "finished": finished,
                "phase_state": st,
                "model": self.net.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else {},
                "rng": ckpt.rng_state(),
                "history": self.history,
                "train_seconds": self.elapsed(),
            },
        )


# ----------------------------------------------------------------- one step, prediction, --ema
def set_bn_eval_where_frozen(net) -> None:
    """Batch norms whose parameters are frozen keep their running statistics (eval mode)."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            m.train(not frozen and net.training)


def predict_logits(net, stamps, spec, batch=64, bf16=False) -> np.ndarray:
    """Logits of uint8 stamps, prepared as the engines prepare them, in batches (eval mode)."""
    net.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(stamps), batch):
            x = torch.from_numpy(prepare_batch(np.asarray(stamps[i : i + batch]), spec))
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().numpy())
    return np.concatenate(out)


def train_step(net, optimizer, x, y, pos_weight, bf16: bool = False) -> float:
    """One optimizer step on a prepared batch; the forward pass under bf16 autocast if asked
    (weights, gradients and the loss stay fp32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z = net(x)
    loss = F.binary_cross_entropy_with_logits(z.float(), y, pos_weight=pos_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


# ``--ema``: an exponential moving average of the weights, kept beside the live ones.  The average
# lives in the phase state (so it is in every checkpoint and --resume stays bit-identical);
# validation, the best-epoch weights and the exported engine use it.
def clone_state(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def kept_state(net, st: dict) -> dict:
    """The weights the run validates and keeps: the moving average under --ema, else the live ones."""
    return st["ema"] if st.get("ema") is not None else net.state_dict()


def update_ema(net, st: dict, decay: float) -> None:
    """The weights' moving average after the phase's optimizer step ``st['step']`` (BN running
    statistics included).  The decay ramps up as step / (9 + step) so the average does not stay
    anchored to the phase's first weights."""
    state = net.state_dict()
    if st["ema"] is None:
        st["ema"] = clone_state(state)
    d = min(decay, st["step"] / (9 + st["step"]))
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point():
                st["ema"][k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                st["ema"][k].copy_(v)


def val_logits(ctx: TrainContext, st: dict) -> np.ndarray:
    """Validation logits of :func:`kept_state` (the live weights are put back after)."""
    stamps = ctx.data.stamps[ctx.va]
    if st.get("ema") is None:
        return predict_logits(ctx.net, stamps, ctx.spec, bf16=ctx.bf16)
    live = clone_state(ctx.net.state_dict())
    ctx.net.load_state_dict(st["ema"])
    try:
        return predict_logits(ctx.net, stamps, ctx.spec, bf16=ctx.bf16)
    finally:
        ctx.net.load_state_dict(live)


# ----------------------------------------------------------------- phases and epochs
def _phases(args) -> list[tuple[str, int]]:
    if args.experiment == "e1":
        return [("e1-sgd", args.epochs)]
    return [("e2-top-adam", args.epochs_top), ("e2-finetune-sgd", args.epochs)]


def _setup_phase(net, args, phase: int):
    """The phase's trainable parameters and optimizer (plus a history record, or None)."""
    if args.experiment == "e1":
        return torch.optim.SGD(
            net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True
        ), None
    if phase == 0:
        trainable_tail(net, 0)
        return torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr_top), None
    unfrozen = trainable_tail(net, args.unfreeze_blocks)
    return torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad],
        lr=args.lr_finetune,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    ), {"unfrozen_blocks": unfrozen}


def _fresh_phase_state() -> dict:
    return {
        "epoch": 0,
        "step": 0,
        "done": False,
        "best_auc": None,
        "best_epoch": 0,
        "best_model": None,
        "best_val_loss": None,
        "bad_epochs": 0,
        "ema": None,  # --ema: the moving average of the weights (a state dict)
    }


def _train_epoch(ctx: TrainContext, pi: int, opt, st: dict, base_lrs: list[float], total: int) -> list[float]:
    """One epoch's optimizer steps (cosine schedule per step); the batch losses."""
    args, net = ctx.args, ctx.net
    net.train()
    set_bn_eval_where_frozen(net)
    loader = BatchLoader(
        ctx.data.stamps,
        ctx.targets,
        epoch_batches(ctx.tr, args.batch_size, args.seed, pi, st["epoch"]),
        ctx.spec,
        args.seed,
        pi,
        st["epoch"],
        prefetch=args.prefetch,
        channels_last=ctx.bf16,
        threaded=args.prefetch > 0,
        augmentation=args.augment,
    )
    losses = []
    for x, y in loader:
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * st["step"] / total))
        losses.append(train_step(net, opt, x, y, ctx.pos_weight, ctx.bf16))
        st["step"] += 1
        if args.ema:
            update_ema(net, st, args.ema)  # after the step count: its ramp reads it
    return losses


def _validate(ctx: TrainContext, st: dict) -> tuple[float, float]:
    """(ROC AUC, weighted BCE loss) of the kept weights on the validation split."""
    zv, yv = val_logits(ctx, st), ctx.labels[ctx.va]
    loss = F.binary_cross_entropy_with_logits(
        torch.from_numpy(zv), torch.from_numpy(yv.astype(np.float32)), pos_weight=ctx.pos_weight
    )
    return ev.roc_auc(yv, zv), float(loss)


def _end_epoch(ctx: TrainContext, name: str, st: dict, epochs: int, auc: float, vloss: float) -> None:
    """Keep the best-AUC weights, count epochs without a better validation loss, stop early on
    --patience."""
    epoch = st["epoch"]
    if st["best_auc"] is None or auc > st["best_auc"]:
        st.update(best_auc=auc, best_epoch=epoch + 1, best_model=clone_state(kept_state(ctx.net, st)))
    if st["best_val_loss"] is None or vloss < st["best_val_loss"]:
        st.update(best_val_loss=vloss, bad_epochs=0)
    else:
        st["bad_epochs"] += 1
    st["epoch"] = epoch + 1
    patience = ctx.args.patience
    if patience and st["bad_epochs"] >= patience and st["epoch"] < epochs:
        st["done"] = True
        ctx.log(
            {
                "phase": name,
                "early_stop": f"val loss not improved for {patience} epochs",
                "after_epoch": epoch + 1,
                "best_epoch": st["best_epoch"],
            }
        )


def _run_phase(ctx: TrainContext, pi: int, epochs: int, opt, st: dict) -> None:
    """Epochs ``st['epoch']..epochs-1`` of phase ``pi``; a checkpoint after each."""
    args, name = ctx.args, ctx.phases[pi][0]
    total = max(1, epochs * math.ceil(len(ctx.tr) / args.batch_size))
    lr0 = {"e2-top-adam": args.lr_top, "e2-finetune-sgd": args.lr_finetune}.get(name, args.lr)
    base_lrs = [lr0 for _ in opt.param_groups]
    while not st["done"] and st["epoch"] < epochs:
        if args.stop_after_epochs and ctx.epochs_run >= args.stop_after_epochs:
            raise StoppedEarly
        t0 = time.time()
        losses = _train_epoch(ctx, pi, opt, st, base_lrs, total)
        auc, vloss = _validate(ctx, st)
        seconds = time.time() - t0
        ctx.log(
            {
                "phase": name,
                "epoch": st["epoch"] + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": vloss,
                "val_roc_auc": auc,
                "seconds": round(seconds, 1),
                "img_per_s": round(len(ctx.tr) / seconds, 1),
            }
        )
        _end_epoch(ctx, name, st, epochs, auc, vloss)
        ctx.epochs_run += 1
        ctx.save(pi, st, opt)


def _begin_phase(ctx: TrainContext, pi: int, ck: dict | None) -> tuple[Any, dict]:
    """The phase's optimizer and state: fresh, or (``ck``) as the checkpoint left them."""
    opt, info = _setup_phase(ctx.net, ctx.args, pi)
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        ckpt.set_rng_state(ck["rng"])
        return opt, dict(ck["phase_state"])
    if info:
        ctx.log(info)
    return opt, _fresh_phase_state()


def _train_phases(ctx: TrainContext, ck: dict | None) -> None:
    """Every phase not finished yet; each ends on its best-AUC weights."""
    start = len(ctx.phases) if ck and ck["finished"] else (ck["phase"] if ck else 0)
    for pi, (_, epochs) in enumerate(ctx.phases):
        if pi < start:
            continue
        opt, st = _begin_phase(ctx, pi, ck if (ck and pi == start) else None)
        _run_phase(ctx, pi, epochs, opt, st)
        if st["best_model"] is not None:
            ctx.net.load_state_dict(st["best_model"])


# ----------------------------------------------------------------- a run
def run(args: TrainArguments, resume: bool = False) -> dict:
    """Train, evaluate and export.  ``resume=True`` continues the run in ``args.out`` from its
    checkpoint (a finished run is left as it is); without it, an ``args.out`` that already holds a
    checkpoint is refused rather than overwritten."""
    t_start, out = time.time(), Path(args.out)
    ck = _checkpoint(out, resume)
    if ck and ck["finished"] and (out / "metrics.json").is_file():
        print(f"mergerscan train: {out} has finished; nothing to resume", flush=True)
        return json.loads((out / "metrics.json").read_text())
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    ctx = _context(args, out, ck, t_start)
    _set_targets(ctx, ck)
    _set_network(ctx, ck)
    try:
        _train_phases(ctx, ck)
    except StoppedEarly:
        print(
            f"mergerscan train: stopped after {ctx.epochs_run} epoch(s) as asked; continue with "
            f"mergerscan train --resume {out}",
            flush=True,
        )
        return {"stopped": True, "epochs_run": ctx.epochs_run}
    return _finish(ctx, _close_training(ctx, ck))


def _checkpoint(out: Path, resume: bool) -> dict | None:
    """The checkpoint a ``--resume`` continues (None: a new run, refused where ``out`` holds one)."""
    if resume:
        return ckpt.load_checkpoint(out)
    if (out / ckpt.CHECKPOINT).is_file():
        raise ckpt.ResumeError(
            f"--out {out} already holds a training run ({ckpt.CHECKPOINT}); continue it with "
            f"--resume {out} or choose another --out"
        )
    return None


def _context(args: TrainArguments, out: Path, ck: dict | None, t_start: float) -> TrainContext:
    """The labelled set (the one the checkpoint was made on), the spec, and the run's first record."""
    if args.init == "imagenet":  # a missing weights file fails before minutes of image decoding
        imagenet_weights_path(args.arch, args.weights)
    data = build_labelled_set(args.catalog, **data_options(args))
    if ck and ck["data_hash"] != data.data_hash:
        raise ckpt.ResumeError(
            f"--resume {out}: the labelled set of {args.catalog} changed since the run began "
            f"(data hash {data.data_hash}, the run's {ck['data_hash']})"
        )
    out.mkdir(parents=True, exist_ok=True)  # once the labelled set is read: a bad catalog leaves no folder
    ctx = TrainContext(
        args=args,
        out=out,
        data=data,
        spec=training_spec(args, data.stamps.shape[1]),
        bf16=bool(ck["bf16"]) if ck else use_bf16(args.bf16),  # a resume keeps the precision it began with
        run_args=asdict(args) | {"catalog": str(Path(args.catalog).resolve())},  # resumable from any cwd
        history=list(ck["history"]) if ck else [],
        t_start=t_start,
        seconds_before=float(ck["train_seconds"]) if ck else 0.0,
    )
    _log_start(ctx, ck)
    return ctx


def _log_start(ctx: TrainContext, ck: dict | None) -> None:
    if ck:
        resumed = {"phase": ck["phase"], "epoch": ck["phase_state"]["epoch"]}
        ctx.log({"resumed": resumed, "command": " ".join(shlex.quote(a) for a in sys.argv)})
        return
    ckpt.write_config(ctx.out, ctx.run_args)
    labels, tr = ctx.labels, ctx.tr
    ctx.log(
        {
            "data_hash": ctx.data.data_hash,
            "n_train": len(tr),
            "n_val": len(ctx.va),
            "n_test": len(ctx.te),
            "train_mergers": int(labels[tr].sum()),
            "precision": _precision_name(ctx.bf16),
            "cpu": cpu_model(),
            "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f),
        }
    )


def _set_targets(ctx: TrainContext, ck: dict | None) -> None:
    """The loss's positive weight and the per-row targets (``--distill``: mixed with a teacher's)."""
    labels, tr, args = ctx.labels, ctx.tr, ctx.args
    ctx.pos_weight = torch.tensor(float((labels[tr] == 0).sum()) / max(1, labels[tr].sum()))
    ctx.targets = labels.astype(np.float32)
    if args.distill:
        from .distill import soft_targets

        ctx.targets, ctx.distilled = soft_targets(
            args.distill, args.distill_weight, ctx.data, tr, ctx.out, args.threads
        )
        if not ck:
            ctx.log({"distill": ctx.distilled})


def _set_network(ctx: TrainContext, ck: dict | None) -> None:
    net = initial_network(ctx.args)
    if ctx.bf16:
        net = net.to(memory_format=torch.channels_last)
    ctx.phases = _phases(ctx.args)
    if ck:
        net.load_state_dict(ck["model"])
    ctx.net = net


def _close_training(ctx: TrainContext, ck: dict | None) -> float:
    """The finished checkpoint (once) and the run's training seconds; the net leaves channels_last."""
    for p in ctx.net.parameters():
        p.requires_grad = True
    finished_before = bool(ck and ck["finished"])
    if not finished_before:
        ctx.save(len(ctx.phases), _fresh_phase_state(), None, finished=True)
    train_seconds = ctx.seconds_before if finished_before else ctx.elapsed()
    ctx.net = ctx.net.to(memory_format=torch.contiguous_format)
    return train_seconds


def _precision_name(bf16: bool) -> str:
    return "bf16 autocast, channels_last" if bf16 else "fp32"


# ----------------------------------------------------------------- evaluation, card, export
def _finish(ctx: TrainContext, train_seconds: float) -> dict:
    """Calibrate and choose the threshold on validation, evaluate once on test, export the engine."""
    args, out, labels, va, te = ctx.args, ctx.out, ctx.labels, ctx.va, ctx.te
    with atomic_path(out / "model.pt") as tmp:
        torch.save(ctx.net.state_dict(), tmp)  # reload with torch.load(weights_only=True)
    zv, zt = (
        predict_logits(ctx.net, ctx.data.stamps[va], ctx.spec),
        predict_logits(ctx.net, ctx.data.stamps[te], ctx.spec),
    )
    cal = ev.calibrate_and_summarize(labels[va], zv, labels[te], zt)
    card = _card(ctx, cal, train_seconds)
    if args.export:
        export_onnx(ctx.net, ctx.spec, card, out / "model.onnx")
        probe = prepare_batch(np.asarray(ctx.data.stamps[te[:32]]), ctx.spec)
        card["onnx_parity_max_abs"] = parity(ctx.net, out / "model.onnx", probe)
    result = {"args": asdict(args), "card": card, "test": cal.test, "val": cal.val}
    result |= survey.report_entries(ctx.data.table.iloc[te], labels[va], cal.p_val, cal.p_test, cal.threshold)
    if args.int8 and args.export:
        result |= _int8_check(ctx, cal)
    _write_outputs(ctx, card, cal, zt, result, train_seconds)
    return result


def _test_metrics(m_test: dict) -> dict:
    """The card's ``metrics_test``: the headline test metrics at the validation threshold."""
    return {k: m_test[k] for k in ("roc_auc", "pr_auc", "precision_at_2pct", "ece", "threshold")} | {
        "macro_f1": m_test["macro"]["f1"],
        "merger_f1": m_test["merger"]["f1"],
        "merger_precision": m_test["merger"]["precision"],
        "merger_recall": m_test["merger"]["recall"],
    }


def _card(ctx: TrainContext, cal, train_seconds: float) -> dict:
    """The new engine's card (its JSON): calibration, validation curve, provenance, test metrics."""
    args, data = ctx.args, ctx.data
    card = (
        survey.val_curve(ctx.labels[ctx.va], cal.p_val, data.data_hash, args.split_seed)
        | {
            "name": args.name or f"{args.arch}-{args.experiment}-{args.input_size}px",
            "arch": args.arch,
            "experiment": args.experiment,
            "init": args.init,
            "input_size": args.input_size,
            "threshold": cal.threshold,
            "temperature": cal.temperature,
            "data_hash": data.data_hash,
            "catalog": Path(args.catalog).name,
            "split": f'object-disjoint groups (stamps within 100"), split seed {args.split_seed}, 70/15/15',
            "n_train": len(ctx.tr),
            "n_val": len(ctx.va),
            "n_test": len(ctx.te),
            "metrics_test": _test_metrics(cal.test),
            "train_seconds": round(train_seconds, 1),
            "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "training_precision": _precision_name(ctx.bf16),
            "augmentation": args.augment,
            "mergerscan_version": __version__,
            "command": args.command,
        }
        | card_entries(args, data)
    )
    if ctx.distilled:
        card["distilled_from"] = ctx.distilled
    if args.ema:
        card["weights_kept"] = f"exponential moving average of the weights, decay {args.ema} per step"
    return card


def _int8_check(ctx: TrainContext, cal) -> dict:
    """``--int8``: the quantised engine (model-int8.onnx) and its test metrics beside the float one's."""
    stamps, spec, te = ctx.data.stamps, ctx.spec, ctx.te
    calib = prepare_batch(np.asarray(stamps[ctx.tr[:256]]), spec)
    q = quantize_int8(ctx.out / "model.onnx", calib, ctx.out / "model-int8.onnx")
    from ..engines.onnxruntime import OnnxRuntimeEngine

    zq = OnnxRuntimeEngine(q, threads=ctx.args.threads).logits(
        np.concatenate([prepare_batch(np.asarray(stamps[te[i : i + 64]]), spec) for i in range(0, len(te), 64)])
    )
    mq = ev.summarize(ctx.labels[te], sigmoid(zq / cal.temperature), cal.threshold)
    return {"int8_test": mq, "int8_delta_macro_f1": mq["macro"]["f1"] - cal.test["macro"]["f1"]}


def _write_outputs(ctx: TrainContext, card: dict, cal, zt: np.ndarray, result: dict, train_seconds: float) -> None:
    """card.json, the plots, test_scores.npz, table1.md and, last (it marks the run finished), metrics.json."""
    out, te, name, m_test = ctx.out, ctx.te, card["name"], cal.test
    atomic_write_json(out / "card.json", card, indent=1)
    ev.plot_all(ctx.labels[te], cal.p_test, m_test, out, title=name)
    with atomic_path(out / "test_scores.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, id=ctx.data.table["id"].to_numpy()[te].astype(str), y=ctx.labels[te], p=cal.p_test, logit=zt)
    atomic_write_text(
        out / "table1.md",
        f"## {name} (test split, threshold {cal.threshold:.3f} from val)\n\n" + ev.table1(m_test) + "\n",
    )
    atomic_write_json(out / "metrics.json", result, indent=1, default=float)
    print(ev.table1(m_test))
    print(
        json.dumps(
            {
                "macro_f1": m_test["macro"]["f1"],
                "roc_auc": m_test["roc_auc"],
                "pr_auc": m_test["pr_auc"],
                "precision_at_2pct": m_test["precision_at_2pct"],
                "train_seconds": round(train_seconds),
            }
        )
    )
