"""Tests for longtail.losses: closed forms, reductions to CE, CDB-CE and FBL state, gradients.

Expected values are written out with ``math`` on a 2 x 3 batch, independently of the code under
test. Run: ``.venv/bin/python -m pytest tests/test_losses.py -q``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longtail import losses

# The hand-computed batch: 2 samples, 3 classes, 2-d features with norms 5 and 1.
ROWS = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
TARGETS = [0, 1]
FEATURES = [[3.0, 4.0], [0.6, 0.8]]
NORMS = [5.0, 1.0]
COUNTS = [16, 81, 1]  # fourth roots 2, 3, 1: LDAM margins come out as simple fractions


def nll(row: list[float], target: int) -> float:
    """-log softmax(row)[target], written out."""
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def shifted(row: list[float], shift: list[float]) -> list[float]:
    return [v + s for v, s in zip(row, shift, strict=True)]


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(ROWS), torch.tensor(TARGETS), torch.tensor(FEATURES)


def value(name: str, counts: list[int] = COUNTS, **options: object) -> float:
    """The loss on the hand-computed batch, as a Python float."""
    return float(losses.create(name, counts, **options)(*batch()))


def random_batch(
    num_classes: int = 5, size: int = 8, dim: int = 4, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(size, num_classes, generator=g, dtype=dtype) * 3
    targets = torch.randint(num_classes, (size,), generator=g)
    features = torch.randn(size, dim, generator=g, dtype=dtype)
    return logits, targets, features


# ----------------------------------------------------------------------------------- closed forms
def expected_ce() -> float:
    return (nll(ROWS[0], 0) + nll(ROWS[1], 1)) / 2


def expected_focal(gamma: float) -> float:
    terms = [nll(r, t) for r, t in zip(ROWS, TARGETS, strict=True)]
    return sum((1 - math.exp(-x)) ** gamma * x for x in terms) / 2


def cb_weights(counts: list[int], beta: float) -> list[float]:
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


def expected_class_balanced(beta: float, gamma: float) -> float:
    w = cb_weights(COUNTS, beta)
    terms = [nll(r, t) for r, t in zip(ROWS, TARGETS, strict=True)]
    focal = [(1 - math.exp(-x)) ** gamma * x for x in terms]
    return (w[0] * focal[0] + w[1] * focal[1]) / 2  # sum w l / B


def ldam_terms(max_m: float, s: float) -> list[float]:
    margins = [max_m * 1 / 2, max_m * 1 / 3, max_m * 1]  # max_m * n_c^(-1/4) / max n^(-1/4)
    row0 = [s * v for v in shifted(ROWS[0], [-margins[0], 0, 0])]
    row1 = [s * v for v in shifted(ROWS[1], [0, -margins[1], 0])]
    return [nll(row0, 0), nll(row1, 1)]


def expected_ldam(max_m: float, s: float) -> float:
    return sum(ldam_terms(max_m, s)) / 2


def expected_ldam_drw(max_m: float, s: float, beta: float) -> float:
    w = cb_weights(COUNTS, beta)
    terms = ldam_terms(max_m, s)
    return (w[0] * terms[0] + w[1] * terms[1]) / (w[0] + w[1])  # sum w l / sum w


def expected_logit_adjust(tau: float) -> float:
    shift = [tau * math.log(n / sum(COUNTS)) for n in COUNTS]
    return (nll(shifted(ROWS[0], shift), 0) + nll(shifted(ROWS[1], shift), 1)) / 2


def expected_balanced_softmax() -> float:
    shift = [math.log(n) for n in COUNTS]
    return (nll(shifted(ROWS[0], shift), 0) + nll(shifted(ROWS[1], shift), 1)) / 2


def expected_cdb(accuracy: list[float], tau: float) -> float:
    powered = [max(1 - a, 1e-3) ** tau for a in accuracy]
    w = [p / sum(powered) * 3 for p in powered]
    return (w[0] * nll(ROWS[0], 0) + w[1] * nll(ROWS[1], 1)) / 2  # sum w l / B


def expected_fbl(lam: float, curr: float) -> float:
    alpha = [(math.log(81) - math.log(16)) / math.log(81), 0.0, 1.0]
    rows = [
        shifted(r, [-curr * lam * a / n for a in alpha]) for r, n in zip(ROWS, NORMS, strict=True)
    ]
    return (nll(rows[0], 0) + nll(rows[1], 1)) / 2


def cdb_after_update(accuracy: list[float], tau: float | str) -> float:
    loss = losses.create("cdb_ce", COUNTS, tau=tau)
    loss.update(torch.tensor(accuracy))
    return float(loss(*batch()))


def fbl_at_epoch(lam: float, epoch: int, total: int) -> float:
    loss = losses.create("fbl", COUNTS, lam=lam)
    loss.set_epoch(epoch, total)
    return float(loss(*batch()))


CLOSED_FORMS = {
    "ce": [(lambda: value("ce"), expected_ce())],
    "focal": [
        (lambda: value("focal", gamma=2.0), expected_focal(2.0)),
        (lambda: value("focal"), expected_focal(1.0)),
    ],
    "class_balanced": [
        (lambda: value("class_balanced", beta=0.5), expected_class_balanced(0.5, 0.0)),
        (
            lambda: value("class_balanced", beta=0.9, base="focal", gamma=2.0),
            expected_class_balanced(0.9, 2.0),
        ),
    ],
    "ldam": [
        (lambda: value("ldam", max_m=0.5, s=2.0), expected_ldam(0.5, 2.0)),
        (lambda: value("ldam"), expected_ldam(0.5, 30.0)),
        (
            lambda: value("ldam", max_m=0.4, s=3.0, weights="class_balanced", beta=0.5),
            expected_ldam_drw(0.4, 3.0, 0.5),
        ),
    ],
    "logit_adjust": [
        (lambda: value("logit_adjust"), expected_logit_adjust(1.0)),
        (lambda: value("logit_adjust", tau=0.5), expected_logit_adjust(0.5)),
    ],
    "balanced_softmax": [(lambda: value("balanced_softmax"), expected_balanced_softmax())],
    "cdb_ce": [
        (lambda: cdb_after_update([0.5, 0.9, 1.0], 1.0), expected_cdb([0.5, 0.9, 1.0], 1.0)),
        (lambda: cdb_after_update([0.2, 0.6, 0.3], 2.0), expected_cdb([0.2, 0.6, 0.3], 2.0)),
        (
            lambda: cdb_after_update([0.2, 0.6, 0.3], "dynamic"),
            expected_cdb([0.2, 0.6, 0.3], 2 / (1 + math.exp(-(0.6 / 0.21 - 1)))),
        ),
    ],
    "fbl": [
        (lambda: fbl_at_epoch(3.0, 5, 20), expected_fbl(3.0, (5 / 10) ** 2)),
        (lambda: fbl_at_epoch(60.0, 15, 20), expected_fbl(60.0, (15 / 10) ** 2)),
    ],
}


def test_every_registered_loss_has_a_closed_form() -> None:
    assert set(CLOSED_FORMS) == set(losses.names())


@pytest.mark.parametrize(
    ("name", "index"), [(n, i) for n, cases in CLOSED_FORMS.items() for i in range(len(cases))]
)
def test_closed_form(name: str, index: int) -> None:
    compute, expected = CLOSED_FORMS[name][index]
    assert compute() == pytest.approx(expected, rel=1e-6)


def test_closed_forms_differ_from_ce() -> None:
    # Guards the closed-form tests against a batch on which every loss happens to equal CE.
    for name, cases in CLOSED_FORMS.items():
        if name != "ce":
            assert cases[0][1] != pytest.approx(expected_ce(), rel=1e-3), name


def test_plain_functions_match_modules() -> None:
    logits, targets, features = batch()
    counts = torch.tensor(COUNTS)
    assert losses.balanced_softmax_loss(logits, targets, counts.double().log()).item() == (
        pytest.approx(expected_balanced_softmax(), rel=1e-6)
    )
    assert losses.focal_loss(logits, targets, 2.0).item() == pytest.approx(expected_focal(2.0))
    margins = losses.ldam_margins(counts, 0.5)
    torch.testing.assert_close(margins, torch.tensor([0.25, 0.5 / 3, 0.5]))
    assert losses.ldam_loss(logits, targets, margins, 2.0).item() == pytest.approx(
        expected_ldam(0.5, 2.0), rel=1e-6
    )
    alpha = losses.fbl_alpha(counts)
    got = losses.fbl_loss(logits, targets, features, alpha, lam=3.0, curr=0.25).item()
    assert got == pytest.approx(expected_fbl(3.0, 0.25), rel=1e-6)


# ---------------------------------------------------------------------------- reductions to CE
EQUAL = [7, 7, 7, 7, 7]
SKEWED = [50, 20, 9, 3, 1]
CE_CASES = [
    ("balanced_softmax", EQUAL, {}),
    ("fbl", SKEWED, {"lam": 0.0}),
    ("fbl", EQUAL, {"lam": 60.0}),  # alpha = 0 when all counts are equal
    ("cdb_ce", SKEWED, {"tau": 1.0}),  # before any update
    ("cdb_ce", SKEWED, {"tau": "dynamic"}),
    ("logit_adjust", SKEWED, {"tau": 0.0}),
    ("logit_adjust", EQUAL, {"tau": 1.0}),
    ("focal", SKEWED, {"gamma": 0.0}),
    ("class_balanced", EQUAL, {"beta": 0.9999}),
    ("class_balanced", SKEWED, {"beta": 0.0}),
    ("ldam", SKEWED, {"max_m": 0.0, "s": 1.0}),
]


@pytest.mark.parametrize(("name", "counts", "options"), CE_CASES)
def test_reduces_to_ce(name: str, counts: list[int], options: dict[str, object]) -> None:
    loss = losses.create(name, counts, **options)
    loss.set_epoch(30, 40)  # FBL: curr > 0, so lam = 0 / alpha = 0 is what makes it CE
    logits, targets, features = random_batch()
    torch.testing.assert_close(
        loss(logits, targets, features), torch.nn.functional.cross_entropy(logits, targets)
    )


# --------------------------------------------------------------------------------------- CDB-CE
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0, 10.0, "dynamic"])
def test_cdb_weights_sum_to_num_classes(tau: float | str) -> None:
    loss = losses.create("cdb_ce", SKEWED, tau=tau)
    loss.update(torch.tensor([0.9, 0.7, 0.55, 0.2, 0.05]))
    assert loss.weights.sum().item() == pytest.approx(5.0, rel=1e-6)
    assert bool((loss.weights > 0).all())


def test_cdb_weights_follow_difficulty() -> None:
    loss = losses.create("cdb_ce", [5, 5, 5], tau=1.0)
    loss.update(torch.tensor([0.8, 0.5, 0.0]))  # d = 0.2, 0.5, 1.0
    torch.testing.assert_close(loss.weights, torch.tensor([0.2, 0.5, 1.0]) / 1.7 * 3)


def test_cdb_perfect_class_keeps_a_small_weight() -> None:
    loss = losses.create("cdb_ce", [5, 5, 5], tau=1.0)
    loss.update(torch.tensor([1.0, 0.5, 0.5]))  # d_0 = 0 is floored to 1e-3
    expected = torch.tensor([1e-3, 0.5, 0.5]) / 1.001 * 3
    torch.testing.assert_close(loss.weights, expected)
    assert loss.weights[0].item() > 0


@pytest.mark.parametrize("tau", [1.0, 300.0, "dynamic"])
def test_cdb_all_perfect_gives_unit_weights(tau: float | str) -> None:
    loss = losses.create("cdb_ce", [5, 5, 5, 5], tau=tau)
    loss.update(torch.ones(4))
    torch.testing.assert_close(loss.weights, torch.ones(4))


def test_cdb_dynamic_tau() -> None:
    accuracy = [0.2, 0.6, 0.3]
    b = 0.6 / (0.2 + 0.01)
    tau = 2 / (1 + math.exp(-(b - 1)))
    loss = losses.create("cdb_ce", COUNTS, tau="dynamic")
    loss.update(torch.tensor(accuracy))
    assert loss.tau_used.item() == pytest.approx(tau, rel=1e-6)
    powered = [(1 - a) ** tau for a in accuracy]
    torch.testing.assert_close(loss.weights, torch.tensor([p / sum(powered) * 3 for p in powered]))


@pytest.mark.parametrize(
    ("rule", "tau_of_b"),
    [
        ("sigmoid", lambda b: 1 / (1 + math.exp(-b))),  # CIFAR-LT / EGTEA code
        ("shifted_sigmoid", lambda b: 2 / (1 + math.exp(-(b - 1)))),  # ImageNet-LT code
    ],
)
def test_cdb_dynamic_tau_rules_match_their_closed_forms(rule: str, tau_of_b: object) -> None:
    accuracy = [0.2, 0.6, 0.3]
    tau = tau_of_b(0.6 / (0.2 + 0.01))
    loss = losses.create("cdb_ce", COUNTS, tau="dynamic", tau_rule=rule)
    loss.update(torch.tensor(accuracy))
    assert loss.tau_used.item() == pytest.approx(tau, rel=1e-6)
    powered = [(1 - a) ** tau for a in accuracy]
    torch.testing.assert_close(loss.weights, torch.tensor([p / sum(powered) * 3 for p in powered]))


def test_cdb_default_rule_is_the_shifted_sigmoid() -> None:
    assert losses.create("cdb_ce", COUNTS).tau_rule == "shifted_sigmoid"
    assert losses.create("cdb_ce", COUNTS).reduction == "mean"


@pytest.mark.parametrize("reduction", ["mean", "normalized"])
def test_cdb_reductions_match_their_closed_forms(reduction: str) -> None:
    loss = losses.create("cdb_ce", COUNTS, tau=1.0, reduction=reduction)
    loss.update(torch.tensor([0.8, 0.5, 0.0]))  # d = 0.2, 0.5, 1.0 -> w = (0.2, 0.5, 1.0) * 3 / 1.7
    w = [0.2 * 3 / 1.7, 0.5 * 3 / 1.7, 1.0 * 3 / 1.7]
    terms = [w[t] * nll(row, t) for row, t in zip(ROWS, TARGETS, strict=True)]
    divisor = {"mean": len(ROWS), "normalized": w[TARGETS[0]] + w[TARGETS[1]]}[reduction]
    assert float(loss(*batch())) == pytest.approx(sum(terms) / divisor, rel=1e-6)


def test_cdb_normalized_reduction_with_equal_weights_is_ce() -> None:
    loss = losses.create("cdb_ce", COUNTS, reduction="normalized")  # weights start at ones
    expected = sum(nll(row, t) for row, t in zip(ROWS, TARGETS, strict=True)) / len(ROWS)
    assert float(loss(*batch())) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("reduction", "sum", 'reduction: expected one of mean, normalized, got "sum"'),
        ("tau_rule", "tanh", 'tau_rule: expected one of sigmoid, shifted_sigmoid, got "tanh"'),
    ],
)
def test_cdb_bad_variant_names_are_refused(option: str, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        losses.create("cdb_ce", COUNTS, **{option: value})


def test_cdb_fixed_tau_is_reported_and_numeric_strings_parse() -> None:
    loss = losses.create("cdb_ce", COUNTS, tau="1.5")
    assert loss.tau == 1.5
    loss.update(torch.tensor([0.1, 0.2, 0.3]))
    assert loss.tau_used.item() == 1.5


def test_cdb_update_rejects_bad_accuracy() -> None:
    loss = losses.create("cdb_ce", COUNTS)
    with pytest.raises(ValueError, match=r"per_class_accuracy: expected shape \(3,\)"):
        loss.update(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"expected values in \[0, 1\], got 1.5 for class 2"):
        loss.update(torch.tensor([0.5, 0.5, 1.5]))
    with pytest.raises(ValueError, match="got nan for class 0"):
        loss.update(torch.tensor([float("nan"), 0.5, 0.5]))


# ------------------------------------------------------------------------------------------ FBL
@pytest.mark.parametrize(
    ("epoch", "total", "curr"),
    [
        (0, 200, 0.0),
        (95, 200, 0.25),
        (190, 200, 1.0),
        (199, 200, (199 / 190) ** 2),  # unclamped past E - 10, as in the original
        (3, 13, 1.0),
        (0, 10, 0.0),
        (3, 10, (3 / 9) ** 2),  # E <= 10: ramp of E - 1 epochs
        (9, 10, 1.0),
        (1, 2, 1.0),
        (0, 1, 0.0),
    ],
)
def test_fbl_curriculum(epoch: int, total: int, curr: float) -> None:
    assert losses.fbl_curriculum(epoch, total) == pytest.approx(curr, rel=1e-12)
    loss = losses.create("fbl", COUNTS)
    loss.set_epoch(epoch, total)
    assert loss.curr.item() == pytest.approx(curr, rel=1e-6)


def test_fbl_alpha() -> None:
    alpha = losses.fbl_alpha(torch.tensor([16, 81, 1, 9]))
    expected = [(math.log(81) - math.log(n)) / math.log(81) for n in [16, 81, 1, 9]]
    torch.testing.assert_close(alpha, torch.tensor(expected))
    torch.testing.assert_close(losses.fbl_alpha(torch.tensor([4, 4])), torch.zeros(2))


def test_fbl_set_epoch_rejects_bad_epochs() -> None:
    loss = losses.create("fbl", COUNTS)
    with pytest.raises(ValueError, match=r"epoch: expected an integer in \[0, 20\), got 20"):
        loss.set_epoch(20, 20)
    with pytest.raises(ValueError, match="epoch: expected an integer in"):
        loss.set_epoch(-1, 20)
    with pytest.raises(ValueError, match="total_epochs: expected an integer >= 1, got 0"):
        loss.set_epoch(0, 0)


# ------------------------------------------------------------------------------------ gradients
GRAD_CASES = [(name, {}) for name in losses.names()] + [
    ("focal", {"gamma": 0.5}),
    ("class_balanced", {"base": "focal", "gamma": 2.0, "beta": 0.9}),
    ("ldam", {"weights": "class_balanced", "beta": 0.9}),
    ("cdb_ce", {"tau": "dynamic"}),
]


@pytest.mark.parametrize(("name", "options"), GRAD_CASES)
def test_gradcheck(name: str, options: dict[str, object]) -> None:
    loss = losses.create(name, [40, 12, 5, 2], **options).double()
    loss.update(torch.tensor([0.9, 0.6, 0.3, 0.1]))  # CDB-CE: weights other than ones
    loss.set_epoch(12, 20)  # FBL: curr = 0.64
    logits, targets, features = random_batch(num_classes=4, size=6, dim=3, dtype=torch.float64)
    logits.requires_grad_(True)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z, f: loss(z, targets, f), (logits, features), fast_mode=True
    )


# ------------------------------------------------------------------------- precision and state
@pytest.mark.parametrize("name", losses.names())
def test_bf16_autocast_computes_in_float32(name: str) -> None:
    loss = losses.create(name, SKEWED)
    logits, targets, features = random_batch()
    logits, features = logits.bfloat16(), features.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(logits, targets, features)
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out, loss(logits.float(), targets, features.float()))


# aten ops that read a tensor's value on the host (.item(), `if tensor:`) or have a
# data-dependent output shape: on CUDA each one makes the step wait for the GPU.
HOST_SYNC_OPS = {
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",
    "aten.masked_select",
    "aten._unique2",
    "aten.unique_consecutive",
}


class RecordOps(TorchDispatchMode):
    """Records the name of every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: tuple[type, ...],
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_record_ops_sees_host_syncs() -> None:
    x = torch.ones(3)
    with RecordOps() as recorder:
        x.sum().item()
    assert "aten._local_scalar_dense" in recorder.ops


@pytest.mark.parametrize(("name", "options"), GRAD_CASES)
def test_forward_and_backward_do_not_sync(name: str, options: dict[str, object]) -> None:
    loss = losses.create(name, SKEWED, **options)
    loss.update(torch.tensor([0.9, 0.7, 0.55, 0.2, 0.05]))
    loss.set_epoch(12, 20)
    logits, targets, features = random_batch()
    logits.requires_grad_(True)
    features.requires_grad_(True)
    with RecordOps() as recorder:
        loss(logits, targets, features).backward()
    assert not recorder.ops & HOST_SYNC_OPS


@pytest.mark.parametrize("name", losses.names())
def test_forward_traces_without_graph_breaks(name: str) -> None:
    # fullgraph=True fails on a Python branch on a tensor value (a graph break under compile).
    torch._dynamo.reset()
    loss = losses.create(name, SKEWED)
    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    logits, targets, features = random_batch()
    torch.testing.assert_close(compiled(logits, targets, features), loss(logits, targets, features))


BUFFERS = {
    "ce": set(),
    "focal": set(),
    "class_balanced": {"weights"},
    "ldam": {"margins", "weights"},
    "logit_adjust": {"log_prior"},
    "balanced_softmax": {"log_counts"},
    "cdb_ce": {"weights", "tau_used"},
    "fbl": {"alpha", "curr"},
}


@pytest.mark.parametrize("name", losses.names())
def test_per_class_tensors_are_buffers(name: str) -> None:
    loss = losses.create(name, SKEWED)
    assert set(loss.state_dict()) == BUFFERS[name]
    assert all(b.dtype == torch.float32 for b in loss.buffers())
    assert list(loss.parameters()) == []


def test_cdb_state_round_trip(tmp_path) -> None:
    loss = losses.create("cdb_ce", COUNTS, tau="dynamic")
    loss.update(torch.tensor([0.2, 0.6, 0.3]))
    torch.save(loss.state_dict(), tmp_path / "loss.pt")
    fresh = losses.create("cdb_ce", COUNTS, tau="dynamic")
    assert not torch.equal(fresh.weights, loss.weights)
    fresh.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    torch.testing.assert_close(fresh.weights, loss.weights, rtol=0, atol=0)
    torch.testing.assert_close(fresh.tau_used, loss.tau_used, rtol=0, atol=0)
    torch.testing.assert_close(fresh(*batch()), loss(*batch()), rtol=0, atol=0)


def test_fbl_state_round_trip(tmp_path) -> None:
    loss = losses.create("fbl", COUNTS)
    loss.set_epoch(50, 100)
    torch.save(loss.state_dict(), tmp_path / "loss.pt")
    fresh = losses.create("fbl", COUNTS)
    assert fresh.curr.item() == 0.0
    fresh.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    assert fresh.curr.item() == pytest.approx((50 / 90) ** 2, rel=1e-6)
    torch.testing.assert_close(fresh(*batch()), loss(*batch()), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("focal", {"gamma": -1}, "gamma: expected a number >= 0, got -1"),
        ("focal", {"gamma": "much"}, 'gamma: expected a number >= 0, got "much"'),
        ("class_balanced", {"gamma": -0.5}, "gamma: expected a number >= 0, got -0.5"),
        ("class_balanced", {"beta": 1.0}, r"beta: expected a number in \[0, 1\), got 1.0"),
        ("class_balanced", {"beta": -0.1}, r"beta: expected a number in \[0, 1\), got -0.1"),
        ("class_balanced", {"base": "sigmoid"}, 'base: expected one of ce, focal, got "sigmoid"'),
        ("ldam", {"beta": 1}, r"beta: expected a number in \[0, 1\), got 1"),
        ("ldam", {"weights": "cb"}, "weights: expected one of none, class_balanced"),
        ("ldam", {"s": 0}, "s: expected a number > 0, got 0"),
        ("ldam", {"max_m": -0.5}, "max_m: expected a number >= 0"),
        ("cdb_ce", {"tau": "fast"}, 'tau: expected a number >= 0 or "dynamic", got "fast"'),
        ("cdb_ce", {"tau": -1}, 'tau: expected a number >= 0 or "dynamic", got -1'),
        ("cdb_ce", {"tau": True}, 'tau: expected a number >= 0 or "dynamic", got True'),
        ("cdb_ce", {"tau": None}, 'tau: expected a number >= 0 or "dynamic", got None'),
        ("logit_adjust", {"tau": "dynamic"}, 'tau: expected a number >= 0, got "dynamic"'),
        ("logit_adjust", {"tau": float("inf")}, "tau: expected a number >= 0, got inf"),
        ("fbl", {"lam": -60}, "lam: expected a number >= 0, got -60"),
        ("fbl", {"eps": 0}, "eps: expected a number > 0, got 0"),
    ],
)
def test_bad_option_values(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.create(name, COUNTS, **options)


@pytest.mark.parametrize(
    "name", ["balanced_softmax", "logit_adjust", "fbl", "ldam", "class_balanced"]
)
def test_zero_counts_refused_where_a_log_is_taken(name: str) -> None:
    with pytest.raises(ValueError, match="got n_c = 0 for class 1"):
        losses.create(name, [3, 0, 2])


@pytest.mark.parametrize("name", ["ce", "focal", "cdb_ce"])
def test_zero_counts_accepted_where_unused(name: str) -> None:
    losses.create(name, [3, 0, 2])


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([[1, 2], [3, 4]], r"got shape \(2, 2\)"),
        ([1.5, 2.0], "dtype torch.float32"),
        ([], r"got shape \(0,\)"),
        ([4, -1, 2], "got -1 for class 1"),
        ("abc", "class_counts: expected a 1-D sequence of non-negative integers"),
    ],
)
def test_bad_class_counts(counts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.create("ce", counts)


def test_class_counts_accept_integer_tensors() -> None:
    loss = losses.create("balanced_softmax", torch.tensor(COUNTS, dtype=torch.int32))
    torch.testing.assert_close(loss.log_counts, torch.tensor(COUNTS).float().log())


def test_logits_must_match_class_counts() -> None:
    loss = losses.create("ce", [5, 5, 5, 5])
    with pytest.raises(ValueError, match=r"logits: expected shape \(B, 4\).*got \(2, 3\)"):
        loss(*batch())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"loss\.name: expected one of ce, focal, ") as err:
        losses.create("nope", COUNTS)
    assert str(err.value).endswith("got 'nope'")
    assert all(name in str(err.value) for name in losses.names())
    with pytest.raises(ValueError, match="expected one of"):
        losses.option_names("nope")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ValueError, match=r'\(beta, base, gamma\), got unknown option "tau"'):
        losses.create("class_balanced", COUNTS, tau=1.0)
    with pytest.raises(ValueError, match=r'\(\), got unknown option "gamma"'):
        losses.create("ce", COUNTS, gamma=1.0)


def test_option_names() -> None:
    assert losses.option_names("ce") == ()
    assert losses.option_names("focal") == ("gamma",)
    assert losses.option_names("class_balanced") == ("beta", "base", "gamma")
    assert losses.option_names("ldam") == ("max_m", "s", "weights", "beta")
    assert losses.option_names("logit_adjust") == ("tau",)
    assert losses.option_names("balanced_softmax") == ()
    assert losses.option_names("cdb_ce") == ("tau", "reduction", "tau_rule")
    assert losses.option_names("fbl") == ("lam", "eps")


# -------------------------------------------------------------------------------------- registry
def test_registry_refuses_duplicate_names() -> None:
    before = dict(losses.LOSSES)

    class Another(losses.CrossEntropy):
        pass

    with pytest.raises(ValueError, match=r"^loss\.name: 'ce' is already registered$"):
        losses.register("ce")(Another)
    assert before == losses.LOSSES


def test_register_adds_a_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "LOSSES", losses.LOSSES.copy())

    @losses.register("halved_ce")
    class HalvedCE(losses.LongTailLoss):
        def forward(
            self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor
        ) -> torch.Tensor:
            return losses.cross_entropy_loss(logits, targets) / 2

    assert losses.names()[-1] == "halved_ce"
    assert value("halved_ce") == pytest.approx(expected_ce() / 2, rel=1e-6)
    with pytest.raises(TypeError, match="expected a LongTailLoss subclass"):
        losses.register("not_a_loss")(dict)


def test_base_hooks_are_no_ops() -> None:
    loss = losses.create("balanced_softmax", COUNTS)
    before = loss(*batch())
    loss.update(torch.tensor([0.1, 0.2, 0.3]))
    loss.set_epoch(3, 10)
    torch.testing.assert_close(loss(*batch()), before, rtol=0, atol=0)
