"""The two lanes of the suite: ``pytest -m "not e2e"`` (everyday, no process) and the e2e tests.

The marker is a check, not a convention: outside ``e2e`` a test that starts a process fails and
names the marker (``conftest._no_process_outside_e2e``), and the collection rule marks every test
that copies the repository or calls :mod:`subprocess`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ProcessOutsideE2E, _starts_processes

# Bound here so that the rule, which reads the test's source, does not mark the next test e2e.
run = subprocess.run


def test_a_process_outside_e2e_is_refused_and_the_marker_named(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("e2e") is None
    with pytest.raises(ProcessOutsideE2E, match=r'not marked e2e.*pytest -m "not e2e"'):
        run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.e2e
def test_an_e2e_test_starts_processes() -> None:
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    assert out.stdout.strip() == "42"


def _copies(tmp_path):  # a function for the rule to read, never called
    return copy_repo(tmp_path)  # noqa: F821


def _runs(args):
    return subprocess.run(args)


def _reads(path):
    return path.read_text()


def test_the_rule_sees_copies_and_subprocess_calls() -> None:
    assert _starts_processes(_copies) and _starts_processes(_runs)
    assert not _starts_processes(_reads)


def test_every_collected_test_that_uses_a_repository_copy_is_e2e(
    request: pytest.FixtureRequest,
) -> None:
    items = request.session.items
    assert request.node in items
    unmarked = [
        item.nodeid
        for item in items
        if {"repo", "digits_repo", "digits_data"} & set(getattr(item, "fixturenames", ()))
        and not item.get_closest_marker("e2e")
    ]
    assert unmarked == []
