import pytest
import yaml

from tdrm import config


def test_shipped_profiles_all_load(params_raw):
    for name in ["default", *params_raw["profiles"]]:
        p = config.from_dict({**params_raw, "profile": name})
        assert p.profile == name
    paper = config.from_dict({**params_raw, "profile": "paper"})
    m = paper.teacher.model
    assert (m.hidden, m.layers, m.T, m.n, m.n_sup) == (512, 2, 3, 6, 16)
    assert (paper.teacher.batch, paper.teacher.lr, paper.teacher.weight_decay, paper.teacher.ema) == (768, 1e-4, 1.0, 0.999)
    assert paper.data.num_aug == 1000 and paper.data.splits.train == 1000


def test_unknown_key_raises(params_raw):
    params_raw["teacher"]["lrr"] = 1.0
    with pytest.raises(config.ConfigError, match="lrr"):
        config.from_dict(params_raw)


def test_nested_unknown_key_and_bad_type(params_raw):
    params_raw["teacher"]["model"]["hiden"] = 3
    with pytest.raises(config.ConfigError, match="teacher.model.*hiden"):
        config.from_dict(params_raw)
    params_raw["teacher"]["model"].pop("hiden")
    params_raw["teacher"]["steps"] = "many"
    with pytest.raises(config.ConfigError, match="teacher.steps"):
        config.from_dict(params_raw)


def test_misspelt_section_and_unknown_profile(params_raw):
    with pytest.raises(config.ConfigError, match="teacher"):
        config.from_dict({**params_raw, "teachers": {}})
    with pytest.raises(config.ConfigError, match="profile 'huge'"):
        config.from_dict({**params_raw, "profile": "huge"})


def test_dataclasses_are_frozen(params_raw):
    p = config.from_dict(params_raw)
    with pytest.raises(Exception):
        p.teacher.lr = 3.0


def test_load_file(tmp_path, params_raw):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params_raw))
    assert config.load(f).teacher.model.hidden == 64
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
