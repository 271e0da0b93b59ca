"""The README's example runs as it is."""

import runpy
from pathlib import Path


def test_quickstart_runs(capsys):
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "quickstart.py"), run_name="__main__")
    assert "| default * | lora |" in capsys.readouterr().out
