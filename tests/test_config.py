"""params.yaml validation: typed sections, clear errors, numbers that DVC writes as strings."""

from pathlib import Path

import pytest

from longtail.config import Config, ConfigError, load, parse, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_parse() -> None:
    cfg = load(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.data.name == "digits"
    assert cfg.loss.name == "cdb_ce"
    assert cfg.pretrain.loss.name == "ce"


def test_defaults_roundtrip() -> None:
    cfg = parse({})
    assert parse(to_dict(cfg)) == cfg


def test_strings_from_dvc_set_are_numbers() -> None:
    cfg = parse(
        {"pretrain": {"lr": "1e-05", "epochs": "3"}, "loss": {"name": "cdb_ce", "tau": "1.5"}}
    )
    assert cfg.pretrain.optim.lr == pytest.approx(1e-5)
    assert cfg.pretrain.optim.epochs == 3
    assert cfg.loss.kwargs() == {"tau": 1.5}


def test_loss_options_only_reach_the_loss_that_takes_them() -> None:
    cfg = parse({"loss": {"name": "fbl", "tau": 1.0, "lam": 60}})
    assert cfg.loss.kwargs() == {"lam": 60}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"loss": {"name": "nope"}}, "loss.name: expected one of ce, focal"),
        ({"data": {"imbalance": 0.5}}, "data.imbalance: expected a number >= 1"),
        ({"loss": {"name": "cdb_ce", "tau": -1}}, "loss.tau"),
        ({"loss": {"name": "cdb_ce", "tau": "often"}}, "loss.tau"),
        ({"data": {"name": "mnist"}}, "data.name: expected one of "),
        ({"data": {"nmax": 3}}, "data.nmax: unknown key; valid keys here are"),
        ({"pretrain": {"lr": "fast"}}, "pretrain.lr: expected a number; got 'fast'"),
        ({"pretrain": {"epochs": 2.5}}, "pretrain.epochs: expected an integer"),
        ({"device": "tpu"}, "device: expected one of auto, cpu, cuda; got 'tpu'"),
        ({"finetune": {"sampler": "lucky"}}, "finetune.sampler: expected one of instance"),
        ({"model": {"arch": "vgg"}}, "model.arch: expected one of auto, "),
        ({"pretrain": {"loss": {"name": "focal", "gamma": -1}}}, "pretrain.loss.gamma"),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse(raw)


def test_unknown_loss_lists_every_registered_name() -> None:
    from longtail import losses

    with pytest.raises(ConfigError) as err:
        parse({"loss": {"name": "nope"}})
    for name in losses.names():
        assert name in str(err.value)
