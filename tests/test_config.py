import pytest

from defeat.config import Config, ConfigError, config_from_dict, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: retinanet_r34_fpn\noptim:\n  lr: 1\n")
    cfg = load_config(path, ["optim.name=adamw", "schedule.milestones=[10, 20]", "data.hflip_prob=0"])
    assert isinstance(cfg, Config)
    assert cfg.model.name == "retinanet_r34_fpn"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted where float is expected
    assert cfg.optim.name == "adamw" and cfg.schedule.milestones == [10, 20] and cfg.data.hflip_prob == 0.0
    assert load_config(None).model.name == Config().model.name


@pytest.mark.parametrize(
    "values, overrides, message",
    [
        ({"optim": {"lrr": 1}}, [], "unknown key 'optim.lrr'"),
        ({}, ["model.nmae=x"], "unknown key 'model.nmae'"),
        ({"data": {"batch_size": "four"}}, [], "data.batch_size: expected an integer"),
        ({"data": {"batch_size": 2.5}}, [], "data.batch_size: expected an integer"),
        ({"bf16": "yes"}, [], "bf16: expected true/false"),
        ({}, ["schedule.milestones=5"], "schedule.milestones: expected a list"),
        ({}, ["model.norm=layer"], "model.norm: unknown value 'layer'"),
        ({}, ["distill.feature_mode=objects"], "distill.feature_mode: unknown value"),
        ({}, ["distill.alpha_bg=-1"], "distill.alpha_bg: must be >= 0"),
        ({}, ["distill.temperature_obj=0"], "distill.temperature_obj: must be > 0"),
        ({"model": 3}, [], "model: expected a mapping"),
        ({}, ["optim.lr"], "expected key=value"),
    ],
)
def test_invalid_configs_name_the_key(values, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        config_from_dict(values, overrides, source="cfg.yaml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim:\n  momentum: fast\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: optim.momentum: expected float"):
        load_config(wrong)


def test_null_restores_the_default():
    """``--set key=null`` (or ``key: null`` in a file) undoes a value a config set; optional keys become null."""
    values = {"model": {"anchor_sizes": [16, 32, 64, 128, 256], "norm": "gn", "trainable_layers": 3}}
    cfg = config_from_dict(values, ["model.anchor_sizes=null", "model.norm=null", "model.trainable_layers=null"])
    assert cfg.model.anchor_sizes == Config().model.anchor_sizes and cfg.model.norm == "auto"
    assert cfg.model.trainable_layers is None


def test_anchor_sizes_take_a_list_of_sizes_per_level():
    sizes = [[16, 32, 64, 128, 256]] * 3
    cfg = config_from_dict({}, ["model.name=fasterrcnn_mobilenet_v3_large_fpn", f"model.anchor_sizes={sizes}"])
    assert cfg.model.anchor_sizes == sizes
    with pytest.raises(ConfigError, match="model.anchor_sizes"):
        config_from_dict({}, ["model.anchor_sizes=[[16, 'a']]"])


def test_yolo_section_and_yolo_data():
    from defeat.config import ConfigError, config_from_dict

    cfg = config_from_dict({"yolo": {"imgsz": 128, "args": {"mosaic": 0.0}, "distill": "ultralytics"}})
    assert (cfg.yolo.imgsz, cfg.yolo.args, cfg.yolo.distill, cfg.data.yolo_data) == (
        128,
        {"mosaic": 0.0},
        "ultralytics",
        "",
    )
    with pytest.raises(ConfigError, match="yolo.args: expected a mapping"):
        config_from_dict({"yolo": {"args": [1]}})
    with pytest.raises(ConfigError, match="yolo.imgsz: must be > 0"):
        config_from_dict({"yolo": {"imgsz": 0}})
    with pytest.raises(ConfigError, match="yolo.distill: unknown value 'mmdet'"):
        config_from_dict({"yolo": {"distill": "mmdet"}})
