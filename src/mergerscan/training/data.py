"""Labelled data for training: catalog + stamps -> object-disjoint splits -> augmented batches.

Images are decoded once into a uint8 array cache (memory-mapped .npy) so that epochs cost
only augmentation and the forward/backward pass.  Augmentation acts on the full stamp
(before the shared :func:`prepare_batch`), so training and inference resample identically.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..atomic import atomic_path

SPLITS = ("train", "val", "test")


@dataclass
class LabelledSet:
    table: pd.DataFrame  # one row per object: id, label (0/1), ra, dec, image, group, split
    stamps: np.ndarray  # (N, H, W, 3) uint8, row-aligned with table
    data_hash: str

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)


def read_labelled_catalog(
    path: str | Path,
    label_column: str = "is_merger",
    id_column: str = "id",
    image_column: str = "image",
    images_dir: str | Path | None = None,
    split_column: str | None = None,
) -> pd.DataFrame:
    """A CSV/FITS/Parquet catalog with a 0/1 label column and an image path (or images_dir/<id>.jpg);
    ``split_column``: the user's own train/val/test assignment (checked object-disjoint later)."""
    from ..catalogs.columns import find_column
    from ..catalogs.read import read_table

    path = Path(path)
    df = read_table(path)
    if not len(df):
        raise ValueError(f"{path}: the labelled catalog has no rows")
    cols = {
        name: find_column(df.columns, name)
        for name in (label_column, id_column, "ra", "dec", image_column, "objid", "companion_objid", split_column)
        if name is not None
    }
    for need in (label_column, id_column, "ra", "dec", *([split_column] if split_column else [])):
        if cols[need] is None:
            raise ValueError(f"{path}: labelled catalog has no column {need!r}")
    out = pd.DataFrame(
        {
            "id": df[cols[id_column]].astype(str),
            "label": _labels(df[cols[label_column]], path, label_column),
            "ra": df[cols["ra"]].astype(float),
            "dec": df[cols["dec"]].astype(float),
        }
    )
    if split_column:
        out["split"] = df[cols[split_column]].astype(str).str.strip().str.lower().to_numpy()
        if bad := sorted(set(out["split"]) - set(SPLITS)):
            raise ValueError(f"{path}: column {split_column!r} holds {bad[0]!r}; use {', '.join(SPLITS)}")
    if images_dir is not None:
        out["image"] = [str(Path(images_dir) / f"{i}.jpg") for i in out["id"]]
    elif cols[image_column] is not None:
        out["image"] = [str(path.parent / p) for p in df[cols[image_column]]]
    else:
        raise ValueError(f"{path}: no {image_column!r} column; pass images_dir")
    for c in ("objid", "companion_objid"):
        if cols[c] is not None:
            out[c] = df[cols[c]].fillna(-1).astype(np.int64)
    return out.reset_index(drop=True)


def _labels(values: pd.Series, path: Path, column: str) -> pd.Series:
    """The 0/1 label column as int; anything else (text, blanks, 2, 0.5) is a one-line error naming
    the file, the column and the first bad row."""
    num = pd.to_numeric(values, errors="coerce")
    bad = ~num.isin((0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: column {column!r} must hold 0/1 labels (row {row + 1}: {values.iloc[row]!r})")
    return num.astype(int)


def object_groups(
    ra: np.ndarray, dec: np.ndarray, radius_arcsec: float, links: list[tuple[int, int]] = ()
) -> np.ndarray:
    """Connected components of objects closer than ``radius_arcsec`` (their stamps overlap) or
    explicitly linked (a merger and its companion).  Splitting by group keeps every piece of
    sky in exactly one of train/val/test."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    r, d = np.radians(ra), np.radians(dec)
    xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
    chord = 2 * math.sin(math.radians(radius_arcsec / 3600) / 2)
    pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
    if len(links):
        pairs = np.concatenate([pairs, np.asarray(links, dtype=pairs.dtype).reshape(-1, 2)])
    n = len(ra)
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def assign_splits(groups: np.ndarray, labels: np.ndarray, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Stratified (by the group's max label), group-disjoint split with a fixed seed."""
    rng = np.random.default_rng(seed)
    glabel = pd.Series(labels).groupby(groups).max()
    split = {}
    for lab in (0, 1):
        gids = glabel.index[glabel.to_numpy() == lab].to_numpy().copy()
        rng.shuffle(gids)
        n = len(gids)
        a, b = round(n * fractions[0]), round(n * (fractions[0] + fractions[1]))
        for part, gs in zip(SPLITS, (gids[:a], gids[a:b], gids[b:])):
            split.update({int(g): part for g in gs})
    return np.array([split[int(g)] for g in groups])


def _decode(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:  # missing, a directory, unreadable, not an image (PIL's UnidentifiedImageError)
        raise ValueError(f"{path}: cannot read the stamp image ({exc.strerror or exc})") from None


def decode_stamps(paths: list[str], cache: str | Path | None = None, threads: int = 2) -> np.ndarray:
    """Decode JPEG/PNG stamps into one (N, H, W, 3) uint8 array, cached as a memory-mapped .npy."""
    key = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]
    if cache is not None:
        f = Path(cache) / f"stamps-{key}.npy"
        if f.is_file():
            return np.load(f, mmap_mode="r")
    first = _decode(paths[0])
    out = np.empty((len(paths),) + first.shape, np.uint8)
    with ThreadPoolExecutor(threads) as ex:
        for i, arr in enumerate(ex.map(_decode, paths)):
            if arr.shape != first.shape:
                raise ValueError(f"{paths[i]}: image is {arr.shape}, expected {first.shape}")
            out[i] = arr
    if cache is not None:
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:  # a file handle: np.save would add .npy
            np.save(fh, out)
        return np.load(f, mmap_mode="r")
    return out


def with_splits(
    t: pd.DataFrame, seed: int = 0, fractions=(0.7, 0.15, 0.15), group_radius_arcsec: float = 100.0
) -> pd.DataFrame:
    """Add the object-disjoint ``group`` and ``split`` columns to a labelled catalog (no images read)."""
    links = []
    if "companion_objid" in t:
        idx = {o: i for i, o in enumerate(t["objid"]) if o > 0}
        links = [(i, idx[c]) for i, c in enumerate(t["companion_objid"]) if c > 0 and c in idx]
    t["group"] = object_groups(t["ra"].to_numpy(), t["dec"].to_numpy(), group_radius_arcsec, links)
    if "split" in t:  # the user's own split: it must keep every group in one part
        parts = t.groupby("group")["split"].nunique()
        if (parts > 1).any():
            rows = t.index[t["group"] == parts.index[parts.to_numpy() > 1][0]]
            raise ValueError(
                f"the split column puts objects {t['id'][rows[0]]} and {t['id'][rows[1]]} (within "
                f'{group_radius_arcsec:g}" or linked companions) in different parts; a split must be object-disjoint'
            )
        return t
    t["split"] = assign_splits(t["group"].to_numpy(), t["label"].to_numpy(), fractions, seed)
    return t


def subsample_train(t: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Keep ``n`` training rows, stratified by label (each class at least 2), drawn with ``seed``;
    the other training rows become split ``unused`` (rows stay, so the decoded-stamp cache is shared
    by every subset of one catalog; validation and test are untouched: learning curves)."""
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(t["split"].to_numpy() == "train")
    if n >= len(train):
        return t
    y = t["label"].to_numpy()[train]
    n_pos = min(int((y == 1).sum()), max(2, round(n * y.mean())))
    keep = np.concatenate(
        [rng.choice(train[y == 1], n_pos, replace=False), rng.choice(train[y == 0], n - n_pos, replace=False)]
    )
    split = t["split"].to_numpy().copy()
    split[np.setdiff1d(train, keep)] = "unused"
    return t.assign(split=split)


def build_labelled_set(
    catalog: str | Path,
    *,
    seed: int = 0,
    fractions=(0.7, 0.15, 0.15),
    cache: str | Path | None = None,
    limit_per_class: int | None = None,
    group_radius_arcsec: float = 100.0,
    train_labels: int | None = None,
    **read_kw,
) -> LabelledSet:
    """The labelled catalog with its object-disjoint split and decoded stamps; ``train_labels``: keep
    that many training rows (:func:`subsample_train`, drawn with ``seed``)."""
    t = with_splits(read_labelled_catalog(catalog, **read_kw), seed, fractions, group_radius_arcsec)
    if limit_per_class:  # small, still group-disjoint subsets for smoke tests
        rng = np.random.default_rng(seed)
        keep = np.concatenate(
            [
                rng.permutation(np.flatnonzero((t["label"] == lab) & (t["split"] == s)))[
                    : max(2, int(limit_per_class * f))
                ]
                for lab in (0, 1)
                for s, f in zip(SPLITS, fractions)
            ]
        )
        t = t.iloc[np.sort(keep)].reset_index(drop=True)
    if train_labels:
        t = subsample_train(t, train_labels, seed)
    h = hashlib.sha256()
    for row in t[["id", "label", "split"]].itertuples(index=False):
        h.update(f"{row.id},{row.label},{row.split}\n".encode())
    stamps = decode_stamps(list(t["image"]), cache)
    return LabelledSet(t, stamps, h.hexdigest()[:16])


@dataclass(frozen=True)
class Augmentation:
    """How far training images are perturbed.  ``standard`` is what every run before
    ``--augment`` trained with; ``survey`` widens it with what changes between survey fields and
    galaxies of one class: apparent size (distance), seeing, per-band calibration, sky noise."""

    max_shift: float = 0.04  # of the stamp side
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.05  # all bands together, +-
    band_gain: float = 0.0  # each band apart, +- (colour calibration)
    seeing_sigma: float = 0.0  # extra Gaussian blur, up to this sigma in stamp pixels, on half the images
    sky_noise: float = 0.0  # Gaussian noise, up to this sigma in 0..255 units, on half the images


AUGMENTATIONS = {
    "standard": Augmentation(),
    # SDSS seeing is ~1.4" FWHM = sigma ~1.5 px at 0.396"/px: up to 1.2 px more is a poor night;
    # the stamps' own sky noise is 1.5-4.5 units (robust std in the corners of 50 stamps, 10th-90th
    # percentile), so up to 4 more is a field up to ~2x noisier
    "survey": Augmentation(
        max_shift=0.06, scale=(0.8, 1.25), brightness=0.1, band_gain=0.05, seeing_sigma=1.2, sky_noise=4.0
    ),
}


def _blur(x, sigma):
    """Separable Gaussian blur of (N, C, H, W) with one sigma (> 0) per image."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    r = 3  # 7 taps: 3 sigma of the largest blur used
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, taps)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return y.reshape(n, c, h, w)


def augment(stamps, generator, how: Augmentation | str = "standard"):
    """Random rotation (any angle), flip, shift and scale, brightness, and with ``survey`` also
    seeing, per-band gain and sky noise, on a batch of stamps (torch uint8/float (N, H, W, 3) in
    0..255).  Reflection padding fills the corners.  ``standard`` draws exactly the random numbers
    it always did, so earlier runs resume and reproduce unchanged."""
    import torch
    import torch.nn.functional as F

    a = AUGMENTATIONS[how] if isinstance(how, str) else how
    x = stamps.permute(0, 3, 1, 2).float()
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=generator)
    theta = u(n) * 2 * math.pi
    s = a.scale[0] + u(n) * (a.scale[1] - a.scale[0])
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
    A = torch.zeros(n, 2, 3)
    A[:, 0, 0], A[:, 0, 1] = cos * flip, -sin
    A[:, 1, 0], A[:, 1, 1] = sin * flip, cos
    A[:, :, 2] = (u(n, 2) * 2 - 1) * a.max_shift * 2
    grid = F.affine_grid(A, x.shape, align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    y = y * (1 + (u(n, 1, 1, 1) * 2 - 1) * a.brightness)
    if a.seeing_sigma:
        sigma = u(n) * a.seeing_sigma * (u(n) < 0.5)
        if (seen := sigma > 0).any():  # the unblurred half skips the convolution (a delta kernel)
            y[seen] = _blur(y[seen], sigma[seen])
    if a.band_gain:
        y = y * (1 + (u(n, 3, 1, 1) * 2 - 1) * a.band_gain)
    if a.sky_noise:
        level = u(n, 1, 1, 1) * a.sky_noise * (u(n, 1, 1, 1) < 0.5)
        y = y + torch.randn(y.shape, generator=generator) * level
    return y.clamp_(0, 255).permute(0, 2, 3, 1)
