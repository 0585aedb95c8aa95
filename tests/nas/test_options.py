"""The option reference (``docs/options.md``): every option described, the committed file up to date."""

import subprocess
import sys
from pathlib import Path

import pytest

from nas.config import SCHEMAS
from nas.options import ENTRIES, reference, schema_keys, undocumented, yaml_options

ROOT = Path(__file__).resolve().parents[2]


def test_every_option_has_a_description():
    assert undocumented() == []  # add a trailing comment to the key in conf/


def test_the_committed_reference_is_current():
    assert (ROOT / "docs" / "options.md").read_text() == reference(), "run: python -m nas.options"


def test_comments_are_read_as_documentation():
    text = ("# file header, not an option\n"
            "defaults:\n  - dataset: digits  # a list\n"
            "seed: 0   # the seed\n"
            "train:\n"
            "  lr: 1.0  # first line\n"
            "           #   second line\n"
            "  # the line above a key describes it\n"
            "  epochs: 2\n"
            "  decay: 0.1  #   continues epochs\n"
            "hydra:\n  run:\n    dir: .  # not an option\n")
    assert yaml_options(text) == {"seed": ("0", "the seed"), "train": ("", ""),
                                  "train.lr": ("1.0", "first line second line"),
                                  "train.epochs": ("2", "the line above a key describes it continues epochs"),
                                  "train.decay": ("0.1", "")}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_help_describes_every_option_and_lists_only_the_groups_the_command_uses(entry):
    r = subprocess.run([sys.executable, "-m", ENTRIES[entry], "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tools:" not in r.stdout and "dataset: cifar10, digits, fashion_mnist, imagefolder" in r.stdout
    for key in schema_keys(SCHEMAS[entry]):
        assert f"\n  {key}=" in r.stdout, key  # with its default and description
    assert ("device: cpu" in r.stdout) == (entry in ("search", "derive"))
