"""The doctor's case suite (``benchmarks/doctor_cases.py``) as tests: no warning on a
healthy network, the expected code on a sick one, and no crash on either.

A case the current rules misjudge is marked ``xfail(strict=True)`` with the rule at
fault; once the rule is fixed the case passes, the strict mark fails the test, and
the mark comes off.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("transformers")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "doctor_cases.py"


def _load_cases():
    spec = importlib.util.spec_from_file_location("doctor_cases", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


doctor_cases = _load_cases()

#: Cases the rules at this commit misjudge, and the rule at fault (none).
MISJUDGED: dict[str, str] = {}


def _params():
    for case in doctor_cases.CASES:
        marks = [pytest.mark.xfail(strict=True, reason=MISJUDGED[case.name])] if case.name in MISJUDGED else []
        yield pytest.param(case, id=case.name, marks=marks)


def test_every_misjudged_case_exists():
    assert set(MISJUDGED) <= {case.name for case in doctor_cases.CASES}


def test_every_case_has_a_verdict_to_meet():
    for case in doctor_cases.CASES:
        assert case.kind in (doctor_cases.HEALTHY, doctor_cases.SICK)
        assert bool(case.expected) == (case.kind == doctor_cases.SICK), case.name


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("case", _params())
def test_doctor_case(case, tmp_path, one_thread):
    result = doctor_cases.run_case(case, tmp_path)
    assert result.error is None, result.traceback
    found = {f.code: str(f.severity) for f in result.findings}
    if case.kind == doctor_cases.HEALTHY:
        assert not result.flagged, f"false alarm on a healthy network: {found}"
    else:
        assert case.expected <= result.flagged, f"expected {sorted(case.expected)} at warning or worse, got {found}"
    assert result.passed


def test_confusion_table_lists_every_case_and_its_verdict():
    ok = doctor_cases.CaseResult(doctor_cases.CASES[0])
    crashed = doctor_cases.CaseResult(doctor_cases.CASES[-1], error="ZeroDivisionError: float division by zero")
    table = doctor_cases.confusion_table([ok, crashed]).splitlines()
    assert table[0] == "| case | kind | expected | findings | result |"
    assert table[2].startswith(f"| {ok.case.name} | healthy | no warning or worse | none | pass")
    assert "**crash**" in table[3] and table[3].endswith("**FAIL** |")
