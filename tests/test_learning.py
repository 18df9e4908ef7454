"""What makes short runs learn: the EMA ramp-up and the training-time budget."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import production_llvm_level
from semgan_jax.train.state import EMA_DECAY, ema_decay_at


def _ada_beta(step, batch, ema_kimg, rampup):
    """StyleGAN2-ADA training_loop.py, as written there (cur_nimg = images seen before the update)."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, step * batch * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@pytest.mark.parametrize("batch", [4, 16, 32])
def test_ema_rampup_is_stylegan2_ada_formula(batch):
    # the reference's decay is ADA's with ema_kimg = 10 at batch 32: half-life 312.5 iterations
    ema_kimg = 10 * batch / 32
    for step in [0, 1, 2, 7, 100, 1000, 6249, 6250, 6251, 20000]:
        got = float(ema_decay_at(jnp.int32(step), EMA_DECAY, 0.05))
        np.testing.assert_allclose(got, _ada_beta(step, batch, ema_kimg, 0.05), rtol=2e-6, atol=1e-7)
    assert float(ema_decay_at(0, EMA_DECAY, 0.05)) == 0.0  # the first update copies G


def test_ema_without_rampup_is_the_reference_constant():
    for step in [0, 5, 10_000]:
        assert ema_decay_at(step, EMA_DECAY, 0.0) == 0.5 ** (32 / 10000)
    # after the ramp ends the decay is the constant one
    assert math.isclose(float(ema_decay_at(10**6, EMA_DECAY, 0.05)), EMA_DECAY, rel_tol=1e-6)


def test_ema_rampup_forgets_the_initialisation_in_a_short_run():
    """After 350 iterations of a constant target, the reference keeps 46 % of the initial
    weights (the demo's blobs); the ramp-up keeps almost none."""
    def run(rampup):
        step = jax.jit(lambda e, i: e * ema_decay_at(i, EMA_DECAY, rampup) + (1 - ema_decay_at(i, EMA_DECAY, rampup)))
        ema = jnp.float32(0.0)
        for i in range(1, 351):  # step 0 is the copy of the initial weights (0 here)
            ema = step(ema, i)
        return 1.0 - float(ema)   # weight still on the initial value
    assert run(0.0) == pytest.approx(0.5 ** (350 * 32 / 10000), rel=1e-3)
    assert run(0.05) < 1e-6


# ------------------------------------------------------------------------------ oracle metrics

ORACLE_ITERS = 300


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A 16-px oracle of the in-memory synthetic faces (a few hundred U-Net iterations, compiled
    as production compiles them), cached under a temporary SEMGAN_JAX_ORACLE root."""
    from semgan_jax import oracle as oracle_lib

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMGAN_JAX_ORACLE", str(tmp_path_factory.mktemp("oracle_root")))
        with production_llvm_level():
            built = oracle_lib.load_oracle("synthetic", 16, None, iterations=ORACLE_ITERS)
        yield built


def _test_pairs(n=500):
    from semgan_jax.data.pipeline import image_to_float
    from semgan_jax.data.synthetic import synthetic_split

    src = synthetic_split("test", 16)
    ex = [src[i] for i in range(n)]
    return image_to_float(np.stack([e["image"] for e in ex])), np.stack([e["mask"] for e in ex]).astype(np.int32)


def test_oracle_agreement_of_real_pairs_is_its_test_miou(oracle):
    from semgan_jax import oracle as oracle_lib

    images, masks = _test_pairs()
    assert oracle.record["test_miou"] > 0.6, oracle.record  # an oracle worth the name, even this small
    assert oracle_lib.mask_agreement(oracle, images, masks) == pytest.approx(oracle.record["test_miou"], abs=1e-6)
    shuffled = masks[np.random.default_rng(0).permutation(len(masks))]
    assert oracle_lib.mask_agreement(oracle, images, shuffled) < oracle.record["test_miou"] - 0.25


def test_random_generator_scores_near_chance(oracle):
    import jax

    from semgan_jax import oracle as oracle_lib
    from semgan_jax.metrics import FeatureStats, frechet_distance
    from semgan_jax.models.generator import Generator, init_generator

    g = Generator(size=16, style_dim=32, n_mlp=2, seg_dim=6, channel_max=16)
    params = init_generator(g, jax.random.PRNGKey(0))["params"]
    run = jax.jit(lambda z, k: g.apply({"params": params}, z, rngs={"noise": k}))

    def sample_fn(key, b):
        kz, kn = jax.random.split(key)
        return run(jax.random.normal(kz, (b, 32)), kn)

    scores = oracle_lib.generator_scores(oracle, sample_fn, jax.random.PRNGKey(1), 256)
    # chance: G's masks as unrelated to the oracle's as a shuffled real pairing, or worse
    images, masks = _test_pairs()
    chance = oracle_lib.mask_agreement(oracle, images, masks[np.random.default_rng(0).permutation(len(masks))])
    assert scores["agreement"] < chance + 0.05, (scores, chance)
    # real training images sit far closer to the test split than the random generator's images
    from semgan_jax.data.pipeline import image_to_float
    from semgan_jax.data.synthetic import synthetic_split

    src = synthetic_split("train", 16)
    real = image_to_float(np.stack([src[i]["image"] for i in range(256)]))
    stats = FeatureStats(oracle(real[:2])[1].shape[1])
    stats.update(oracle(real)[1])
    real_ofd = frechet_distance(stats.mean, stats.cov, *oracle.split_stats("test"))
    assert scores["ofd"] > 5 * real_ofd, (scores, real_ofd)


def test_stage1_logs_and_plots_the_oracle_scores_and_ramps_its_ema(oracle, tmp_path):
    """A stage-1 run with eval.oracle logs the four oracle numbers; `semgan plot` charts them; with
    the ramp-up the first EMA update copies G (decay 0 at step 0)."""
    from conftest import tiny_gan_config

    from semgan_jax.cli import main
    from semgan_jax.train import gan

    cfg = tiny_gan_config(**{"eval.oracle": True, "eval.every": 1, "eval.oracle_samples": 64,
                             "train.iterations": 1, "train.ema_rampup": 0.05})
    state = gan.train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scores = [r for r in rows if "oracle_agreement" in r]
    assert [r["step"] for r in scores] == [1]
    for key in ("oracle_agreement", "oracle_agreement_ema", "oracle_ofd", "oracle_ofd_ema"):
        assert np.isfinite(scores[0][key]), key
    assert 0 <= scores[0]["oracle_agreement_ema"] <= 1 and scores[0]["oracle_ofd_ema"] > 0
    for a, b in zip(jax.tree.leaves(state.g_ema), jax.tree.leaves(state.g)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "oracle_agreement.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "oracle_ofd.png").stat().st_size > 1000
