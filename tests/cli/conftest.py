"""The world the command-line tests copy (see cli_world.py): built once per session."""

import pytest

from tests.cli.cli_world import build


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cli") / "world")
