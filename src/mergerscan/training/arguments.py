"""Arguments of ``mergerscan train``: a self-validating dataclass (errors are one line).

Its defaults are the command line's (``training.cli`` reads them), so importing it stays light:
the models (torch) and the augmentations (pandas) are imported where a run is checked."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .hardware import BF16_CHOICES


@dataclass
class TrainArguments:
    catalog: str
    out: str
    arch: str = "efficientnet_lite0"
    experiment: str = "e2"  # e1 (scratch) | e2 (transfer)
    input_size: int = 128
    epochs: int = 8  # E1: all epochs; E2: phase-2 (fine-tune) epochs
    epochs_top: int = 2  # E2 phase 1 (frozen base, Adam)
    batch_size: int = 32
    lr: float = 0.02  # E1 SGD
    lr_top: float = 1e-3  # E2 phase 1 Adam
    lr_finetune: float = 5e-3  # E2 phase 2 SGD + momentum
    momentum: float = 0.9
    weight_decay: float = 1e-4
    unfreeze_blocks: int = 4  # E2 phase 2: last N conv blocks of the base
    weights: str | None = None  # ImageNet weights file (E2); else standard loading
    seed: int = 0  # weight init, batch order and augmentation
    split_seed: int = 0  # train/val/test split: apart from --seed, so seeds compare on one split
    threads: int = 2
    limit_per_class: int | None = None  # tiny subsets (smoke tests)
    cache: str | None = ".cache/mergerscan"
    int8: bool = False
    stamp_pixels: int = 256
    pixel_scale: float = 0.396
    name: str | None = None
    patience: int = 0  # end a phase when val loss has not improved for N epochs (0: off)
    bf16: str = "auto"  # auto: where the CPU has AVX512-BF16/AMX; on | off force it
    prefetch: int = 2  # batches the loader thread prepares ahead (0: no thread)
    stop_after_epochs: int | None = None  # end this invocation after N epochs (resumable)
    export: bool = True  # write the ONNX engine file (off: metrics only, e.g. study sweeps)
    distill: str | None = None  # teacher engine file (or "default"): soft targets on train rows (distill.py)
    distill_weight: float = 0.5  # share of the teacher in the training target
    ema: float = 0.0  # decay of an exponential moving average of the weights per step (0: off)
    augment: str = "standard"  # training augmentation preset (data.AUGMENTATIONS)
    label_column: str = "is_merger"  # the 0/1 label in the catalog
    split_column: str | None = None  # the catalog's own train/val/test column (else the seeded split)
    train_labels: int | None = None  # keep this many training rows, stratified (learning curves)
    init_from: str | None = None  # E2 from an engine file's network instead of ImageNet (finetune.py)
    init_from_sha256: str | None = None  # that file's sha256 when the run began (a resume checks it)
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def __post_init__(self):
        self._check_model()
        self._check_schedule()

    def _check_model(self) -> None:
        """The network and what it starts from."""
        from ..models import ARCHS, model_info

        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}")
        if self.experiment not in ("e1", "e2"):
            raise ValueError("--experiment must be e1 or e2")
        if self.input_size < model_info(self.arch).min_size:
            raise ValueError(f"{self.arch} needs --size >= {model_info(self.arch).min_size}")
        if not Path(self.catalog).is_file():
            raise FileNotFoundError(f"CATALOG {self.catalog}: no such file")
        if self.init_from is not None and self.experiment != "e2":
            raise ValueError("fine-tuning an engine is an E2 run (--experiment e2)")

    def _check_schedule(self) -> None:
        """Epochs, batches, regularisation and the training rows."""
        from .data import AUGMENTATIONS

        if self.epochs < 0 or self.epochs_top < 0 or self.batch_size < 2:
            raise ValueError("epochs must be >= 0 and batch size >= 2")
        if self.bf16 not in BF16_CHOICES:
            raise ValueError(f"--bf16 must be one of {', '.join(BF16_CHOICES)}")
        if self.patience < 0 or self.prefetch < 0:
            raise ValueError("--patience and --prefetch must be >= 0")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise ValueError("--stop-after-epochs must be >= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError("--ema must be in [0, 1) (0: off)")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError("--distill-weight must be in [0, 1]")
        if self.train_labels is not None and self.train_labels < 4:
            raise ValueError("--train-labels must be >= 4 (at least 2 of each class)")

    @property
    def init(self) -> str:
        if self.init_from:
            return "engine"
        return "imagenet" if self.experiment == "e2" else "random"
