"""Tests for ``longtail.nets``: the registry, the shared interface, parameter counts that match the
published architectures, and ``load_weights``.

Run: ``PYTHONPATH=. .venv/bin/python -m pytest tests/test_nets.py -q``
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from longtail import nets

FEATURE_DIM = {
    "resnet32": 64,
    "resnet10": 512,
    "resnet50": 2048,
    "resnet152": 2048,
    "resnext50": 2048,
    "resnext101_3d": 2048,
    "resnet3d_small": 128,
}
VIDEO = {"resnext101_3d", "resnet3d_small"}
ON_META = {"resnext101_3d"}  # too large to run on a CPU in a unit test: shapes only

# 464,154 is the parameter count of ResNet-32 for 10 classes as quoted for the CIFAR ResNets of
# He et al. (0.46M) and printed by LDAM-DRW's resnet_cifar.py.
RESNET32_PARAMS_10 = 464_154
# Parameters of kenshohara/3D-ResNets-PyTorch models/resnext.py, resnet101(cardinality=32,
# shortcut_type="B", num_classes=400): the Kinetics-400 ResNeXt-101 whose checkpoint is
# resnext-101-kinetics.pth, counted by building that code on the meta device.
RESNEXT101_3D_PARAMS_400 = 48_340_816
# ResNeXt-50 32x4d for ImageNet's 1,000 classes: 25,028,904 parameters (torchvision's model card
# for resnext50_32x4d, "num_params").
RESNEXT50_PARAMS_1000 = 25_028_904


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny inputs gain nothing from intra-op threads, and when other processes share the CPU an
    # OpenMP team of two can wait at every layer's barrier: ResNet-152 went from 0.07 s to 5 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_input(arch: str, batch: int = 2) -> torch.Tensor:
    shape = (batch, 3, 8, 32, 32) if arch in VIDEO else (batch, 3, 32, 32)
    return torch.randn(shape, device="meta" if arch in ON_META else "cpu")


def build(arch: str, num_classes: int = 5, **kwargs: object) -> nn.Module:
    with torch.device("meta" if arch in ON_META else "cpu"):
        return nets.create(arch, num_classes, **kwargs).eval()


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# --- registry -----------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert nets.names() == tuple(FEATURE_DIM)
    assert set(nets.ARCHS) == set(FEATURE_DIM)


def test_register_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="resnet32"):
        nets.register("resnet32")(nets.ARCHS["resnet32"])
    assert nets.ARCHS["resnet32"] is nets.resnet_cifar.resnet32


def test_unknown_arch_lists_the_valid_names() -> None:
    expected = (
        "model.arch: expected one of resnet32, resnet10, resnet50, resnet152, resnext50, "
        "resnext101_3d, "
        "resnet3d_small; got 'resnet9000'"
    )
    with pytest.raises(ValueError) as err:
        nets.create("resnet9000", 10)
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [("num_classes", {"num_classes": 0}), ("in_channels", {"num_classes": 3, "in_channels": 0})],
)
def test_create_rejects_non_positive_counts(key: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"{key}: expected an integer >= 1, got 0"):
        nets.create("resnet32", **kwargs)


# --- the shared interface -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", nets.names())
def test_forward_returns_logits_and_feature(arch: str) -> None:
    model = build(arch, num_classes=5)
    x = tiny_input(arch)
    with torch.no_grad():
        logits, feature = model(x)
        from_features = model.fc(model.forward_features(x))
    assert model.feature_dim == FEATURE_DIM[arch]
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.in_features == model.feature_dim
    assert logits.shape == (2, 5)
    assert feature.shape == (2, FEATURE_DIM[arch])
    assert from_features.shape == logits.shape
    if arch not in ON_META:
        assert torch.equal(from_features, logits)


def test_resnext101_3d_runs_on_any_clip_size() -> None:
    model = build("resnext101_3d", num_classes=19)
    logits, feature = model(torch.randn(1, 3, 5, 40, 56, device="meta"))
    assert logits.shape == (1, 19)
    assert feature.shape == (1, 2048)


def test_channels_last_and_bf16_autocast() -> None:
    model = nets.create("resnet32", 10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feature = model(x)
    assert logits.dtype == torch.bfloat16
    assert logits.shape == (2, 10)
    assert feature.shape == (2, 64)


@pytest.mark.parametrize(
    ("arch", "shape"), [("resnet32", (2, 1, 8, 8)), ("resnet3d_small", (2, 1, 4, 16, 16))]
)
def test_compiles_without_graph_breaks(arch: str, shape: tuple[int, ...]) -> None:
    # fullgraph=True raises on any graph break, e.g. a Python branch on tensor data
    model = nets.create(arch, 3, in_channels=1).eval()
    x = torch.randn(shape)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        eager_logits, eager_feature = model(x)
        logits, feature = compiled(x)
    torch.testing.assert_close(logits, eager_logits)
    torch.testing.assert_close(feature, eager_feature)


# --- ResNet-32 ----------------------------------------------------------------------------------


def test_resnet32_parameter_count() -> None:
    assert num_params(nets.create("resnet32", 10)) == RESNET32_PARAMS_10
    # only the stem convolution (16 × C × 3 × 3) and the classifier (64·K + K) depend on C and K
    grey_100 = RESNET32_PARAMS_10 - 16 * (3 - 1) * 9 - 65 * 10 + 65 * 100
    assert num_params(nets.create("resnet32", 100, in_channels=1)) == grey_100


def test_resnet32_runs_on_8x8_grayscale() -> None:
    model = nets.create("resnet32", 10, in_channels=1)
    logits, feature = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    assert feature.shape == (2, 64)
    assert (feature >= 0).all()  # pooled after a ReLU


def test_resnet32_option_a_shortcut_pads_zero_channels() -> None:
    block = nets.create("resnet32", 10).layer2[0]
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).reshape(2, 16, 4, 4)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 2, 2)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


# --- torchvision ResNets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "builder"),
    [("resnet50", "resnet50"), ("resnet152", "resnet152"), ("resnext50", "resnext50_32x4d")],
)
def test_torchvision_names_and_shapes(arch: str, builder: str) -> None:
    with torch.device("meta"):
        ours = nets.create(arch, 7)
        theirs = getattr(torchvision.models, builder)(weights=None, num_classes=7)
    assert shapes(ours) == shapes(theirs)


def test_resnext50_is_32x4d_with_the_published_parameter_count() -> None:
    with torch.device("meta"):
        model = nets.create("resnext50", 1000)
    assert num_params(model) == RESNEXT50_PARAMS_1000
    conv = model.layer1[0].conv2  # grouped 3x3: 32 groups of 4 channels in the first stage
    assert (conv.groups, conv.in_channels, conv.out_channels) == (32, 128, 128)


def test_resnet10_is_basicblock_1111() -> None:
    with torch.device("meta"):
        ours = nets.create("resnet10", 7)
        theirs = torchvision.models.resnet.ResNet(
            torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=7
        )
    assert shapes(ours) == shapes(theirs)


def test_in_channels_replaces_only_the_stem() -> None:
    with torch.device("meta"):
        rgb, grey = (
            shapes(nets.create("resnet50", 7)),
            shapes(nets.create("resnet50", 7, in_channels=1)),
        )
    assert grey.pop("conv1.weight") == (64, 1, 7, 7)
    assert rgb.pop("conv1.weight") == (64, 3, 7, 7)
    assert grey == rgb


# --- 3D ResNeXt-101 -----------------------------------------------------------------------------


def test_resnext101_3d_parameter_count() -> None:
    with torch.device("meta"):
        kinetics = nets.create("resnext101_3d", 400)
        egtea = nets.create("resnext101_3d", 19)
    assert num_params(kinetics) == RESNEXT101_3D_PARAMS_400
    # only the classifier (2048·K + K) depends on the class count K
    assert num_params(egtea) == RESNEXT101_3D_PARAMS_400 - 2049 * 400 + 2049 * 19


def test_resnext101_3d_uses_the_published_names() -> None:
    with torch.device("meta"):
        sd = shapes(nets.create("resnext101_3d", 400))
    assert len(sd) == 626
    assert sd["conv1.weight"] == (64, 3, 7, 7, 7)
    assert sd["layer1.0.conv1.weight"] == (128, 64, 1, 1, 1)
    assert sd["layer1.0.conv2.weight"] == (128, 4, 3, 3, 3)  # 32 groups of 4 channels
    assert sd["layer1.0.downsample.0.weight"] == (256, 64, 1, 1, 1)
    assert sd["layer1.0.downsample.1.running_var"] == (256,)
    assert sd["layer3.22.conv3.weight"] == (1024, 512, 1, 1, 1)
    assert sd["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1, 1)
    assert sd["fc.weight"] == (400, 2048)
    assert "layer1.1.downsample.0.weight" not in sd
    assert "layer3.23.conv1.weight" not in sd


def test_resnext101_3d_state_dict_loads_back_strictly() -> None:
    with torch.device("meta"):
        source, target = nets.create("resnext101_3d", 19), nets.create("resnext101_3d", 19)
    target.load_state_dict(source.state_dict(), strict=True, assign=True)
    assert shapes(target) == shapes(source)


# --- load_weights -------------------------------------------------------------------------------


def test_load_weights_module_prefix_and_other_class_count(tmp_path, capsys) -> None:
    source = nets.create("resnet32", 10)
    state = {"module." + key: value for key, value in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "arch": "resnet32"}, tmp_path / "ckpt.pth")
    target = nets.create("resnet32", 7)

    report = nets.load_weights(
        target, tmp_path / "ckpt.pth", generator=torch.Generator().manual_seed(0)
    )

    for key, value in target.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, source.state_dict()[key]), key
    assert report.fc_reinitialised
    assert report.mismatched == (("fc.weight", (10, 64), (7, 64)), ("fc.bias", (10,), (7,)))
    assert report.missing == () and report.unexpected == ()
    assert len(report.loaded) == len(target.state_dict()) - 2
    # nn.Linear's default, U(-1/sqrt(64), 1/sqrt(64)), drawn from the generator: weight, then bias
    generator = torch.Generator().manual_seed(0)
    expected_weight = torch.empty(7, 64).uniform_(-1 / 8, 1 / 8, generator=generator)
    expected_bias = torch.empty(7).uniform_(-1 / 8, 1 / 8, generator=generator)
    assert torch.equal(target.fc.weight, expected_weight)
    assert torch.equal(target.fc.bias, expected_bias)
    assert "shape mismatch fc.weight: checkpoint [10, 64], model [7, 64]" in capsys.readouterr().out


def test_load_weights_same_classes_loads_everything(tmp_path) -> None:
    source, target = nets.create("resnet32", 10), nets.create("resnet32", 10)
    torch.save(source.state_dict(), tmp_path / "raw.pt")
    report = nets.load_weights(target, tmp_path / "raw.pt", verbose=False)
    assert not report.fc_reinitialised
    assert report.mismatched == () and report.missing == () and report.unexpected == ()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_weights_reports_stem_mismatch_missing_and_unexpected(tmp_path) -> None:
    source = nets.create("resnet10", 1000)  # an ImageNet-shaped RGB checkpoint
    state = source.state_dict()
    del state["layer4.0.bn2.running_var"]
    state["projection.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "imagenet.pth")
    target = nets.create("resnet10", 5, in_channels=1)
    report = nets.load_weights(target, tmp_path / "imagenet.pth", verbose=False)
    assert report.mismatched[0] == ("conv1.weight", (64, 3, 7, 7), (64, 1, 7, 7))
    assert [key for key, _, _ in report.mismatched] == ["conv1.weight", "fc.weight", "fc.bias"]
    assert report.missing == ("layer4.0.bn2.running_var",)
    assert report.unexpected == ("projection.weight",)
    assert torch.equal(target.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    bound = 1 / math.sqrt(512)
    assert target.fc.weight.abs().max() <= bound


def test_load_weights_refuses_an_unrelated_checkpoint(tmp_path) -> None:
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="none of the checkpoint's 1 tensors matches"):
        nets.load_weights(nets.create("resnet32", 10), tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        nets.load_weights(nets.create("resnet32", 10), tmp_path / "list.pt")


def test_resnet50_on_8x8_digits_is_refused_with_the_smallest_size_it_takes() -> None:
    model = nets.create("resnet50", 10, in_channels=1)
    assert nets.collapsed_downsampling(model, (1, 8, 8))[0] == "layer3.0.conv2"
    # conv1 and maxpool halve 17 to 9 and 5, layer2 to 3, layer3 to 2, layer4 to 1: every strided
    # layer still has two pixels to take; 16 leaves layer3 a single one.
    assert nets.smallest_input_size("resnet50", 1, (1, 8, 8)) == 17
    assert nets.collapsed_downsampling(model, (1, 17, 17)) == []
    assert nets.collapsed_downsampling(model, (1, 16, 16))
    with pytest.raises(ValueError, match=r"got resnet50, which takes inputs of at least 17×17"):
        nets.check_input_size(model, "resnet50", (1, 8, 8), "digits")
    assert model.training  # the probe leaves the mode as it was


def test_the_default_networks_take_their_datasets_inputs() -> None:
    nets.check_input_size(nets.create("resnet32", 10, in_channels=1), "resnet32", (1, 8, 8), "d")
    nets.check_input_size(nets.create("resnet32", 100), "resnet32", (3, 32, 32), "cifar100")
    video = nets.create("resnet3d_small", 10, in_channels=1)
    nets.check_input_size(video, "resnet3d_small", (1, 8, 32, 32), "moving_digits")
    assert nets.smallest_input_size("resnet32", 1, (1, 8, 8)) == 3
