import pytest
import yaml

from harness.config import (
    TrialConfig,
    config_from_dict,
    encoder_output_size,
    load_config,
    save_config,
    with_overrides,
)
from harness.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = with_overrides(TrialConfig(), {"optim.lr": 3e-4, "model.fcn_bn": False, "name": "x1"})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_apply_on_top_of_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-4\n  f_lr: 1e-5\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == 1e-4 and cfg.optim.f_lr == 1e-5  # "1e-4" is a string to YAML
    cfg = with_overrides(cfg, {"train.epochs": 5, "optim.lr": None})
    assert cfg.train.epochs == 5 and cfg.optim.lr == 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lr": 0.0}, "optim.lr=0.0: must be > 0"),
        ({"optim.lr": -1e-3}, "optim.lr=-0.001: must be > 0"),
        ({"optim.f_lr": -1.0}, "optim.f_lr=-1.0: must be >= 0"),
        ({"train.epochs": 0}, "train.epochs=0: must be >= 1"),
        ({"train.batch_size": 0}, "train.batch_size=0: must be >= 1"),
        ({"data.overlap": "union"}, "data.overlap='union': must be one of max-class"),
        ({"data.image_size": 64, "model.fc_kernel": 7}, "data.image_size=64: five pools leave"),
        ({"data.image_size": 16}, "data.image_size=16: must be >= 32"),
        ({"train.device": "gpu"}, "train.device='gpu': must be auto, cpu"),
        ({"name": "../x"}, "name='../x': must be letters"),
        ({"model.width": 0.0}, "model.width=0.0: must be > 0"),
        ({"tracking.backend": "mlflow"}, "tracking.backend='mlflow': must be one of wandb, local"),
        ({"tracking.project": "a/b"}, "tracking.project='a/b': must be 1-128 characters"),
        ({"tracking.entity": "me you"}, "tracking.entity='me you': must be letters"),
        ({"tracking.media_every": 0}, "tracking.media_every=0: must be >= 1"),
        ({"tracking.media_images": -1}, "tracking.media_images=-1: must be >= 0"),
    ],
)
def test_invalid_values_name_field_value_and_rule(overrides, message):
    with pytest.raises(ConfigError) as exc:
        with_overrides(TrialConfig(), overrides)
    assert message in str(exc.value)


def test_unknown_yaml_keys_are_rejected_with_their_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: optim.learning_rate: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="optimizer: unknown key"):
        config_from_dict({"optimizer": {}})


def test_wrong_types_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs='ten': must be an integer"):
        config_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"model.fcn_bn='yes please': must be true or false"):
        config_from_dict({"model": {"fcn_bn": "yes please"}})
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_encoder_output_size_is_ceil_of_five_halvings():
    assert encoder_output_size(224) == 7
    assert encoder_output_size(512) == 16
    assert encoder_output_size(100) == 4  # 50, 25, 13, 7, 4
    # the paper config is valid at 224 and 512
    paper = {"model.width": 1.0, "model.fc_channels": 4096, "model.fc_kernel": 7}
    for size in (224, 512):
        with_overrides(TrialConfig(), {**paper, "data.image_size": size})


def test_to_dict_is_plain_yaml():
    text = yaml.safe_dump(TrialConfig().to_dict())
    assert "!!python" not in text


def test_tracking_section_round_trips_and_old_configs_still_load(tmp_path):
    cfg = with_overrides(TrialConfig(), {"tracking.backend": "local", "tracking.log_model": True})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").tracking == cfg.tracking
    (tmp_path / "old.yaml").write_text("optim: {lr: 1e-4}\n")  # written before tracking existed
    assert load_config(tmp_path / "old.yaml").tracking.backend == "wandb"
