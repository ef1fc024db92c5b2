"""The bad-input catalogue (tests/bad_inputs/): every case runs; see that package's docstring."""

from __future__ import annotations

import pytest

from bad_inputs import all_cases

CASES = all_cases()


def test_case_names_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case, tmp_path):
    case.run(tmp_path)
