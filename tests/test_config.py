"""Experiment configs and `--config.a.b=value` overrides."""

import pytest

from conftest import REPO
from semgan_jax.config import apply_overrides, load_config_file


def test_celebamask_256_has_the_reference_defaults():
    c = load_config_file(REPO / "experiments" / "celebamask_256.py")
    assert (c.model.size, c.model.channel_multiplier, c.model.seg_dim, c.model.style_dim, c.model.n_mlp) == (
        256, 2, 8, 512, 8)
    t = c.train
    assert (t.batch_size, t.lr, t.r1, t.path_regularize, t.path_batch_shrink, t.d_reg_every, t.g_reg_every,
            t.mixing, t.lambda_dseg_feat, t.iterations) == (16, 0.002, 10.0, 2.0, 2, 16, 4, 0.9, 2.0, 800_000)
    assert t.ema_decay == pytest.approx(0.5 ** (32 / 10000))


def test_synthetic_32_is_narrow():
    c = load_config_file(REPO / "experiments" / "synthetic_32.py")
    assert (c.data.name, c.model.size, c.model.seg_dim, c.model.channel_max) == ("synthetic", 32, 6, 32)


def test_overrides_coerce_to_the_field_type():
    c = load_config_file(REPO / "experiments" / "synthetic_32.py")
    apply_overrides(c, ["--config.train.lr=1e-3", "--config.train.iterations=7", "config.data.name=isic2018",
                        "--config.log.max_minutes=2"])
    assert (c.train.lr, c.train.iterations, c.data.name, c.log.max_minutes) == (1e-3, 7, "isic2018", 2.0)
    assert isinstance(c.log.max_minutes, float)


@pytest.mark.parametrize("item, message", [
    ("--config.train.bogus=1", "no field 'bogus'"),
    ("--config.nosection.x=1", "no field 'nosection'"),
    ("--config.train.iterations=ten", "cannot parse 'ten'"),
    ("--config.train.iterations=1.5", "expected int"),
    ("--train.iterations=3", "not of the form"),
    ("--config.train.iterations", "not of the form"),
])
def test_bad_overrides_are_refused(item, message):
    c = load_config_file(REPO / "experiments" / "synthetic_32.py")
    with pytest.raises(ValueError, match=message):
        apply_overrides(c, [item])


def test_missing_config_file_and_missing_get_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path / "nope.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        load_config_file(tmp_path / "empty.py")


@pytest.mark.parametrize("name", ["celebamask_256", "isic_256", "xray_256", "synthetic_32"])
def test_stage1_configs_fit_their_datasets(name):
    """Every stage-1 config's networks match its dataset (classes, channels, resolution), and its
    stage-2 and U-Net companions load."""
    from semgan_jax.data.datasets import get_dataset_info
    from semgan_jax.train.gan import check_model_against_data

    c = load_config_file(REPO / "experiments" / f"{name}.py")
    check_model_against_data(c.model, c.data)
    encoder = load_config_file(REPO / "experiments" / f"{name}_encoder.py")
    if name != "synthetic_32":  # the reference trains both stages at one batch; the small recipe
        assert encoder.train.batch_size == c.train.batch_size  # runs stage 1 at 8 (docs/learning.md)
    unet = load_config_file(REPO / "experiments" / f"{name}_unet.py")
    assert (unet.data.name, unet.data.resolution) == (c.data.name, c.data.resolution)
    assert c.data.name in {"synthetic", "celebamask_hq"} or get_dataset_info(c.data.name).ood_splits
