import json

import pytest

from vaeood.training.config import Config, ConfigError


def test_defaults_round_trip_through_dict():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_dotted_overrides_are_parsed_by_field_type():
    cfg = Config().override({"model.latent_dim": "32", "train.lr": "3e-4", "data.limit": "none",
                             "data.allow_sample": "True", "model.likelihood": "dlogistic",
                             "model.likelihood_options": '{"n_mix": 3}'})
    assert cfg.model.latent_dim == 32
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.limit is None
    assert cfg.data.allow_sample is True
    assert cfg.model.likelihood_options == {"n_mix": 3}


@pytest.mark.parametrize("overrides, message", [
    ({"model.latnt_dim": "3"}, "did you mean 'model.latent_dim'"),
    ({"train.epochs": "1.5"}, "expected int"),
    ({"train.lr": "fast"}, "cannot parse 'fast'"),
    ({"model.latent_dim.x": "1"}, "has no sub-keys"),
])
def test_bad_overrides_are_refused_clearly(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().override(overrides)


def test_config_file_rejects_unknown_keys_with_suggestion(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"latentdim": 8}}))
    with pytest.raises(ConfigError, match=r"c\.json.*'latentdim'.*did you mean 'latent_dim'"):
        Config.from_file(path)


def test_toml_config_file_loads(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nlikelihood = "dlogistic"\nlatent_dim = 8\n[train]\nlr = 1\n')
    cfg = Config.from_file(path)
    assert (cfg.model.likelihood, cfg.model.latent_dim, cfg.train.lr) == ("dlogistic", 8, 1.0)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        Config.from_file(path)
