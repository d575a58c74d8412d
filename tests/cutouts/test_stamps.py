"""StampSource: pre-cut JPEG/PNG/FITS stamps found by id or by a path column; every row gets a status."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from mergerscan.cutouts.base import SourceBase, SourceOptions, empty_stamps
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.registry import register_source, registered_sources, source_class
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
    fits.PrimaryHDU(np.moveaxis(_img(2), -1, 0)).writeto(tmp_path / "c.fits")  # (3, H, W) uint8
    fits.PrimaryHDU(_img(3).astype(np.float32) + 0.2).writeto(tmp_path / "d.fits")  # (H, W, 3) float
    (tmp_path / "sub").mkdir()
    Image.fromarray(_img(4)).save(tmp_path / "sub" / "other-name.png")
    body = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(body[: len(body) // 2])
    Image.fromarray(_img(5)[:, :200]).save(tmp_path / "wide.png")  # 256 x 200
    Image.fromarray(_img(6)[..., 0]).save(tmp_path / "grey.png")  # mode L
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    Image.fromarray(_smooth_img(128)).save(tmp_path / "small.png")
    return tmp_path


def test_by_id_all_formats(stampdir):
    with StampSource(stampdir, SPEC) as src:
        st, status = src.fetch(_rows(["a", "b", "c", "d"]))
    assert status.tolist() == ["ok"] * 4 and st.shape == (4, S, S, 3) and st.dtype == np.uint8
    assert np.abs(st[0].astype(int) - _smooth_img(S)).mean() < 2  # JPEG q95 of a gradient
    assert np.array_equal(st[1], _img(1))  # PNG lossless
    assert np.array_equal(st[2], _img(2))  # FITS (3, H, W) uint8
    assert np.array_equal(st[3], _img(3))  # FITS float: rounded


def test_by_path_column(stampdir):
    rows = _rows(["x1", "b", "x3", "x4"], ["sub/other-name.png", None, str(stampdir / "c.fits"), "sub/missing.png"])
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
    assert status.tolist() == ["ok", "no_image", "bad_image", "bad_image", "bad_image", "bad_image", "no_image", "ok"]
    assert not st[1:7].any()  # failed rows: zero stamps
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
    src = open_source(SourceConfig("stamps", str(stampdir), (("threads", 1),)), SPEC)
    st, status = src.fetch(_rows([]))
    assert st.shape == (0, S, S, 3) and len(status) == 0
    src.close()


# ------------------------------------------------------------------------- the source registry
@register_source("toy-level")
class ToySource(SourceBase):
    """A source defined outside the package: a stamp of constant ``level`` per row, ``no_image``
    for ids starting with "x"."""

    @dataclass(frozen=True)
    class Options(SourceOptions):
        level: int = 7

    statuses = frozenset({"no_image"})

    def fetch(self, rows):
        stamps = empty_stamps(len(rows), self.spec)
        missing = rows["id"].str.startswith("x").to_numpy()
        stamps[~missing] = self.options.level
        return stamps, np.where(missing, "no_image", "ok").astype(object)


def test_options_of_the_stamps_source_are_checked(stampdir):
    """An option the source does not take (a misspelling, or another source's) is one line naming
    it, the source and the valid options; it is never silently ignored."""
    for bad, hint in ((("thread", 3),), "did you mean 'threads'?"), ((("timeout", 3.0),), "(valid: threads)"):
        with pytest.raises(ValueError) as e:
            open_source(SourceConfig("stamps", str(stampdir), bad), SPEC)
        msg = str(e.value)
        assert "\n" not in msg and f"unknown option {bad[0][0]!r}" in msg and "'stamps'" in msg and hint in msg
    with pytest.raises(ValueError, match="unknown option 'thread'"):
        StampSource(stampdir, SPEC, thread=2)


def test_unknown_kind_lists_the_registered_kinds():
    with pytest.raises(ValueError) as e:
        open_source(SourceConfig("stamp", "/nowhere"), SPEC)
    msg = str(e.value)
    assert "\n" not in msg and "unknown image source kind 'stamp'" in msg
    listed = msg.split("(registered: ")[1].split(";")[0].split(", ")
    assert {"frames", "service", "stamps", "toy-level"} <= set(listed) and listed == sorted(listed)
    with pytest.raises(ValueError, match="cannot import"):
        source_class("no.such.module:Source")


def test_builtins_and_capabilities_come_from_the_registry():
    found = registered_sources()
    assert {"stamps", "frames", "service", "toy-level"} <= set(found) and found["toy-level"] is ToySource
    assert [k for k, c in sorted(found.items()) if c.reads_path_column] == ["stamps"]
    assert [k for k, c in sorted(found.items()) if c.needs_network] == ["service"]
    assert found["frames"].statuses >= {"outside_footprint", "corrupt_frame"}
    assert SourceConfig("stamps", "/d", (("threads", 1),)).low_memory().options == (("threads", 1),)
    # a built-in kind cannot be taken over, and statuses must be schema statuses
    with pytest.raises(ValueError, match="already registered"):
        register_source("stamps", ToySource)

    class Odd(ToySource):
        statuses = frozenset({"no_such_status"})

    with pytest.raises(ValueError, match="no_such_status"):
        register_source("odd", Odd)
    assert "odd" not in registered_sources()


def test_a_toy_source_registers_and_opens_by_kind():
    cfg = SourceConfig("toy-level", "anywhere", (("level", 3),))
    assert source_class("toy-level") is ToySource and cfg.check() == ToySource.Options(level=3)
    with open_source(cfg, SPEC) as src:
        stamps, status = src.fetch(_rows(["a", "x1", "b"]))
    assert isinstance(src, ToySource) and src.name == "toy-level"
    assert status.tolist() == ["ok", "no_image", "ok"] and stamps.shape == (3, S, S, 3)
    assert (stamps[0] == 3).all() and (stamps[1] == 0).all()
    with pytest.raises(ValueError, match=r"image source 'toy-level': unknown option 'levle' .*did you mean 'level'"):
        open_source(SourceConfig("toy-level", "anywhere", (("levle", 3),)), SPEC)
    # also by "module:Class", without registering under a kind
    assert source_class(f"{ToySource.__module__}:ToySource") is ToySource


def test_a_worker_process_finds_a_source_registered_in_the_parent():
    """A pickled SourceConfig carries its class's module:qualname; a fresh process (as a Dask
    worker) that never imported the test module imports it on first use and opens the toy."""
    cfg = pickle.dumps(SourceConfig("toy-level", "anywhere", (("level", 9),)))
    code = """if True:
        import json, pickle, sys
        sys.path[:0] = json.loads(sys.argv[1])
        import pandas as pd
        from mergerscan.cutouts import registry
        from mergerscan.cutouts.preprocess import PreprocessSpec
        mod = sys.argv[3]
        assert mod not in sys.modules and "toy-level" not in registry._origins
        cfg = pickle.loads(bytes.fromhex(sys.argv[2]))
        assert mod not in sys.modules                        # imported on use, not on unpickling
        src = registry.open_source(cfg, PreprocessSpec())
        stamps, status = src.fetch(pd.DataFrame({"id": ["a", "x"], "ra": [0.0, 0.0], "dec": [0.0, 0.0]}))
        print(type(src).__module__, int(stamps[0].max()), *status)
    """
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(sys.path), cfg.hex(), ToySource.__module__],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [ToySource.__module__, "9", "ok", "no_image"]
    # what travels: the toy's origin; a built-in kind needs none (BUILTIN names its module)
    assert SourceConfig("toy-level", "a").__reduce__()[1][3] == f"{ToySource.__module__}:ToySource"
    assert SourceConfig("stamps", "/d").__reduce__()[1][3] is None
    assert pickle.loads(pickle.dumps(SourceConfig("stamps", "/d", (("threads", 1),)))) == SourceConfig(
        "stamps", "/d", (("threads", 1),)
    )


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
