"""The Lambda handlers tried the way a deployment breaks them (in-process, against moto): payloads
of the wrong type or with a misspelt key, a bad ``now``, a region that fails beside one that
does not, an SNS topic that is gone (the audits still run and say the notification failed), and
no prime factor in what the function returns or publishes."""

from __future__ import annotations

import json
import random

import boto3
import moto.iot.models
import pytest
from conftest import DATA, REGION, register
from moto.core.exceptions import JsonRESTError
from moto.sns.models import sns_backends
from test_factorable_audit import key, prime

from devicedefender_audit.accounts import AccountsError
from devicedefender_audit.demo import issue_certificate
from devicedefender_audit.lambda_fleet import audit_account_region, list_account_regions
from devicedefender_audit.lambda_handlers import scheduled_audit

ACCOUNT, WEST = "123456789012", "eu-west-1"


@pytest.fixture
def lambda_env(monkeypatch, tmp_path, aws):
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("DDA_STORE", str(tmp_path / "lambda.sqlite3"))
    monkeypatch.setenv("DDA_REGIONS", f" {REGION} , {WEST} ")  # spaces, as a console user types them
    return monkeypatch


def _sent(topic: str) -> list[tuple[str, str]]:
    return [(subject, message) for _, message, subject, *_ in
            sns_backends[ACCOUNT][REGION].topics[topic].sent_notifications]


@pytest.mark.parametrize("event, complaint", [
    ("run-due", "payload"),
    (["audit"], "payload"),
    ({"region": WEST}, "region"),  # a misspelt key must not audit every configured region instead
    ({"regions": 5}, "regions"),
    ({"regions": [WEST, 3]}, "regions"),
    ({"action": "run-due", "now": {"at": 1}}, "now"),
    ({"action": "run-due", "now": 1e30}, "now"),
    ({"action": "run-due", "now": True}, "now"),
    ({"action": "run-due", "now": "yesterday"}, "now"),
])
def test_a_bad_payload_is_one_value_error_before_any_audit(lambda_env, tmp_path, event, complaint):
    with pytest.raises(ValueError, match=complaint):
        scheduled_audit(event, None)
    assert not list(tmp_path.glob("lambda.*.sqlite3"))  # no region audited


def test_regions_as_text_in_the_payload(lambda_env):
    [only] = scheduled_audit({"regions": WEST}, None)["audits"]
    assert (only["region"], only["taskStatus"]) == (WEST, "COMPLETED")


def test_a_failing_region_is_reported_and_notified_beside_the_one_that_completed(lambda_env, monkeypatch):
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="dda")["TopicArn"]
    lambda_env.setenv("DDA_SNS_TOPIC_ARN", topic)
    listing = moto.iot.models.IoTBackend.list_certificates

    def west_refuses(self):
        if self.region_name == WEST:
            raise JsonRESTError("AccessDeniedException", "not authorized to perform iot:ListCertificates")
        return listing(self)

    monkeypatch.setattr(moto.iot.models.IoTBackend, "list_certificates", west_refuses)
    east, west = scheduled_audit({}, None)["audits"]
    assert (east["region"], east["taskStatus"], east["exitCode"]) == (REGION, "COMPLETED", 0)
    assert (west["region"], west["exitCode"]) == (WEST, 1)
    assert "AccessDeniedException" in json.dumps(west)
    [(subject, message)] = _sent(topic)  # the failing region only
    assert WEST in subject and REGION not in subject and "AccessDeniedException" in message


def test_a_topic_that_is_gone_leaves_the_audits_done_and_says_so(lambda_env, fresh_rsa_key):
    """Publishing is the last step: its failure must neither stop the other regions nor turn a
    finished audit into a failure (the fan-out would retry the whole audit)."""
    iot = boto3.client("iot", region_name=REGION)
    register(iot, (DATA / "roca" / "cert04.pem").read_text())
    lambda_env.setenv("DDA_SNS_TOPIC_ARN", f"arn:aws:sns:{REGION}:{ACCOUNT}:deleted")
    east, west = scheduled_audit({}, None)["audits"]
    assert (east["taskStatus"], east["exitCode"], east["nonCompliantResourcesCount"]) == ("COMPLETED", 3, 1)
    assert "NotFound" in east["notificationError"] and "notificationError" not in west
    assert (west["taskStatus"], west["exitCode"]) == ("COMPLETED", 0)

    fleet = audit_account_region({"accountId": ACCOUNT, "region": REGION, "roleArn": None}, None)
    assert (fleet["taskStatus"], fleet["exitCode"]) == ("COMPLETED", 3) and "NotFound" in fleet["notificationError"]


def test_no_prime_factor_in_the_result_or_the_notification(lambda_env):
    rng = random.Random(11)
    shared, p1, p2 = prime(rng, 512), prime(rng, 512), prime(rng, 512)
    iot = boto3.client("iot", region_name=REGION)
    for n, other in enumerate((p1, p2)):
        register(iot, issue_certificate(key(shared, other), f"pair-{n}"))
    topic = boto3.client("sns", region_name=REGION).create_topic(Name="dda")["TopicArn"]
    lambda_env.setenv("DDA_SNS_TOPIC_ARN", topic)
    result = scheduled_audit({"regions": [REGION]}, None)
    fleet = audit_account_region({"accountId": ACCOUNT, "region": REGION, "roleArn": None}, None)
    [east] = result["audits"]
    assert east["nonCompliantResourcesCount"] == 2 and fleet["nonCompliantResourcesCount"] == 2
    published = " ".join(message for _, message in _sent(topic))
    assert len(_sent(topic)) == 2
    for secret in (shared, p1, p2):
        for text in (json.dumps(result), json.dumps(fleet), published):
            assert str(secret) not in text and f"{secret:x}" not in text.lower()


def test_the_fan_out_lists_no_empty_organization(lambda_env):
    """Without an organization the listing fails (the state machine's execution fails, saying
    why) instead of handing the map zero account-regions, which would pass for an all-clear."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="dda-fleet")
    lambda_env.setenv("DDA_ORGANIZATION_ROLE", "dda-audit")
    lambda_env.setenv("DDA_FLEET_BUCKET", "dda-fleet")
    with pytest.raises(AccountsError, match="no account to audit"):
        list_account_regions({"executionName": "x"}, None)
    assert "Contents" not in boto3.client("s3", region_name=REGION).list_objects_v2(Bucket="dda-fleet")
