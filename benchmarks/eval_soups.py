"""Would a weight average ("model soup") of runs fine-tuned from the same ImageNet weights beat its
best ingredient?  A soup costs what one network costs, so it is a quarter-cost candidate at one view.

Each ingredient and each soup asked for is scored on the **validation** split only (one view, fp32):
the one temperature -> threshold -> summarise sequence of training, then macro F1, log loss and
ROC-AUC.  Architecture, input size and pixel scale come from the runs' own ``train_config.json``
(they must agree).  Every float tensor (BN running statistics included) is the plain mean of the
ingredients'; integer buffers are the first ingredient's.  Test is not looked at: a soup that beat
its ingredients on validation would then go through ``mergerscan calibrate`` like any candidate.

    .venv/bin/python benchmarks/eval_soups.py runs/A runs/B runs/C --soup A,B --soup A,B,C \
        --cache .cache/mergerscan
Writes benchmarks/results/soups.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import cpu_model, need, result_path, shared_data, write_result


def mean_state(states: list[dict]) -> dict:
    out = {}
    for k, v in states[0].items():
        out[k] = sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="training run directories (each with model.pt)")
    ap.add_argument("--soup", action="append", default=[], help="comma-separated run names to average")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--out", default=str(result_path("soups.json")))
    a = ap.parse_args()
    import torch

    from mergerscan.cutouts.preprocess import PreprocessSpec
    from mergerscan.models import create_model
    from mergerscan.training import evaluate as ev
    from mergerscan.training.data import build_labelled_set
    from mergerscan.training.train import predict_logits

    torch.set_num_threads(a.threads)
    shape_keys = ("arch", "input_size", "pixel_scale")
    shapes = {tuple(json.loads((Path(r) / "train_config.json").read_text())[k] for k in shape_keys) for r in a.runs}
    if len(shapes) != 1:
        ap.error(f"the runs differ in {'/'.join(shape_keys)}: {sorted(shapes)}")
    arch, input_size, pixel_scale = shapes.pop()
    data = build_labelled_set(str(need(shared_data("sdss-gz-mergers", "catalog.csv"))), cache=a.cache)
    va = data.indices("val")
    y = data.table["label"].to_numpy()[va]
    spec = PreprocessSpec(stamp_pixels=data.stamps.shape[1], pixel_scale=pixel_scale, input_size=input_size)
    states = {Path(r).name: torch.load(Path(r) / "model.pt", weights_only=True) for r in a.runs}
    net = create_model(arch, init="random")

    def score(state: dict) -> dict:
        net.load_state_dict(state)
        z = predict_logits(net, data.stamps[va], spec)
        p = ev.sigmoid(z / ev.fit_temperature(y, z))
        m = ev.summarize(y, p, ev.choose_threshold(y, p))
        return {
            "val_macro_f1": round(m["macro"]["f1"], 4),
            "val_log_loss": round(ev.log_loss(y, p), 4),
            "val_roc_auc": round(m["roc_auc"], 4),
        }

    rows = []
    for members in [[n] for n in states] + [s.split(",") for s in a.soup]:
        t0 = time.time()
        row = {"members": members} | score(mean_state([states[n] for n in members]))
        rows.append(row)
        print(f"{row} ({time.time() - t0:.0f} s)", flush=True)
    write_result(
        a.out, {"machine": cpu_model(), "threads": a.threads, "arch": arch, "input_size": input_size, "rows": rows}
    )


if __name__ == "__main__":
    main()
