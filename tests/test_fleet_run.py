"""Audits across accounts and regions (``run --regions / --role-arn / --organization``) against
moto: Organizations, STS and AWS IoT in two regions of three accounts (moto keeps accounts apart
by the assumed role's account id). Findings are attributed to the right account-region, a
failing account or region is reported while the others complete, and the exit code is the worst."""

from __future__ import annotations

import json

import boto3
import moto.iot.models
import moto.sts.models
import pytest
from conftest import DATA, REGION, issue_certificate
from moto.core.exceptions import JsonRESTError
from moto.sts.exceptions import STSClientError

from devicedefender_audit.accounts import AccountsError, parse_regions
from devicedefender_audit.cli import main
from devicedefender_audit.exit_codes import SEVERITY, worst
from devicedefender_audit.store import StoreError, open_store, partition_location

MANAGEMENT = "123456789012"
WEST = "eu-west-1"
ROLE = "dda-audit"
ROCA = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361"


def _as(account: str) -> boto3.session.Session:
    """A session in ``account`` (moto's default account is the caller's own)."""
    if account == MANAGEMENT:
        return boto3.session.Session()
    issued = boto3.client("sts", region_name=REGION).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/{ROLE}", RoleSessionName="setup")["Credentials"]
    return boto3.session.Session(aws_access_key_id=issued["AccessKeyId"],
                                 aws_secret_access_key=issued["SecretAccessKey"],
                                 aws_session_token=issued["SessionToken"])


def _register(account: str, region: str, pem: str) -> str:
    iot = _as(account).client("iot", region_name=region)
    return iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")["certificateId"]


@pytest.fixture
def organization(aws, fresh_rsa_key) -> dict:
    """The management account and two members; the same good certificate in four account-regions,
    a ROCA key in member A's us-east-1 and another in member B's eu-west-1."""
    org = boto3.client("organizations", region_name=REGION)
    org.create_organization(FeatureSet="ALL")
    a, b = (org.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]["AccountId"]
            for name in ("member-a", "member-b"))
    good = issue_certificate(fresh_rsa_key)
    for account, region in ((MANAGEMENT, REGION), (a, REGION), (a, WEST), (b, REGION)):
        _register(account, region, good)
    roca_a = _register(a, REGION, (DATA / "roca" / "cert04.pem").read_text())
    roca_b = _register(b, WEST, (DATA / "roca" / "cert05.pem").read_text())
    return {"a": a, "b": b, "roca_a": roca_a, "roca_b": roca_b}


def _run(capsys, *args: str) -> tuple[int, dict]:
    code = main(["run", "--format", "json", "--no-progress", "--rate", "DescribeCertificate=1000", *args])
    return code, json.loads(capsys.readouterr().out)


def _by_place(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["accountId"], r["region"]): r for r in report["accountRegions"]}


def test_organization_audit_attributes_findings_to_each_account_region(organization, capsys, tmp_path):
    a, b = organization["a"], organization["b"]
    store = tmp_path / "audits.sqlite3"

    code, report = _run(capsys, "--organization", ROLE, "--regions", f"{REGION},{WEST}", "--store", str(store))

    places = _by_place(report)
    assert set(places) == {(acct, region) for acct in (MANAGEMENT, a, b) for region in (REGION, WEST)}
    assert all(r["taskStatus"] == "COMPLETED" for r in places.values())
    assert places[(MANAGEMENT, REGION)]["roleArn"] is None  # the caller's own account, own credentials
    assert places[(a, WEST)]["roleArn"] == f"arn:aws:iam::{a}:role/{ROLE}"
    findings = {(f["accountId"], f["region"], f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"],
                 f["reasonForNonComplianceCode"]) for r in places.values() for f in r["findings"]}
    assert findings == {(a, REGION, organization["roca_a"], ROCA), (b, WEST, organization["roca_b"], ROCA)}
    quality = {place: r["auditDetails"]["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"] for place, r in places.items()}
    assert quality[(a, REGION)]["totalResourcesCount"] == 2 and quality[(a, WEST)]["totalResourcesCount"] == 1
    assert quality[(MANAGEMENT, WEST)]["totalResourcesCount"] == 0
    assert {place: r["exitCode"] for place, r in places.items()} == {
        place: 3 if place in {(a, REGION), (b, WEST)} else 0 for place in places}
    assert code == report["exitCode"] == 3
    # Each account-region has a store of its own: the same certificate id is in four inventories.
    assert places[(a, WEST)]["store"] == str(tmp_path / f"audits.{a}.{WEST}.sqlite3")
    for (account, region), result in places.items():
        partition = open_store(result["store"])
        try:
            [task] = partition.list_tasks()
            assert (task.task_id, task.account, task.region) == (result["taskId"], account, region)
        finally:
            partition.close()


def test_a_role_that_cannot_be_assumed_and_a_disabled_region_fail_alone(organization, capsys, tmp_path,
                                                                        monkeypatch):
    a, b = organization["a"], organization["b"]
    assume_role = moto.sts.models.STSBackend.assume_role

    def denied(self, **kwargs):
        if kwargs["role_arn"].startswith(f"arn:aws:iam::{b}:"):
            raise STSClientError("AccessDenied", f"not authorized to perform sts:AssumeRole on {kwargs['role_arn']}")
        return assume_role(self, **kwargs)

    listing = moto.iot.models.IoTBackend.list_certificates

    def disabled(self):
        if (self.account_id, self.region_name) == (a, WEST):
            raise JsonRESTError("UnrecognizedClientException", "The security token included in the request is invalid")
        return listing(self)

    monkeypatch.setattr(moto.sts.models.STSBackend, "assume_role", denied)
    monkeypatch.setattr(moto.iot.models.IoTBackend, "list_certificates", disabled)

    code, report = _run(capsys, "--organization", ROLE, "--regions", f"{REGION},{WEST}",
                        "--store", str(tmp_path / "audits.sqlite3"))

    places = _by_place(report)
    assert len(places) == 6
    for region in (REGION, WEST):  # both regions of the account whose role was refused
        failed = places[(b, region)]
        assert (failed["taskStatus"], failed["errorCode"], failed["taskId"], failed["exitCode"]) == (
            "FAILED", "AccessDenied", None, 1)
        assert f"arn:aws:iam::{b}:role/{ROLE}" in failed["message"]
    region_failed = places[(a, WEST)]
    assert (region_failed["taskStatus"], region_failed["exitCode"]) == ("FAILED", 1)
    assert region_failed["auditDetails"]["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]["errorCode"] == (
        "UnrecognizedClientException")
    # The others completed, findings included; the worst exit code wins: failure over findings.
    assert places[(a, REGION)]["exitCode"] == 3 and len(places[(a, REGION)]["findings"]) == 1
    assert places[(MANAGEMENT, REGION)]["exitCode"] == 0
    assert code == report["exitCode"] == 1


def test_role_arn_audits_that_account_and_prints_one_table(organization, capsys, tmp_path):
    b = organization["b"]
    code = main(["run", "--role-arn", f"arn:aws:iam::{b}:role/{ROLE}", "--regions", WEST, "--no-progress",
                 "--rate", "DescribeCertificate=1000", "--store", str(tmp_path / "audits.sqlite3")])
    out = capsys.readouterr().out
    assert code == 3
    audit_row, finding_row = [line.split() for line in out.splitlines() if line.startswith(f"{b} ")]
    assert (audit_row[:2], audit_row[3], audit_row[-1]) == ([b, WEST], "COMPLETED", "3")
    assert finding_row == [b, WEST, "CRITICAL", organization["roca_b"], "-", ROCA]
    assert organization["roca_b"] in out and ROCA in out
    assert "1 account-region(s): 0 compliant, 1 non-compliant, 0 not audited in full." in out


def test_partitions_of_one_dynamodb_table_keep_account_regions_apart(organization, capsys):
    a = organization["a"]
    code, report = _run(capsys, "--role-arn", f"arn:aws:iam::{a}:role/{ROLE}", "--regions", f"{REGION},{WEST}",
                        "--store", "dynamodb://dda-fleet", "--region", REGION)
    assert code == 3
    places = _by_place(report)
    assert places[(a, REGION)]["store"] == f"dynamodb://dda-fleet/{a}/{REGION}"
    east, west = open_store(f"dynamodb://dda-fleet/{a}/{REGION}"), open_store(f"dynamodb://dda-fleet/{a}/{WEST}")
    whole = open_store("dynamodb://dda-fleet")
    try:
        assert [t.task_id for t in east.list_tasks()] == [places[(a, REGION)]["taskId"]]
        assert [t.task_id for t in west.list_tasks()] == [places[(a, WEST)]["taskId"]]
        assert whole.list_tasks() == [] and whole.latest_task_id() is None
        roca = east.inventory_record(organization["roca_a"])
        assert roca is not None and roca.description is not None and west.inventory_record(roca.certificate_id) is None
        assert [f.certificate_id for f in east.findings(places[(a, REGION)]["taskId"])] == [organization["roca_a"]]
    finally:
        for store in (east, west, whole):
            store.close()
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName="dda-fleet")["Items"]
    assert items and all(item["PK"]["S"].startswith(f"{a}/") for item in items)


def test_a_partition_stores_records_and_batches_like_the_whole_table(aws):
    one, two = (open_store(f"dynamodb://dda-parts/{MANAGEMENT}/{region}") for region in (REGION, WEST))
    try:
        assert one.insert_record("suppression", "k", {"n": 1}) and two.insert_record("suppression", "k", {"n": 2})
        assert not one.insert_record("suppression", "k", {"n": 3})
        with one.batch():
            one.put_record("config", "account", {"region": REGION})
        assert one.records("config") == [("account", {"region": REGION})] and two.records("config") == []
        assert one.get_record("suppression", "k") == {"n": 1} and two.get_record("suppression", "k") == {"n": 2}
        assert two.delete_record("suppression", "k") and one.get_record("suppression", "k") == {"n": 1}
    finally:
        one.close()
        two.close()


def test_store_partition_locations():
    assert partition_location("/data/audits.sqlite3", MANAGEMENT, WEST) == f"/data/audits.{MANAGEMENT}.{WEST}.sqlite3"
    assert partition_location("dynamodb:/tab1", MANAGEMENT, WEST) == f"dynamodb://tab1/{MANAGEMENT}/{WEST}"
    with pytest.raises(StoreError, match="already"):
        partition_location(f"dynamodb://tab1/{MANAGEMENT}/{WEST}", MANAGEMENT, WEST)
    with pytest.raises(StoreError):
        partition_location("/data/audits.sqlite3", "12345", WEST)
    with pytest.raises(StoreError, match="ACCOUNT_ID/REGION"):
        open_store("dynamodb://tab1/not-an-account/eu-west-1")


def test_regions_come_from_botocores_endpoint_data():
    session = boto3.session.Session(region_name=REGION)
    every = parse_regions("all", session)
    assert {REGION, WEST} <= set(every) and len(every) == len(set(every)) > 10
    assert parse_regions(f" {WEST},{REGION},{WEST} ", session) == [WEST, REGION]
    with pytest.raises(AccountsError, match="eu-wset-1"):
        parse_regions("eu-wset-1", session)
    with pytest.raises(AccountsError, match="span the partitions aws, aws-cn"):
        parse_regions(f"{REGION},cn-north-1", session)  # one set of credentials cannot reach both


@pytest.mark.parametrize("args", [
    ["--regions", "eu-wset-1"],
    ["--role-arn", "arn:aws:iam::123:role/x"],
    ["--organization", "bad name"],
    ["--regions", REGION, "--demo"],
])
def test_bad_options_are_one_usage_error_before_any_aws_call(aws_env, capsys, args):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_worst_exit_code():
    assert worst([0, 4, 3]) == 3 and worst([3, 1, 0]) == 1 and worst([0, 4]) == 4 and worst([]) == 0
    assert worst([1, 130]) == 130 and SEVERITY[-1] == 0


def test_a_partition_that_fails_in_use_is_a_store_error_of_that_account_region(organization, capsys, tmp_path,
                                                                              monkeypatch):
    """A store that failed mid-audit (locked past the wait, a full disk) read INTERNAL_ERROR with
    the exception's class name; it is the store's own message, as at open."""
    from devicedefender_audit import fleet_run
    from devicedefender_audit.store.base import StoreUnavailable

    def locked(self):
        raise StoreUnavailable("store x is locked by another process writing to it (waited 120 s)")

    monkeypatch.setattr(fleet_run.Audit, "run", locked)
    code, report = _run(capsys, "--role-arn", f"arn:aws:iam::{organization['a']}:role/{ROLE}", "--regions", REGION,
                        "--store", str(tmp_path / "audits.sqlite3"))
    [failed] = _by_place(report).values()
    assert (failed["errorCode"], failed["exitCode"], code) == ("STORE_ERROR", 1, 1)
    assert failed["message"].startswith("store x is locked")
