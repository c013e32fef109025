"""Network registry and checkpoint loading.

Every network is built by name through ``create`` (the registry pattern of timm's ``create_model``)
and shares one interface:

- ``forward(x) -> (logits (B, num_classes), feature (B, feature_dim))``, the feature being the
  pooled, flattened penultimate vector;
- ``forward_features(x) -> feature`` and a linear classifier ``fc``, so that
  ``model.fc(model.forward_features(x))`` are the logits (decoupled classifier retraining freezes
  everything but ``fc``);
- ``feature_dim``, the size of the feature.

The classifier ``fc`` is a head of ``heads.py`` (``model.classifier``: ``linear``, the
architecture's own ``nn.Linear``, or ``cosine``, LDAM-DRW's normalised classifier), with its
bias initialised by ``model.bias_init``.

Architectures: ``resnet32`` (CIFAR, ``resnet_cifar.py``), ``resnet10`` / ``resnet50`` /
``resnet152`` / ``resnext50`` (torchvision, ``resnet.py``), ``resnext101_3d`` and
``resnet3d_small`` (video clips, ``resnet3d.py``).

``load_weights`` loads a pretrained or earlier checkpoint into a network key by key and reports
what it could not load.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from longtail import io
from longtail.nets import heads
from longtail.nets.resnet3d import resnet3d_small, resnext101_3d
from longtail.nets.resnet_cifar import resnet32
from longtail.registry import Registry

ARCHS: Registry[Callable[..., nn.Module]] = Registry("model.arch")

# Prefixes that wrappers put in front of every key: DataParallel / DistributedDataParallel
# ("module.", as in the released checkpoints of the original repositories) and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder ``fn(num_classes, *, in_channels=3, **kwargs)`` to ``ARCHS``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return ARCHS.add(name, builder)

    return add


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """The builder ``name`` of ``longtail.nets.resnet``, which imports torchvision at first use.

    Importing torchvision's model zoo costs seconds of CPU; the default network (ResNet-32) and
    the video networks do not need it, so the stages that build those never import it.
    """

    def build(num_classes: int, **kwargs: object) -> nn.Module:
        from longtail.nets import resnet

        return getattr(resnet, name)(num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


for _name, _builder in (
    ("resnet32", resnet32),
    ("resnet10", _torchvision_builder("resnet10")),
    ("resnet50", _torchvision_builder("resnet50")),
    ("resnet152", _torchvision_builder("resnet152")),
    ("resnext50", _torchvision_builder("resnext50")),
    ("resnext101_3d", resnext101_3d),
    ("resnet3d_small", resnet3d_small),
):
    register(_name)(_builder)
del _name, _builder


def names() -> tuple[str, ...]:
    """Return the registered architecture names, in registration order."""
    return ARCHS.names()


def _check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: expected an integer >= 1, got {value!r}")


def create(
    arch: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    classifier: str = "linear",
    bias_init: str = "default",
    **kwargs: object,
) -> nn.Module:
    """Build a registered network with freshly initialised weights.

    Args:
        arch: Registered name (see ``names()``).
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images or clips.
        classifier: The head in place of the architecture's ``fc`` (``heads.names()``); a
            ``cosine`` head draws its initial weights from the global RNG after the backbone's.
        bias_init: The classifier bias initialisation (``heads.BIAS_INITS``).
        **kwargs: Passed to the builder (e.g. ``widths`` for ``resnet3d_small``).

    Raises:
        ValueError: for an unknown ``arch``, head or bias initialisation (the message lists the
            valid ones), a class or channel count that is not a positive integer, or a bias
            initialisation for a head without a bias.
    """
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    model = ARCHS[arch](num_classes, in_channels=in_channels, **kwargs)
    model.fc = heads.create(classifier, model.fc)
    heads.init_bias(bias_init, model.fc)
    return model


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did.

    Attributes:
        loaded: Model keys copied from the checkpoint.
        missing: Model keys absent from the checkpoint (left as initialised).
        unexpected: Checkpoint keys the model does not have (ignored).
        mismatched: ``(key, checkpoint shape, model shape)`` for keys whose shapes differ.
        fc_reinitialised: Whether the classifier was re-initialised instead of loaded.
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    fc_reinitialised: bool

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors; classifier fc "
            + ("re-initialised" if self.fc_reinitialised else "loaded")
        ]
        for key, theirs, ours in self.mismatched:
            lines.append(f"  shape mismatch {key}: checkpoint {list(theirs)}, model {list(ours)}")
        lines += [f"  missing {key}" for key in self.missing]
        lines += [f"  unexpected {key}" for key in self.unexpected]
        return "\n".join(lines)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:  # "module._orig_mod.x" -> "x"
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read ``path`` and return its tensors with wrapper prefixes removed."""
    remedy = (
        "Point model.weights at a plain state dict; to convert a checkpoint you trust, load it "
        "outside the pipeline and save its tensors with torch.save(state_dict, path)."
    )
    try:
        obj = io.load_torch(path, remedy)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{err}: expected a checkpoint of tensors and plain values") from err
    for container in ("state_dict", "model"):  # Hara / classifier-balancing, this project
        if isinstance(obj, Mapping) and isinstance(obj.get(container), Mapping):
            obj = obj[container]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict (or a dict with one under 'state_dict' or 'model'), "
            f"got {type(obj).__name__}"
        )
    return {_strip_prefixes(key): value for key, value in obj.items()}


def _is_fc(key: str) -> bool:
    return key.startswith("fc.")


def load_state(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    generator: torch.Generator | None = None,
) -> LoadReport:
    """Copy every tensor of ``state`` whose name and shape match into ``model``.

    The classifier ``fc`` is loaded only when all its tensors match (same class count and feature
    size); otherwise it is re-initialised by its head (``reset``: nn.Linear's default for a
    linear head), so a checkpoint trained on other
    classes never leaves a partly loaded classifier. ``num_batches_tracked`` counters that the
    checkpoint lacks (PyTorch < 0.4.1 checkpoints such as Hara's Kinetics models have none) are
    not reported as missing: they only matter for batch norm with ``momentum=None``.

    Args:
        model: Network with a linear classifier ``fc``.
        state: Tensors by name, wrapper prefixes already removed.
        generator: Source of randomness for the classifier re-initialisation.

    Raises:
        ValueError: if no backbone tensor matches (the wrong architecture or not a checkpoint).
    """
    ours = model.state_dict()
    mismatched = tuple(
        (key, tuple(state[key].shape), tuple(ours[key].shape))
        for key in ours
        if key in state and state[key].shape != ours[key].shape
    )
    bad = {key for key, _, _ in mismatched}
    matching = {key: state[key] for key in ours if key in state and key not in bad}
    fc_keys = [key for key in ours if _is_fc(key)]
    fc_loads = all(key in matching for key in fc_keys)
    if not fc_loads:
        matching = {key: value for key, value in matching.items() if not _is_fc(key)}
    if not any(not _is_fc(key) for key in matching):
        raise ValueError(
            f"expected weights for {type(model).__name__}; none of the checkpoint's "
            f"{len(state)} tensors matches a backbone tensor by name and shape"
        )
    model.load_state_dict(matching, strict=False)
    if not fc_loads:
        heads.adapt(model.fc).reset(generator)
    missing = tuple(
        key for key in ours if key not in state and not key.endswith("num_batches_tracked")
    )
    return LoadReport(
        loaded=tuple(matching),
        missing=missing,
        unexpected=tuple(key for key in state if key not in ours),
        mismatched=mismatched,
        fc_reinitialised=not fc_loads,
    )


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    generator: torch.Generator | None = None,
    verbose: bool = True,
) -> LoadReport:
    """Load a checkpoint file into ``model`` by name and shape, re-initialising ``fc`` if needed.

    Accepts a raw state dict, a dict holding one under ``"state_dict"`` (Hara's 3D-ResNets,
    classifier-balancing) or ``"model"``, with or without the ``module.`` prefix that
    DataParallel writes. See ``load_state`` for the rules.

    Args:
        model: Network with a linear classifier ``fc``.
        path: Checkpoint written by ``torch.save``.
        generator: Source of randomness for the classifier re-initialisation.
        verbose: Print the report.

    Returns:
        The report of loaded, missing, unexpected and shape-mismatched keys.
    """
    state = _read_state_dict(Path(path))
    try:
        report = load_state(model, state, generator=generator)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    if verbose:
        print(f"{path}: {report}")
    return report


# ----------------------------------------------------------------------------- input size check
def collapsed_downsampling(model: nn.Module, sample_shape: tuple[int, ...]) -> list[str]:
    """The strided layers of ``model`` that would meet a 1-pixel map on an input of this shape.

    ``model`` runs once, in eval mode without gradients (its state is left as it was), on one
    zero sample of ``sample_shape`` (``(C, H, W)`` or ``(C, T, H, W)``) on its own device; a
    forward pre-hook on every layer with a ``stride`` (convolutions, pooling) records those whose
    stride is above 1 in a spatial dimension (the last two) that is already 1 pixel wide: such a
    layer has nothing left to downsample, and every layer after it sees a single pixel (ResNet-50
    on 8×8 digits reaches 1×1 in ``layer2``). Temporal strides are not checked.

    Returns:
        The names of those layers, in forward order (empty when the input fits).
    """
    hit: list[str] = []

    def pre_hook(name: str, stride: tuple[int, ...]) -> Callable[..., None]:
        def check(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            spatial = args[0].shape[-2:]
            if any(s > 1 and size <= 1 for s, size in zip(stride[-2:], spatial, strict=True)):
                hit.append(name)

        return check

    handles = []
    for name, module in model.named_modules():
        stride = getattr(module, "stride", None)
        if stride is None or any(True for _ in module.children()):  # layers, not blocks
            continue
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        if max(stride[-2:]) > 1:
            handles.append(module.register_forward_pre_hook(pre_hook(name, stride)))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return hit


def smallest_input_size(arch: str, in_channels: int, sample_shape: tuple[int, ...]) -> int:
    """The smallest square spatial size (other dims as in ``sample_shape``) ``arch`` takes.

    Searched on a copy built on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic).
    """
    with torch.device("meta"):
        model = create(arch, 2, in_channels=in_channels)

    def fits(size: int) -> bool:
        return not collapsed_downsampling(model, (*sample_shape[:-2], size, size))

    high = 1
    while not fits(high):
        high *= 2
    low = high // 2  # does not fit (or 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def check_input_size(
    model: nn.Module, arch: str, sample_shape: tuple[int, ...], dataset: str
) -> None:
    """Refuse a network whose downsampling cannot take the dataset's input size.

    Args:
        model: the network built for the dataset (one forward of one sample; state unchanged).
        arch: its registry name (the smallest size it takes is searched on a ``meta`` copy).
        sample_shape: one input sample, ``(C, H, W)`` or ``(C, T, H, W)``.
        dataset: ``data.name``, for the message.

    Raises:
        ValueError: naming the architecture, the input size, the smallest size it takes and the
            first layer that would meet a 1-pixel map.
    """
    hit = collapsed_downsampling(model, sample_shape)
    if not hit:
        return
    h, w = sample_shape[-2:]
    n = smallest_input_size(arch, sample_shape[0], sample_shape)
    raise ValueError(
        f"model.arch: expected a network that can downsample the {h}×{w} inputs of {dataset}; "
        f"got {arch}, which takes inputs of at least {n}×{n} (its layer {hit[0]} would meet a "
        "1-pixel map, and every later layer a single pixel). Use model.arch: auto (the dataset's "
        "network) or larger inputs (data.image_size, frames.size)"
    )
