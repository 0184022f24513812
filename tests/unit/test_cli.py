"""`labgpu`: the subcommands, and what happens when one of them cannot be imported."""

from __future__ import annotations

import builtins
import importlib
import subprocess
import sys

import pytest

from labgpu.cli import main as cli


def test_every_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMAND_MODULES:
        assert name.replace("_", "-") in out  # labgpu/cli/migrate_ledger.py is `labgpu migrate-ledger`


@pytest.mark.parametrize("name", cli.COMMAND_MODULES)
def test_each_subcommand_module_imports_for_real_and_registers_itself(name):
    module = importlib.import_module(f"labgpu.cli.{name}")  # an ImportError here is a bug, not a missing package
    assert callable(module.register)


@pytest.mark.parametrize("name", cli.COMMAND_MODULES)
def test_each_subcommand_prints_its_help_as_a_real_process(name):
    command = name.replace("_", "-")
    done = subprocess.run(
        [sys.executable, "-m", "labgpu.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: labgpu {command} ")
    assert "unavailable" not in done.stdout and done.stderr == ""


def test_a_subcommand_with_a_missing_dependency_explains_and_the_others_work(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_pydantic(name, *args, **kwargs):
        if name == "pydantic" or name.startswith("pydantic."):
            raise ModuleNotFoundError("No module named 'pydantic'", name="pydantic")
        return real_import(name, *args, **kwargs)

    # Forget the quota package (whichever of its modules hold pydantic) and the command using it.
    for module in [
        m for m in list(sys.modules) if m == "labgpu.quota" or m.startswith(("labgpu.quota.", "labgpu.cli.quotas"))
    ]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", no_pydantic)
    assert cli.main(["quotas", "check"]) == 1
    assert "labgpu quotas: needs the Python package 'pydantic'" in capsys.readouterr().err
    # Whatever options follow, the unavailable subcommand explains instead of a usage error.
    assert cli.main(["quotas", "show", "dave", "--file", "quotas/quotas.yaml"]) == 1
    assert "needs the Python package 'pydantic'" in capsys.readouterr().err
    # `labgpu simulate --help` still parses (it does not need pydantic).
    with pytest.raises(SystemExit) as done:
        cli.main(["simulate", "--help"])
    assert done.value.code == 0
