"""The study's experiments.  E1: random init + mini-batch SGD.  E2: ImageNet weights; phase 1
trains the added top with Adam on a frozen base, phase 2 unfreezes the last conv blocks and
fine-tunes with SGD + momentum at a small learning rate.  Ends by evaluating on the test split
(threshold and temperature fitted on validation) and exporting an engine file."""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cutouts.preprocess import PreprocessSpec, prepare_batch
from . import evaluate as ev
from .data import augment, build_labelled_set
from .models import ARCH_INFO, ARCHS, create_model, trainable_tail


@dataclass
class TrainArguments:
    catalog: str
    out: str
    arch: str = "efficientnet_lite0"
    experiment: str = "e2"                 # e1 (scratch) | e2 (transfer)
    input_size: int = 128
    epochs: int = 8                        # E1: all epochs; E2: phase-2 (fine-tune) epochs
    epochs_top: int = 2                    # E2 phase 1 (frozen base, Adam)
    batch_size: int = 32
    lr: float = 0.02                       # E1 SGD
    lr_top: float = 1e-3                   # E2 phase 1 Adam
    lr_finetune: float = 5e-3              # E2 phase 2 SGD + momentum
    momentum: float = 0.9
    weight_decay: float = 1e-4
    unfreeze_blocks: int = 4               # E2 phase 2: last N conv blocks of the base
    weights: str | None = None             # ImageNet weights file (E2); else standard loading
    seed: int = 0
    threads: int = 2
    limit_per_class: int | None = None     # tiny subsets (smoke tests)
    cache: str | None = ".cache/mergerscan"
    int8: bool = False
    stamp_pixels: int = 256
    pixel_scale: float = 0.396
    name: str | None = None
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}")
        if self.experiment not in ("e1", "e2"):
            raise ValueError("--experiment must be e1 or e2")
        if self.input_size < ARCH_INFO[self.arch].min_size:
            raise ValueError(f"{self.arch} needs --size >= {ARCH_INFO[self.arch].min_size}")
        if not Path(self.catalog).is_file():
            raise FileNotFoundError(f"--catalog {self.catalog}: no such file")
        if self.epochs < 0 or self.epochs_top < 0 or self.batch_size < 2:
            raise ValueError("epochs must be >= 0 and batch size >= 2")

    @property
    def init(self) -> str:
        return "imagenet" if self.experiment == "e2" else "random"


def _set_bn_eval_where_frozen(net):
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            m.train(not frozen and net.training)


def _predict_logits(net, stamps, spec, batch=64) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(stamps), batch):
            x = torch.from_numpy(prepare_batch(np.asarray(stamps[i:i + batch]), spec))
            out.append(net(x).numpy())
    return np.concatenate(out)


def _run_phase(net, data, tr_idx, spec, optimizer, epochs, args, log, gen, phase, pos_weight, val):
    steps_per_epoch = math.ceil(len(tr_idx) / args.batch_size)
    total = max(1, epochs * steps_per_epoch)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    best = None
    step = 0
    for epoch in range(epochs):
        t0 = time.time()
        net.train(); _set_bn_eval_where_frozen(net)
        perm = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
        losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(perm[b * args.batch_size:(b + 1) * args.batch_size])
            if len(idx) < 2:
                continue
            for g, lr0 in zip(optimizer.param_groups, base_lrs):   # cosine schedule per step
                g["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / total))
            raw = torch.from_numpy(np.asarray(data.stamps[idx]))
            x = torch.from_numpy(prepare_batch(augment(raw, gen).numpy(), spec))
            y = torch.from_numpy(data.table["label"].to_numpy()[idx].astype(np.float32))
            loss = F.binary_cross_entropy_with_logits(net(x), y, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item()); step += 1
        zv = _predict_logits(net, data.stamps[val], spec)
        yv = data.table["label"].to_numpy()[val]
        auc = ev.roc_auc(yv, zv)
        vloss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(zv), torch.from_numpy(yv.astype(np.float32)),
                                                         pos_weight=pos_weight))
        rec = {"phase": phase, "epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": vloss,
               "val_roc_auc": auc, "seconds": round(time.time() - t0, 1),
               "img_per_s": round(len(tr_idx) / (time.time() - t0), 1)}
        log(rec)
        if best is None or auc > best[0]:
            best = (auc, {k: v.detach().clone() for k, v in net.state_dict().items()})
    if best is not None:
        net.load_state_dict(best[1])


def run(args: TrainArguments) -> dict:
    t_start = time.time()
    torch.manual_seed(args.seed); np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    history = []

    def log(rec):
        history.append(rec)
        print(json.dumps(rec), flush=True)
        (out / "history.json").write_text(json.dumps(history, indent=1))

    data = build_labelled_set(args.catalog, seed=args.seed, cache=args.cache,
                              limit_per_class=args.limit_per_class)
    spec = PreprocessSpec(stamp_pixels=data.stamps.shape[1], pixel_scale=args.pixel_scale,
                          input_size=args.input_size)
    tr, va, te = (data.indices(s) for s in ("train", "val", "test"))
    labels = data.table["label"].to_numpy()
    log({"data_hash": data.data_hash, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
         "train_mergers": int(labels[tr].sum())})
    pos_weight = torch.tensor(float((labels[tr] == 0).sum()) / max(1, labels[tr].sum()))
    gen = torch.Generator().manual_seed(args.seed)

    net = create_model(args.arch, init=args.init, weights=args.weights)
    if args.experiment == "e1":
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay, nesterov=True)
        _run_phase(net, data, tr, spec, opt, args.epochs, args, log, gen, "e1-sgd", pos_weight, va)
    else:
        trainable_tail(net, 0)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr_top)
        _run_phase(net, data, tr, spec, opt, args.epochs_top, args, log, gen, "e2-top-adam", pos_weight, va)
        unfrozen = trainable_tail(net, args.unfreeze_blocks)
        log({"unfrozen_blocks": unfrozen})
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=args.lr_finetune,
                              momentum=args.momentum, weight_decay=args.weight_decay)
        _run_phase(net, data, tr, spec, opt, args.epochs, args, log, gen, "e2-finetune-sgd", pos_weight, va)
    for p in net.parameters():
        p.requires_grad = True
    train_seconds = time.time() - t_start
    torch.save(net.state_dict(), out / "model.pt")   # reload with torch.load(weights_only=True)

    # ---- calibrate + choose threshold on validation, evaluate once on test
    zv, zt = _predict_logits(net, data.stamps[va], spec), _predict_logits(net, data.stamps[te], spec)
    cal = ev.calibrate_and_summarize(labels[va], zv, labels[te], zt)
    T, thr, pv, pt, m_val, m_test = cal.temperature, cal.threshold, cal.p_val, cal.p_test, cal.val, cal.test
    name = args.name or f"{args.arch}-{args.experiment}-{args.input_size}px"
    from .. import __version__
    card = {
        "name": name, "arch": args.arch, "experiment": args.experiment, "init": args.init,
        "input_size": args.input_size, "threshold": thr, "temperature": T, "data_hash": data.data_hash,
        "catalog": Path(args.catalog).name, "split": "object-disjoint groups (stamps within 100\"), seed "
        f"{args.seed}, 70/15/15", "n_train": len(tr), "n_val": len(va), "n_test": len(te),
        "metrics_test": {k: m_test[k] for k in ("roc_auc", "pr_auc", "precision_at_2pct", "ece", "threshold")}
        | {"macro_f1": m_test["macro"]["f1"], "merger_f1": m_test["merger"]["f1"],
           "merger_precision": m_test["merger"]["precision"], "merger_recall": m_test["merger"]["recall"]},
        "train_seconds": round(train_seconds, 1), "hardware": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}", "mergerscan_version": __version__,
        "command": args.command, "labels": "Darg+2010 mergers vs Galaxy Zoo 1 non-interacting (SDSS DR7)",
    }
    onnx_path = out / "model.onnx"
    from .export import export_onnx, parity, quantize_int8
    export_onnx(net, spec, card, onnx_path)
    probe = prepare_batch(np.asarray(data.stamps[te[:32]]), spec)
    card["onnx_parity_max_abs"] = parity(net, onnx_path, probe)
    result = {"args": asdict(args), "card": card, "test": m_test, "val": m_val}
    if args.int8:
        calib = prepare_batch(np.asarray(data.stamps[tr[:256]]), spec)
        q = quantize_int8(onnx_path, calib, out / "model-int8.onnx")
        from ..engines.onnxruntime import OnnxRuntimeEngine
        zq = OnnxRuntimeEngine(q, threads=args.threads).logits(
            np.concatenate([prepare_batch(np.asarray(data.stamps[te[i:i + 64]]), spec) for i in range(0, len(te), 64)]))
        mq = ev.summarize(labels[te], ev._sigmoid(zq / T), thr)
        result["int8_test"] = mq
        result["int8_delta_macro_f1"] = mq["macro"]["f1"] - m_test["macro"]["f1"]
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "card.json").write_text(json.dumps(card, indent=1))
    ev.plot_all(labels[te], pt, m_test, out, title=name)
    np.savez(out / "test_scores.npz", id=data.table["id"].to_numpy()[te].astype(str), y=labels[te], p=pt, logit=zt)
    (out / "table1.md").write_text(f"## {name} (test split, threshold {thr:.3f} from val)\n\n"
                                   + ev.table1(m_test) + "\n")
    print(ev.table1(m_test))
    print(json.dumps({"macro_f1": m_test["macro"]["f1"], "roc_auc": m_test["roc_auc"],
                      "pr_auc": m_test["pr_auc"], "precision_at_2pct": m_test["precision_at_2pct"],
                      "train_seconds": round(train_seconds)}))
    return result
