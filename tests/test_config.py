"""params.yaml validation: typed sections, clear errors, numbers that DVC writes as strings."""

from pathlib import Path

import pytest

from longtail import losses
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
    assert losses.kwargs(cfg.loss) == {"tau": 1.5}


def test_loss_options_only_reach_the_loss_that_takes_them() -> None:
    cfg = parse({"loss": {"name": "fbl", "tau": 1.0, "lam": 60}})
    assert losses.kwargs(cfg.loss) == {"lam": 60}


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
        ({"finetune": {"lr_update": "batch"}}, "finetune.lr_update: expected one of step, epoch"),
        (
            {"pretrain": {"lr_update": "epoch_prestep", "warmup_epochs": 5}},
            "pretrain.warmup_epochs: expected 0 with pretrain.lr_update: epoch_prestep",
        ),
        (
            {
                "pretrain": {"schedule": "step", "lr_update": "epoch"},
                "finetune": {"schedule": "step", "optimizer": "continue"},
            },
            "finetune.lr_update: expected pretrain.lr_update's value 'epoch'",
        ),
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


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"loss": {"name": "cdb_ce", "gamma": -1}}, "loss.gamma: expected a number >= 0"),
        ({"loss": {"name": "ce", "beta": 1.5}}, "loss.beta: expected"),
        ({"loss": {"name": "balanced_softmax", "max_m": -0.5}}, "loss.max_m: expected"),
        ({"loss": {"name": "cdb_ce", "base": "hinge"}}, "loss.base: expected one of"),
        ({"pretrain": {"loss": {"name": "ce", "gamma": -1}}}, "pretrain.loss.gamma: expected"),
        ({"loss": {"name": "ce", "typo": 1}}, "loss.typo: unknown key; valid keys here are name"),
    ],
)
def test_every_loss_option_is_checked_whichever_loss_is_selected(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse(raw)


def test_an_option_value_some_loss_takes_passes_under_another_loss() -> None:
    # tau: dynamic is CDB-CE's; logit adjustment takes numbers only: valid while cdb_ce is unused
    cfg = parse({"loss": {"name": "ce", "tau": "dynamic"}})
    assert losses.kwargs(cfg.loss) == {}
    with pytest.raises(ConfigError, match=r"loss\.tau"):
        parse({"loss": {"name": "logit_adjust", "tau": "dynamic"}})


def test_loss_option_checks_follow_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss registered later brings its own option and its own check, with no list to edit."""
    from longtail import losses

    class Scaled(losses.CrossEntropy):
        def __init__(self, class_counts, *, scale_by: float = 1.0) -> None:
            super().__init__(class_counts)
            if not scale_by > 0:
                raise ValueError(f"scale_by: expected a number > 0, got {scale_by}")

    monkeypatch.setitem(losses.LOSSES, "scaled_ce_test", Scaled)
    assert losses.kwargs(parse({"loss": {"name": "ce", "scale_by": 2.0}}).loss) == {}
    with pytest.raises(ConfigError, match=r"loss\.scale_by: expected a number > 0"):
        parse({"loss": {"name": "cdb_ce", "scale_by": -1}})


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_zero_epochs_are_refused(stage: str) -> None:
    with pytest.raises(ConfigError, match=rf"{stage}\.epochs: expected a number >= 1; got 0"):
        parse({stage: {"epochs": 0}})


def test_data_stage_checks_leave_the_training_registries_to_the_training_stages() -> None:
    bad = {"loss": {"name": "cdb_ce", "gamma": -1}, "model": {"arch": "vgg"}}
    assert parse(bad, training=False).loss.options["gamma"] == -1
    with pytest.raises(ConfigError, match=r"data\.name"):
        parse({"data": {"name": "mnist"}}, training=False)
    with pytest.raises(ConfigError, match=r"pretrain\.epochs"):
        parse({"pretrain": {"epochs": 0}}, training=False)


def test_no_literal_in_config_copies_a_registry() -> None:
    """Keys that pick from a registry are plain strings checked against it (longtail.validate);
    a Literal of config.py lists none of a registry's names."""
    import dataclasses
    import typing

    from longtail import config, data, decouple, loop, meta, modes, nets, samplers
    from longtail.checkpoint import KEEPS
    from longtail.data import augment, imbalance
    from longtail.nets import heads

    registries = [
        losses.names(),
        samplers.names(),
        nets.names(),
        heads.names(),
        modes.names(),
        data.names(),
        tuple(decouple.BACKBONE_BN),
        tuple(meta.META_SOURCES),
        tuple(KEEPS),
        tuple(imbalance.SUBSETS),
        imbalance.PROFILES,
        tuple(augment.POLICIES),
        tuple(loop.PRETRAIN_MODES),
    ]
    literals = []
    for cls in vars(config).values():
        if dataclasses.is_dataclass(cls) and isinstance(cls, type):
            for hint in typing.get_type_hints(cls).values():
                if typing.get_origin(hint) is typing.Literal:
                    literals.append(set(typing.get_args(hint)))
    assert literals  # the check reads the annotations
    assert not [(lit, r) for lit in literals for r in registries if lit <= set(r)]


def test_a_registered_name_is_accepted_without_editing_config(monkeypatch) -> None:
    from longtail import modes

    class Echo(modes.Mode):
        name = "echo_test"

        def trains(self, cfg: Config) -> bool:
            return False

    monkeypatch.setattr(modes, "MODES", modes.MODES.copy())
    modes.register(Echo)
    assert parse({"finetune": {"mode": "echo_test"}}).finetune.mode == "echo_test"
