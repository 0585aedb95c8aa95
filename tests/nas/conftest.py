"""Fixtures shared by the tests of nas/."""

from pathlib import Path

import pytest

from search_spaces.spaces import get_space


@pytest.fixture(scope="module")
def digits_arch_json(tmp_path_factory) -> Path:
    """A random QuadraBlock architecture at the digits shape (1x16x16, 10 classes, stem stride 2)."""
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    get_space("quadra").with_input((1, 16, 16), 10, 2).random_arch(0).save(path)
    return path
