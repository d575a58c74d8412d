"""StampSource: pre-cut JPEG/PNG/FITS stamps found by id or by a path column; every row gets a status."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.sources import SourceConfig, open_source
from mergerscan.cutouts.stamps import StampSource

SPEC = PreprocessSpec()
S = SPEC.stamp_pixels


def _img(seed: int, size: int = S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _smooth_img(size: int) -> np.ndarray:
    """A smooth gradient: survives JPEG and resampling almost unchanged."""
    y, x = np.mgrid[:size, :size] / (size - 1)
    return (np.stack([x, y, (x + y) / 2], -1) * 255).round().astype(np.uint8)


def _rows(ids, paths=None) -> pd.DataFrame:
    d = {"id": list(ids), "ra": np.zeros(len(ids)), "dec": np.zeros(len(ids))}
    if paths is not None:
        d["path"] = paths
    return pd.DataFrame(d)


@pytest.fixture()
def stampdir(tmp_path):
    Image.fromarray(_smooth_img(S)).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(_img(1)).save(tmp_path / "b.png")
    fits.PrimaryHDU(np.moveaxis(_img(2), -1, 0)).writeto(tmp_path / "c.fits")                 # (3, H, W) uint8
    fits.PrimaryHDU(_img(3).astype(np.float32) + 0.2).writeto(tmp_path / "d.fits")           # (H, W, 3) float
    (tmp_path / "sub").mkdir()
    Image.fromarray(_img(4)).save(tmp_path / "sub" / "other-name.png")
    body = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(body[: len(body) // 2])
    Image.fromarray(_img(5)[:, :200]).save(tmp_path / "wide.png")                             # 256 x 200
    Image.fromarray(_img(6)[..., 0]).save(tmp_path / "grey.png")                              # mode L
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    Image.fromarray(_smooth_img(128)).save(tmp_path / "small.png")
    return tmp_path


def test_by_id_all_formats(stampdir):
    with StampSource(stampdir, SPEC) as src:
        st, status = src.fetch(_rows(["a", "b", "c", "d"]))
    assert status.tolist() == ["ok"] * 4 and st.shape == (4, S, S, 3) and st.dtype == np.uint8
    assert np.abs(st[0].astype(int) - _smooth_img(S)).mean() < 2        # JPEG q95 of a gradient
    assert np.array_equal(st[1], _img(1))                                # PNG lossless
    assert np.array_equal(st[2], _img(2))                                # FITS (3, H, W) uint8
    assert np.array_equal(st[3], _img(3))                                # FITS float: rounded


def test_by_path_column(stampdir):
    rows = _rows(["x1", "b", "x3", "x4"],
                 ["sub/other-name.png", None, str(stampdir / "c.fits"), "sub/missing.png"])
    with StampSource(stampdir, SPEC) as src:
        st, status = src.fetch(rows)
    # relative path, empty path -> id lookup, absolute path, path to nothing
    assert status.tolist() == ["ok", "ok", "ok", "no_image"]
    assert np.array_equal(st[0], _img(4)) and np.array_equal(st[1], _img(1)) and np.array_equal(st[2], _img(2))
    assert not st[3].any()


def test_failures_keep_every_row(stampdir):
    ids = ["a", "missing", "trunc", "wide", "grey", "junk", "../a", "b"]
    with StampSource(stampdir, SPEC, threads=3) as src:
        st, status = src.fetch(_rows(ids))
    assert len(status) == len(ids) == len(st)
    assert status.tolist() == ["ok", "no_image", "bad_image", "bad_image", "bad_image", "bad_image",
                               "no_image", "ok"]
    assert not st[1:7].any()                                             # failed rows: zero stamps
    assert src.stats["bad_image"] == 4


def test_truncated_jpeg_even_with_lenient_pil(stampdir, monkeypatch):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with StampSource(stampdir, SPEC, threads=1) as src:
        assert src.fetch(_rows(["trunc"]))[1].tolist() == ["bad_image"]


def test_resample_128_to_stamp_pixels(stampdir):
    with StampSource(stampdir, SPEC) as src:
        st, status = src.fetch(_rows(["small"]))
    assert status.tolist() == ["ok"] and st.shape == (1, S, S, 3)
    # a gradient stays a gradient: same corners, same mean
    assert np.abs(st[0].astype(float).mean((0, 1)) - _smooth_img(S).mean((0, 1))).max() < 2
    assert np.abs(st[0, 0, 0].astype(int) - [0, 0, 0]).max() <= 2 and np.abs(st[0, -1, -1].astype(int) - 255).max() <= 2


def test_open_source_and_empty(stampdir):
    src = open_source(SourceConfig("stamps", str(stampdir), (("threads", 1), ("timeout", 3.0))), SPEC)
    st, status = src.fetch(_rows([]))
    assert st.shape == (0, S, S, 3) and len(status) == 0
    src.close()


def test_real_gz_jpeg(gz_dir):
    cat = pd.read_csv(gz_dir / "catalog.csv", nrows=20)
    rows = _rows(cat["id"], cat["image"])
    with StampSource(gz_dir, SPEC) as src:
        st, status = src.fetch(rows)
    assert (status == "ok").all()
    assert np.array_equal(st[0], np.asarray(Image.open(gz_dir / cat["image"][0])))


@pytest.mark.parametrize("size", [160, 224, 100])
def test_prepare_batch_resize_matches_torch_antialias(size):
    """Non-integer ratios: the numpy separable resampling (no torch in the workers) computes what
    torch's antialiased bilinear interpolate computes, which the engines were trained with."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch

    spec = PreprocessSpec(input_size=size)
    x = np.random.default_rng(size).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))
    ref = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).numpy()
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1) * 255
    got = prepare_batch(x, spec)
    assert got.shape == (4, 3, size, size) and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, (ref - mean) / std, atol=2e-4)
