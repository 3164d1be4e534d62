"""How a ``vaeood`` process ends after a torchrun process group (``infra.distributed.exit_process``):
without Python's finalization, where a gloo worker thread dropping a finished collective's
tensors aborted a process whose files were all written (SIGABRT, seen in CI)."""

from __future__ import annotations

import pytest

from vaeood import cli
from vaeood.infra import distributed


class Exited(Exception):
    pass


@pytest.fixture()
def exits(monkeypatch):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited

    monkeypatch.setattr(distributed.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.gc, "freeze", lambda: None)  # command() owns its process; this one is pytest's
    return codes


def test_a_process_that_joined_a_group_ends_with_its_code_and_its_output_flushed(monkeypatch, exits, capsys):
    monkeypatch.setattr(distributed, "_joined", True)
    monkeypatch.setattr(cli, "main", lambda: print("trained: run") or 3)
    with pytest.raises(Exited):
        cli.command()
    assert exits == [3] and capsys.readouterr().out == "trained: run\n"


def test_a_process_that_never_joined_one_exits_as_usual(monkeypatch, exits):
    monkeypatch.setattr(distributed, "_joined", False)
    monkeypatch.setattr(cli, "main", lambda: 2)
    with pytest.raises(SystemExit) as done:
        cli.command()
    assert done.value.code == 2 and exits == []
