"""After ``run --demo`` (or ``demo``), a reading command on the default store that does not exist
yet says where the demo's audits are: it said "run an audit first" to someone who just had, and
``run --demo`` prints no pointer to the demo's own store (``demo`` does)."""

from __future__ import annotations

import pytest

from devicedefender_audit.cli import main
from devicedefender_audit.store import demo_store_path, open_store


@pytest.fixture
def data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("DDA_STORE", raising=False)
    return tmp_path / "devicedefender-audit"


@pytest.mark.parametrize("command", [["list-audits"], ["show-findings"], ["list-mitigations"], ["export"]])
def test_the_missing_default_store_points_to_the_demo_store(data_home, capsys, command):
    demo_store_path().parent.mkdir(parents=True)
    open_store(demo_store_path()).close()  # what run --demo leaves
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"no store at {data_home / 'audits.sqlite3'}" in err
    assert f"--store {demo_store_path()}" in err


def test_without_a_demo_store_there_is_no_demo_hint(data_home, capsys):
    assert main(["list-audits"]) == 2
    err = capsys.readouterr().err
    assert "no audit has been recorded there" in err and "demo's audits" not in err
