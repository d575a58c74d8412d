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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..atomic import atomic_path, atomic_write_json, atomic_write_text
from ..cutouts.preprocess import prepare_batch
from ..models import imagenet_weights_path
from . import checkpoint as ckpt
from . import evaluate as ev
from . import survey
from .arguments import TrainArguments
from .data import build_labelled_set
from .ema import clone_state, kept_state, update_ema, val_logits
from .export import export_onnx, parity, quantize_int8
from .hardware import cpu_flags, cpu_model, use_bf16
from .loader import BatchLoader, epoch_batches
from .models import trainable_tail
from .source import card_entries, data_options, initial_network, training_spec
from .steps import _predict_logits, _set_bn_eval_where_frozen, train_step


class StoppedEarly(Exception):
    """--stop-after-epochs reached: the checkpoint is written, the run can be resumed."""


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


def _run_phase(ctx, pi: int, epochs: int, opt, st: dict) -> None:
    """Epochs ``st['epoch']..epochs-1`` of phase ``pi``; a checkpoint after each."""
    args, net, name = ctx["args"], ctx["net"], ctx["phases"][pi][0]
    tr, va, labels, data, spec = ctx["tr"], ctx["va"], ctx["labels"], ctx["data"], ctx["spec"]
    steps_per_epoch = math.ceil(len(tr) / args.batch_size)
    total = max(1, epochs * steps_per_epoch)
    base_lrs = [
        {"e2-top-adam": args.lr_top, "e2-finetune-sgd": args.lr_finetune}.get(name, args.lr) for _ in opt.param_groups
    ]
    while not st["done"] and st["epoch"] < epochs:
        if args.stop_after_epochs and ctx["epochs_run"] >= args.stop_after_epochs:
            raise StoppedEarly
        epoch, t0 = st["epoch"], time.time()
        net.train()
        _set_bn_eval_where_frozen(net)
        batches = epoch_batches(tr, args.batch_size, args.seed, pi, epoch)
        loader = BatchLoader(
            data.stamps,
            ctx["targets"],
            batches,
            spec,
            args.seed,
            pi,
            epoch,
            prefetch=args.prefetch,
            channels_last=ctx["bf16"],
            threaded=args.prefetch > 0,
            augmentation=args.augment,
        )
        losses = []
        for x, y in loader:
            for g, lr0 in zip(opt.param_groups, base_lrs):  # cosine schedule per step
                g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * st["step"] / total))
            losses.append(train_step(net, opt, x, y, ctx["pos_weight"], ctx["bf16"]))
            st["step"] += 1
            if args.ema:
                update_ema(net, st, args.ema)  # after the step count: its ramp reads it
        zv = val_logits(ctx, st)
        yv = labels[va]
        auc = ev.roc_auc(yv, zv)
        vloss = float(
            F.binary_cross_entropy_with_logits(
                torch.from_numpy(zv), torch.from_numpy(yv.astype(np.float32)), pos_weight=ctx["pos_weight"]
            )
        )
        seconds = time.time() - t0
        ctx["log"](
            {
                "phase": name,
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": vloss,
                "val_roc_auc": auc,
                "seconds": round(seconds, 1),
                "img_per_s": round(len(tr) / seconds, 1),
            }
        )
        if st["best_auc"] is None or auc > st["best_auc"]:
            st.update(best_auc=auc, best_epoch=epoch + 1, best_model=clone_state(kept_state(net, st)))
        if st["best_val_loss"] is None or vloss < st["best_val_loss"]:
            st.update(best_val_loss=vloss, bad_epochs=0)
        else:
            st["bad_epochs"] += 1
        st["epoch"] = epoch + 1
        if args.patience and st["bad_epochs"] >= args.patience and st["epoch"] < epochs:
            st["done"] = True
            ctx["log"](
                {
                    "phase": name,
                    "early_stop": f"val loss not improved for {args.patience} epochs",
                    "after_epoch": epoch + 1,
                    "best_epoch": st["best_epoch"],
                }
            )
        ctx["epochs_run"] += 1
        ctx["save"](pi, st, opt)


def run(args: TrainArguments, resume: bool = False) -> dict:
    """Train, evaluate and export.  ``resume=True`` continues the run in ``args.out`` from its
    checkpoint (a finished run is left as it is); without it, an ``args.out`` that already holds a
    checkpoint is refused rather than overwritten."""
    t_start = time.time()
    out = Path(args.out)
    ck = None
    if resume:
        ck = ckpt.load_checkpoint(out)
        if ck["finished"] and (out / "metrics.json").is_file():
            print(f"mergerscan train: {out} has finished; nothing to resume", flush=True)
            return json.loads((out / "metrics.json").read_text())
    elif (out / ckpt.CHECKPOINT).is_file():
        raise ckpt.ResumeError(
            f"--out {out} already holds a training run ({ckpt.CHECKPOINT}); continue it with "
            f"--resume {out} or choose another --out"
        )
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    history = list(ck["history"]) if ck else []

    def log(rec):
        history.append(rec)
        print(json.dumps(rec), flush=True)
        atomic_write_json(out / "history.json", history, indent=1)

    if args.init == "imagenet":  # a missing weights file fails before minutes of image decoding
        imagenet_weights_path(args.arch, args.weights)
    data = build_labelled_set(args.catalog, **data_options(args))
    if ck and ck["data_hash"] != data.data_hash:
        raise ckpt.ResumeError(
            f"--resume {out}: the labelled set of {args.catalog} changed since the run began "
            f"(data hash {data.data_hash}, the run's {ck['data_hash']})"
        )
    spec = training_spec(args, data.stamps.shape[1])
    tr, va, te = (data.indices(s) for s in ("train", "val", "test"))
    labels = data.table["label"].to_numpy()
    run_args = asdict(args) | {"catalog": str(Path(args.catalog).resolve())}  # resumable from any cwd
    bf16 = bool(ck["bf16"]) if ck else use_bf16(args.bf16)  # a resume keeps the precision it began with
    if ck:
        log(
            {
                "resumed": {"phase": ck["phase"], "epoch": ck["phase_state"]["epoch"]},
                "command": " ".join(shlex.quote(a) for a in sys.argv),
            }
        )
    else:
        ckpt.write_config(out, run_args)
        log(
            {
                "data_hash": data.data_hash,
                "n_train": len(tr),
                "n_val": len(va),
                "n_test": len(te),
                "train_mergers": int(labels[tr].sum()),
                "precision": _precision_name(bf16),
                "cpu": cpu_model(),
                "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f),
            }
        )
    pos_weight = torch.tensor(float((labels[tr] == 0).sum()) / max(1, labels[tr].sum()))
    targets, distilled = labels.astype(np.float32), None
    if args.distill:
        from .distill import soft_targets

        targets, distilled = soft_targets(args.distill, args.distill_weight, data, tr, out, args.threads)
        if not ck:
            log({"distill": distilled})

    net = initial_network(args)
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    phases = _phases(args)
    start = len(phases) if ck and ck["finished"] else (ck["phase"] if ck else 0)
    if ck:
        net.load_state_dict(ck["model"])
    seconds_before = float(ck["train_seconds"]) if ck else 0.0

    def save(phase, st, opt, finished=False):
        ckpt.save_checkpoint(
            out,
            {
                "args": run_args,
                "data_hash": data.data_hash,
                "bf16": bf16,
                "phase": phase,
                "finished": finished,
                "phase_state": st,
                "model": net.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else {},
                "rng": ckpt.rng_state(),
                "history": history,
                "train_seconds": seconds_before + time.time() - t_start,
            },
        )

    ctx = {
        "args": args,
        "net": net,
        "phases": phases,
        "tr": tr,
        "va": va,
        "labels": labels,
        "data": data,
        "spec": spec,
        "bf16": bf16,
        "pos_weight": pos_weight,
        "targets": targets,
        "log": log,
        "save": save,
        "epochs_run": 0,
    }
    try:
        for pi, (_, epochs) in enumerate(phases):
            if pi < start:
                continue
            opt, info = _setup_phase(net, args, pi)
            if ck and pi == start:
                opt.load_state_dict(ck["optimizer"])
                st = dict(ck["phase_state"])
                ckpt.set_rng_state(ck["rng"])
            else:
                st = _fresh_phase_state()
                if info:
                    log(info)
            _run_phase(ctx, pi, epochs, opt, st)
            if st["best_model"] is not None:
                net.load_state_dict(st["best_model"])
    except StoppedEarly:
        print(
            f"mergerscan train: stopped after {ctx['epochs_run']} epoch(s) as asked; continue with "
            f"mergerscan train --resume {out}",
            flush=True,
        )
        return {"stopped": True, "epochs_run": ctx["epochs_run"]}
    for p in net.parameters():
        p.requires_grad = True
    if not (ck and ck["finished"]):
        save(len(phases), _fresh_phase_state(), None, finished=True)
    train_seconds = seconds_before + time.time() - t_start if not (ck and ck["finished"]) else seconds_before
    net = net.to(memory_format=torch.contiguous_format)
    return _finish(args, net, data, spec, (tr, va, te), train_seconds, bf16, out, distilled)


def _precision_name(bf16: bool) -> str:
    return "bf16 autocast, channels_last" if bf16 else "fp32"


def _finish(args, net, data, spec, splits, train_seconds, bf16, out: Path, distilled: dict | None = None) -> dict:
    """Calibrate and choose the threshold on validation, evaluate once on test, export the engine."""
    tr, va, te = splits
    labels = data.table["label"].to_numpy()
    with atomic_path(out / "model.pt") as tmp:
        torch.save(net.state_dict(), tmp)  # reload with torch.load(weights_only=True)
    zv, zt = _predict_logits(net, data.stamps[va], spec), _predict_logits(net, data.stamps[te], spec)
    cal = ev.calibrate_and_summarize(labels[va], zv, labels[te], zt)
    T, thr, pt, m_val, m_test = cal.temperature, cal.threshold, cal.p_test, cal.val, cal.test
    name = args.name or f"{args.arch}-{args.experiment}-{args.input_size}px"
    card = (
        survey.val_curve(labels[va], cal.p_val, data.data_hash, args.split_seed)
        | {
            "name": name,
            "arch": args.arch,
            "experiment": args.experiment,
            "init": args.init,
            "input_size": args.input_size,
            "threshold": thr,
            "temperature": T,
            "data_hash": data.data_hash,
            "catalog": Path(args.catalog).name,
            "split": f'object-disjoint groups (stamps within 100"), split seed {args.split_seed}, 70/15/15',
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(te),
            "metrics_test": {k: m_test[k] for k in ("roc_auc", "pr_auc", "precision_at_2pct", "ece", "threshold")}
            | {
                "macro_f1": m_test["macro"]["f1"],
                "merger_f1": m_test["merger"]["f1"],
                "merger_precision": m_test["merger"]["precision"],
                "merger_recall": m_test["merger"]["recall"],
            },
            "train_seconds": round(train_seconds, 1),
            "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "training_precision": _precision_name(bf16),
            "augmentation": args.augment,
            "mergerscan_version": __version__,
            "command": args.command,
        }
        | card_entries(args, data)
    )
    if distilled:
        card["distilled_from"] = distilled
    if args.ema:
        card["weights_kept"] = f"exponential moving average of the weights, decay {args.ema} per step"
    onnx_path = out / "model.onnx"
    if args.export:
        export_onnx(net, spec, card, onnx_path)
        probe = prepare_batch(np.asarray(data.stamps[te[:32]]), spec)
        card["onnx_parity_max_abs"] = parity(net, onnx_path, probe)
    result = {"args": asdict(args), "card": card, "test": m_test, "val": m_val}
    result |= survey.report_entries(data.table.iloc[te], labels[va], cal.p_val, pt, thr)
    if args.int8 and args.export:
        calib = prepare_batch(np.asarray(data.stamps[tr[:256]]), spec)
        q = quantize_int8(onnx_path, calib, out / "model-int8.onnx")
        from ..engines.onnxruntime import OnnxRuntimeEngine

        zq = OnnxRuntimeEngine(q, threads=args.threads).logits(
            np.concatenate(
                [prepare_batch(np.asarray(data.stamps[te[i : i + 64]]), spec) for i in range(0, len(te), 64)]
            )
        )
        mq = ev.summarize(labels[te], ev._sigmoid(zq / T), thr)
        result["int8_test"] = mq
        result["int8_delta_macro_f1"] = mq["macro"]["f1"] - m_test["macro"]["f1"]
    atomic_write_json(out / "card.json", card, indent=1)
    ev.plot_all(labels[te], pt, m_test, out, title=name)
    with atomic_path(out / "test_scores.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, id=data.table["id"].to_numpy()[te].astype(str), y=labels[te], p=pt, logit=zt)
    atomic_write_text(
        out / "table1.md", f"## {name} (test split, threshold {thr:.3f} from val)\n\n" + ev.table1(m_test) + "\n"
    )
    atomic_write_json(out / "metrics.json", result, indent=1, default=float)  # last: marks the run finished
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
    return result
