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
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.teacher.lr = 3.0


def test_load_file(tmp_path, params_raw):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(params_raw))
    assert config.load(f).teacher.model.hidden == 64
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("section,closest", [("evalute", "evaluate"), ("teachr", "teacher"), ("date", "data"),
                                             ("distil", "distill")])
def test_misspelt_top_level_sections_raise_naming_the_closest(params_raw, section, closest):
    with pytest.raises(config.ConfigError, match=f"'{section}'.*did you mean '{closest}'"):
        config.from_dict({**params_raw, section: {}})


def test_inactive_profile_entries_are_validated(params_raw):
    params_raw["profiles"]["paper"]["teacher"]["lrr"] = 3e-4  # profile default is active
    with pytest.raises(config.ConfigError, match=r"profiles.paper: teacher: unknown key 'lrr' \(did you mean 'lr'\?\)"):
        config.from_dict(params_raw)
    params_raw["profiles"]["paper"]["teacher"].pop("lrr")
    params_raw["profiles"]["sudoku9"]["distil"] = {"steps": 3}
    with pytest.raises(config.ConfigError, match="profiles.sudoku9: unknown section 'distil'.*'distill'"):
        config.from_dict(params_raw)
    params_raw["profiles"]["sudoku9"].pop("distil")
    params_raw["profiles"]["tiny"]["rl"]["group_size"] = "many"
    with pytest.raises(config.ConfigError, match="profiles.tiny: rl.group_size: expected int"):
        config.from_dict(params_raw)


def test_dist_is_a_top_level_launch_setting_that_profiles_cannot_set(params_raw):
    p = config.from_dict(params_raw)
    assert (p.dist.nproc, p.dist.timeout_s) == (1, 1800.0)  # what dvc.yaml's ${dist.nproc} reads
    params_raw["profiles"]["paper"]["dist"] = {"nproc": 8}
    with pytest.raises(config.ConfigError, match=r"profiles.paper: 'dist' cannot be set by a profile.*-S dist.nproc=2"):
        config.from_dict(params_raw)
    params_raw["profiles"]["paper"].pop("dist")
    params_raw["dist"]["nprocs"] = 2
    with pytest.raises(config.ConfigError, match="dist: unknown key 'nprocs' \\(did you mean 'nproc'\\?\\)"):
        config.from_dict(params_raw)


def test_unknown_key_names_the_closest_valid_one(params_raw):
    params_raw["distill"]["row_nosie"] = "rolling"
    with pytest.raises(config.ConfigError, match="distill: unknown key 'row_nosie' \\(did you mean 'row_noise'\\?\\)"):
        config.from_dict(params_raw)
