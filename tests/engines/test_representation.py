"""The representation block (penultimate features -> PCA embedding + image-domain score inside the
engine graph): the same numbers from ONNX Runtime and torch on CPU, averaged over the views like
the logit, the logit untouched, engines without a block unchanged.

The engine is a small EfficientNet-Lite0 (64 px) exported here with a block fitted on the pooled
features of conftest's real SDSS stamps (k=8), so nothing depends on the packaged model.
Tolerances: p_merger 1e-5 (the existing fp32 parity tests measure ~1e-6); embedding and
domain_score 1e-4 relative to their scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import lite0_engine
from mergerscan.engines import load_engine
from mergerscan.engines.representation import DOMAIN_SCORE, EMBEDDING, has_block, read_block


def _close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    assert a.shape == b.shape and np.abs(a - b).max() <= tol * scale, (
        f"max {np.abs(a - b).max():.2e} (scale {scale:.1f})"
    )


@pytest.fixture(scope="module")
def plain_engine(tmp_path_factory):
    by_views = {"1": {"temperature": 1.0, "threshold": 0.5}, "4": {"temperature": 1.2, "threshold": 0.5}}
    return lite0_engine(tmp_path_factory.mktemp("repr") / "plain.onnx", "test-lite0-64-repr", seed=1, by_views=by_views)


@pytest.fixture(scope="module")
def block_engine(plain_engine, real_stamps, tmp_path_factory):
    """The plain engine plus a block fitted on the backbone-pool features of the real stamps."""
    import onnx

    from mergerscan.training.representation import embed, extract, feature_tensors, fit_block

    tensors = feature_tensors(onnx.load(str(plain_engine)))
    x = extract(plain_engine, real_stamps, {"backbone_pool": tensors["backbone_pool"]})["backbone_pool"]
    rep, _ = fit_block(x, 8)
    updates = {
        "representation": {"features": "backbone_pool", "k": 8},
        "domain": {"image": {"score": "pca_mahalanobis_residual", "threshold": 3.0}},
    }
    out = embed(plain_engine, rep, tensors["backbone_pool"], updates, tmp_path_factory.mktemp("repr") / "block.onnx")
    return out, rep, x


def test_feature_tensors_found_in_exported_graphs(plain_engine, cheap_engine):
    import onnx

    from mergerscan.training.representation import feature_tensors

    t = feature_tensors(onnx.load(str(plain_engine)))
    assert set(t) == {"backbone_pool", "hidden"}
    assert set(feature_tensors(onnx.load(str(cheap_engine)))) == {"backbone_pool"}  # no hidden layer in its head


def test_block_matches_numpy_reference_and_keeps_p_merger(plain_engine, block_engine, real_stamps):
    path, rep, x = block_engine
    plain, eng = load_engine(plain_engine, threads=2), load_engine(path, threads=2)
    assert not plain.has_representation and eng.has_representation
    before = plain.score(real_stamps)
    assert before.domain_score is None and before.features is None  # an engine without a block: as before
    out = eng.score(real_stamps, features=True)
    assert np.abs(out.p_merger - before.p_merger).max() <= 1e-6
    assert np.array_equal(eng.predict(real_stamps), out.p_merger)
    emb, d = rep.apply(x)
    _close(out.features, emb)
    _close(out.domain_score, d)
    assert out.domain_score.dtype == np.float32 and out.features.shape == (len(real_stamps), 8)
    assert eng.info.domain.image.threshold == 3.0
    assert eng.score(real_stamps).features is None  # only when asked


def test_torch_parity_with_onnxruntime(block_engine, real_stamps):
    path, _, _ = block_engine
    for views in (1, 4):
        ref = load_engine(path, threads=2, views=views).score(real_stamps, features=True)
        got = load_engine(path, backend="torch", threads=2, views=views).score(real_stamps, features=True)
        assert np.abs(got.p_merger - ref.p_merger).max() <= 1e-5
        _close(got.domain_score, ref.domain_score)
        _close(got.features, ref.features)


def test_views_average_every_output(block_engine, real_stamps):
    """At 4 views each output is the mean of the four views' outputs (the logit's rule)."""
    from mergerscan.engines.base import VIEWS

    path, _, _ = block_engine
    one = load_engine(path, threads=2, views=1)
    four = load_engine(path, threads=2, views=4).score(real_stamps[:6], features=True)
    per_view = [
        one.score(
            np.ascontiguousarray(
                np.flip(np.rot90(real_stamps[:6], k, axes=(1, 2)), 2)
                if f
                else np.rot90(real_stamps[:6], k, axes=(1, 2))
            ),
            features=True,
        )
        for k, f in VIEWS[4]
    ]
    _close(four.domain_score, np.mean([v.domain_score for v in per_view], 0), 1e-3)
    _close(four.features, np.mean([v.features for v in per_view], 0), 1e-3)


def test_refit_replaces_the_block(block_engine, tmp_path):
    import onnx

    from mergerscan.training.representation import embed

    path, rep, _ = block_engine
    again = embed(path, rep, _tensor(path), {}, tmp_path / "again.onnx")
    a, b = onnx.load(str(path)), onnx.load(str(again))
    assert len(a.graph.node) == len(b.graph.node) and has_block(b)
    assert [o.name for o in b.graph.output] == ["logit", EMBEDDING, DOMAIN_SCORE]
    from onnx import numpy_helper

    blk = read_block({i.name: numpy_helper.to_array(i) for i in b.graph.initializer})
    assert blk is not None and np.array_equal(blk.components, rep.components)


def _tensor(path):
    import onnx

    from mergerscan.training.representation import feature_tensors

    return feature_tensors(onnx.load(str(path)))["backbone_pool"]


def test_fp16_session_keeps_the_block_fp32(block_engine, real_stamps):
    path, _, _ = block_engine
    ref = load_engine(path, threads=2).score(real_stamps)
    got = load_engine(path, backend="onnxruntime:fp16", threads=2).score(real_stamps)
    assert np.abs(got.p_merger - ref.p_merger).max() <= 1e-2
    _close(got.domain_score, ref.domain_score, 2e-2)


def test_shared_batch_engine_merges_score_calls(block_engine, real_stamps):
    """A GPU worker's shared engine merges the threads' batches for score() as for predict()."""
    from concurrent.futures import ThreadPoolExecutor

    from mergerscan.engines.batching import SharedBatchEngine

    path, _, _ = block_engine
    inner = load_engine(path, threads=2)
    ref = inner.score(real_stamps, features=True)
    shared = SharedBatchEngine(inner, batch=64, max_wait_s=0.05)
    try:
        with ThreadPoolExecutor(3) as ex:
            parts = list(ex.map(lambda i: shared.score(real_stamps[i : i + 8], features=True), range(0, 24, 8)))
        assert shared.has_representation
        _close(np.concatenate([p.domain_score for p in parts]), ref.domain_score, 1e-5)
        _close(np.concatenate([p.features for p in parts]), ref.features, 1e-5)
        assert np.abs(np.concatenate([p.p_merger for p in parts]) - ref.p_merger).max() <= 1e-6
        assert shared.score(real_stamps[:0]).domain_score.shape == (0,)
    finally:
        shared.close()


def test_packaged_default_engine_has_the_block_on_every_cpu_backend(real_stamps):
    """The default engine file carries the block and its calibrated image-domain threshold; ONNX
    Runtime and torch give the same p_merger, domain_score and embedding on real stamps."""
    from mergerscan.engines import default_engine_path

    ort = load_engine(default_engine_path(), threads=2)
    assert ort.has_representation and ort.info.domain.image.threshold > 0
    assert ort.info.card.representation.k == 64 and ort.info.card.representation.features == "backbone_pool"
    ref = ort.score(real_stamps[:12], features=True)
    got = load_engine(default_engine_path(), backend="torch", threads=2).score(real_stamps[:12], features=True)
    assert np.abs(got.p_merger - ref.p_merger).max() <= 1e-5
    _close(got.domain_score, ref.domain_score)
    _close(got.features, ref.features)
    assert np.array_equal(ort.predict(real_stamps[:12]), ref.p_merger)
