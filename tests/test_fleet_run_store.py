"""Where ``run --regions / --role-arn / --organization`` keeps its stores (against moto).

Each account-region has its own ``audits.<account>.<region>.sqlite3`` beside the ``--store``
path, whose own file only single-account runs use: checking the location must not leave an
empty one behind, and a location that cannot be used is still one clear error (exit 2) before
any AWS call.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from conftest import REGION, issue_certificate

from devicedefender_audit import accounts
from devicedefender_audit.cli import main
from devicedefender_audit.exit_codes import EXIT_OK, EXIT_USAGE
from devicedefender_audit.store import open_store

ACCOUNT = "123456789012"  # moto's default account, the caller's own
WEST = "eu-west-1"
ROLE = "dda-audit"


@pytest.mark.parametrize("selection", [
    ["--regions", f"{REGION},{WEST}"],
    ["--role-arn", f"arn:aws:iam::{ACCOUNT}:role/{ROLE}", "--regions", f"{REGION},{WEST}"],
    ["--organization", ROLE, "--regions", f"{REGION},{WEST}"],
])
def test_no_empty_base_store_is_left_beside_the_account_regions_stores(aws, capsys, tmp_path, fresh_rsa_key,
                                                                       selection):
    if selection[0] == "--organization":  # an organization of the management account alone
        boto3.client("organizations", region_name=REGION).create_organization(FeatureSet="ALL")
    pem = issue_certificate(fresh_rsa_key)
    for region in (REGION, WEST):
        boto3.client("iot", region_name=region).register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    base = tmp_path / "data" / "audits.sqlite3"  # its directory does not exist yet: it is created

    code = main(["run", *selection, "--store", str(base), "--no-progress", "--rate", "DescribeCertificate=1000"])

    assert code == EXIT_OK, capsys.readouterr()
    assert not base.exists()
    names = sorted(p.name for p in base.parent.iterdir())
    stores = [f"audits.{ACCOUNT}.{region}.sqlite3" for region in sorted((REGION, WEST))]
    # The account-regions' files and their sidecars (WAL, fleet state); no probe file either.
    assert all(any(name.startswith(s) for s in stores) for name in names), names
    for name in stores:
        store = open_store(base.parent / name)
        try:
            [task] = store.list_tasks()
            assert task.task_status.value == "COMPLETED" and task.account == ACCOUNT
        finally:
            store.close()


def _unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: ``/sys`` then)."""
    if os.geteuid() == 0:
        return Path("/sys")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked


@pytest.mark.parametrize("where, expected", [
    (lambda tmp: tmp / "a-file" / "audits.sqlite3", "cannot be created"),  # its directory is a file
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: _unwritable_directory(tmp) / "audits.sqlite3", "no store can be created in"),
    (lambda tmp: "dynamodb://x", "write a DynamoDB store as dynamodb://TABLE"),  # a table name is 3+ characters
    (lambda tmp: "dynamodb://dda-fleet/extra", "dynamodb://TABLE/ACCOUNT_ID/REGION"),
])
def test_a_bad_store_location_is_one_usage_error_before_any_aws_call(aws, capsys, monkeypatch, tmp_path, where,
                                                                     expected):
    (tmp_path / "a-file").write_text("not a directory")
    location = where(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    def no_aws_call(*args, **kwargs):
        raise AssertionError("the account-regions were planned (an AWS call) despite a bad store")

    monkeypatch.setattr(accounts, "plan", no_aws_call)
    code = main(["run", "--regions", f"{REGION},{WEST}", "--store", str(location), "--no-progress"])

    captured = capsys.readouterr()
    assert code == EXIT_USAGE and captured.out == ""
    assert captured.err.startswith("error: store ") and captured.err.count("\n") == 1, captured.err
    assert expected in captured.err and "Traceback" not in captured.err
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, no probe left
