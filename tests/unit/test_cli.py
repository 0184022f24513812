"""`labgpu`: the subcommands, and what happens when one of them cannot be imported."""

from __future__ import annotations

import builtins

import pytest

from labgpu.cli import main as cli


def test_every_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMAND_MODULES:
        assert name in out


def test_a_subcommand_with_a_missing_dependency_explains_and_the_others_work(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_pydantic(name, *args, **kwargs):
        if name == "pydantic" or name.startswith("pydantic."):
            raise ModuleNotFoundError("No module named 'pydantic'", name="pydantic")
        return real_import(name, *args, **kwargs)

    for module in [
        m
        for m in list(__import__("sys").modules)
        if m.startswith("labgpu.cli.quotas") or m == "labgpu.quota.policy" or m.startswith("labgpu.quota.spawn_options")
    ]:
        monkeypatch.delitem(__import__("sys").modules, module)
    monkeypatch.setattr(builtins, "__import__", no_pydantic)
    assert cli.main(["quotas", "check"]) == 1
    assert "labgpu quotas: needs the Python package 'pydantic'" in capsys.readouterr().err
    # `labgpu simulate --help` still parses (it does not need pydantic).
    with pytest.raises(SystemExit) as done:
        cli.main(["simulate", "--help"])
    assert done.value.code == 0
