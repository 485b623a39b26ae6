"""``run`` across accounts and regions, tried the way a user breaks it (against moto): an
organization that cannot be listed or lists nothing, an empty ``--regions``, a store that is
already one account-region's, Ctrl-C in the middle of a run (every running audit recorded
CANCELED, also one still assuming its role when the interrupt came; exit 130)."""

from __future__ import annotations

import json
import threading

import boto3
import moto.iot.models
import moto.organizations.models
import moto.sts.models
import pytest
from conftest import DATA, REGION
from moto.core.exceptions import JsonRESTError
from moto.organizations.exceptions import AWSOrganizationsNotInUseException

from devicedefender_audit import fleet_run
from devicedefender_audit.accounts import parse_regions
from devicedefender_audit.cli import main
from devicedefender_audit.fleet_run import FleetRun
from devicedefender_audit.store import open_store

ACCOUNT = "123456789012"
WEST, OREGON = "eu-west-1", "us-west-2"


def _error(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_organization_not_in_use_is_one_error_not_an_empty_all_clear(aws, capsys):
    """moto lists no account when there is no organization; AWS refuses with
    AWSOrganizationsNotInUseException. Neither is "0 account-regions, exit 0"."""
    code = main(["run", "--organization", "dda-audit", "--regions", REGION, "--no-progress"])
    out, err = _error(capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "no account" in err and "Traceback" not in err


@pytest.mark.parametrize("raised, code_in_message", [
    (AWSOrganizationsNotInUseException(), "AWSOrganizationsNotInUseException"),
    (JsonRESTError("AccessDeniedException", "not authorized to perform organizations:ListAccounts"),
     "AccessDeniedException"),
])
def test_an_organization_that_cannot_be_listed_is_one_error(aws, capsys, monkeypatch, raised, code_in_message):
    def refuse(self, **kwargs):
        raise raised

    monkeypatch.setattr(moto.organizations.models.OrganizationsBackend, "list_accounts", refuse)
    code = main(["run", "--organization", "dda-audit", "--regions", REGION, "--format", "json"])
    out, err = _error(capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and code_in_message in err and "organizations:ListAccounts" in err


def test_an_empty_regions_list_is_a_usage_error_not_the_default_region(aws_env, capsys):
    """``--regions "$REGIONS"`` with an unset variable must not audit the default region alone."""
    assert main(["run", "--regions", "", "--no-progress"]) == 2
    out, err = _error(capsys)
    assert out == "" and err.startswith("error: --regions")


def test_a_store_that_is_one_account_regions_already_is_refused_before_any_aws_call(aws, capsys):
    code = main(["run", "--regions", f"{REGION},{WEST}", "--store", f"dynamodb://dda-x/{ACCOUNT}/{REGION}"])
    out, err = _error(capsys)
    assert code == 2 and out == "" and "dynamodb://dda-x" in err
    assert boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"] == []


@pytest.fixture
def interrupted_mid_run(aws, monkeypatch):
    """Ctrl-C arrives once ``blocked`` audits are inside a moto call; those calls go on only
    once the run has asked the running audits to stop."""
    release, inside = threading.Event(), threading.Semaphore(0)
    listing = moto.iot.models.IoTBackend.list_certificates

    def slow_listing(self):
        inside.release()
        release.wait(30)
        return listing(self)

    cancel_running = FleetRun.cancel_running

    def cancel_then_release(self):
        cancel_running(self)
        release.set()

    def control_c_when(blocked: int):
        def wait(pending, timeout, return_when):
            for _ in range(blocked):
                assert inside.acquire(timeout=30), "the audits never started"
            raise KeyboardInterrupt
        monkeypatch.setattr(fleet_run, "wait", wait)

    monkeypatch.setattr(moto.iot.models.IoTBackend, "list_certificates", slow_listing)
    monkeypatch.setattr(FleetRun, "cancel_running", cancel_then_release)
    return control_c_when, inside, release


def test_control_c_cancels_every_running_account_region(interrupted_mid_run, capsys, tmp_path):
    control_c_when, _, _ = interrupted_mid_run
    boto3.client("iot", region_name=REGION).register_certificate_without_ca(
        certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")
    control_c_when(2)
    code = main(["run", "--regions", f"{REGION},{WEST},{OREGON}", "--parallel", "2", "--format", "json",
                 "--no-progress", "--store", str(tmp_path / "audits.sqlite3")])
    report = json.loads(capsys.readouterr().out)
    assert code == report["exitCode"] == 130
    places = {r["region"]: r for r in report["accountRegions"]}
    assert {places[region]["taskStatus"] for region in (REGION, WEST)} == {"CANCELED"}
    assert (places[OREGON]["errorCode"], places[OREGON]["taskId"]) == ("NOT_RUN", None)
    for region in (REGION, WEST):  # recorded so in each partition, as list-audits shows it
        store = open_store(places[region]["store"])
        try:
            assert store.get_task(places[region]["taskId"]).task_status.value == "CANCELED"
        finally:
            store.close()
        assert main(["list-audits", "--store", places[region]["store"]]) == 0
        listed = capsys.readouterr().out
        assert places[region]["taskId"] in listed and "CANCELED" in listed


def test_an_audit_still_assuming_its_role_at_control_c_is_canceled_too(interrupted_mid_run, capsys, tmp_path,
                                                                       monkeypatch):
    """One audit is listing, the other is still in STS AssumeRole when Ctrl-C comes: it must not
    go on to audit its account-region in full while the run waits for it."""
    control_c_when, inside, release = interrupted_mid_run
    assume_role = moto.sts.models.STSBackend.assume_role
    first: list[int] = []

    def slow_second_assume(self, **kwargs):
        me = threading.get_ident()
        first.append(first[0] if first else me)
        if me != first[0]:
            inside.release()
            release.wait(30)
        return assume_role(self, **kwargs)

    monkeypatch.setattr(moto.sts.models.STSBackend, "assume_role", slow_second_assume)
    control_c_when(2)
    code = main(["run", "--role-arn", "arn:aws:iam::210987654321:role/dda", "--regions", f"{REGION},{WEST}",
                 "--parallel", "2", "--format", "json", "--no-progress", "--store", str(tmp_path / "a.sqlite3")])
    report = json.loads(capsys.readouterr().out)
    assert code == 130
    assert [r["taskStatus"] for r in report["accountRegions"]] == ["CANCELED", "CANCELED"]


@pytest.mark.parametrize("region, partition_regions", [
    ("cn-north-1", ["cn-north-1", "cn-northwest-1"]),
    ("us-gov-west-1", ["us-gov-east-1", "us-gov-west-1"]),
])
def test_all_regions_of_a_profile_in_another_partition(region, partition_regions):
    """``--regions all`` with a profile in AWS China or GovCloud: that partition's IoT regions only."""
    assert parse_regions("all", boto3.session.Session(region_name=region)) == partition_regions
