"""A DynamoDB store keeps the factorable check's fleet state in S3 (store/s3_fleet_state.py), on moto.

With ``dynamodb://TABLE?fleet-state=s3://BUCKET/PREFIX`` an audit compares only what changed since
the last one and reports what a full comparison reports; each account-region partition has its
own object; a bucket that is missing or denied, or an object that is damaged, makes the audit
compare in full and say why, never fail or report a clean fleet. The Lambdas take the location
from ``DDA_STORE``, as ``infra/template.yaml`` gives it.
"""

from __future__ import annotations

import fnmatch
import random
from pathlib import Path

import boto3
import moto.s3.models
import pytest
from cfnlint.decode import decode as decode_template
from conftest import REGION, REPO
from moto.s3.exceptions import S3ClientError
from test_fleet_audit import Fleet, audit, phase_of

from devicedefender_audit.factoring import fleet_audit
from devicedefender_audit.factoring.codes import DUPLICATE_KEY, SHARED_PRIME
from devicedefender_audit.factoring.fleet_audit import FleetComparison, decode
from devicedefender_audit.lambda_fleet import audit_account_region
from devicedefender_audit.lambda_handlers import scheduled_audit
from devicedefender_audit.store import StoreError, open_store, partition_location
from devicedefender_audit.store.s3_fleet_state import PartsReader, S3Location

ACCOUNT = "123456789012"  # moto's
WEST = "eu-west-1"
TABLE, BUCKET, PREFIX = "dda-audits", "dda-fleet", "fleet-state"
LOCATION = f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/{PREFIX}"
#: The stack's functions that audit into the DynamoDB table, and their roles.
AUDIT_FUNCTIONS = {"AuditFunction": "AuditRole", "FleetAuditFunction": "FleetAuditRole"}


def _resources() -> dict:
    template, errors = decode_template(str(REPO / "infra" / "template.yaml"))
    assert not errors, errors
    return template["Resources"]


def _deployed(value: dict) -> str:
    """A ``!Sub`` of the template as deployed with this test's table and bucket names."""
    text = value["Fn::Sub"]
    names = {"${AuditTable}": TABLE, "${FleetBucket}": BUCKET, "${FleetBucket.Arn}": f"arn:aws:s3:::{BUCKET}"}
    for name, deployed in names.items():
        text = text.replace(name, deployed)
    assert "${" not in text, text
    return text


def object_key(region: str = REGION, table: str = TABLE) -> str:
    return f"{PREFIX}/{table}/{ACCOUNT}/{region}/fleet-state"


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def comparisons(monkeypatch) -> list[FleetComparison]:
    """Every fleet comparison the engine makes, in order."""
    made: list[FleetComparison] = []
    real = fleet_audit.compare_fleet

    def recorded(*args, **kwargs) -> FleetComparison:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fleet_audit, "compare_fleet", recorded)
    return made


def plant(iot, first_prime: int = 0) -> Fleet:
    """A pair sharing a prime, a duplicated key and good keys (7 of 11 keys flagged)."""
    fleet = Fleet(iot)
    fleet.drawn = first_prime
    shared = fleet.prime()
    fleet.add("pair-a", shared)
    fleet.add("pair-b", shared)
    fleet.add("dup-a")
    fleet.add("dup-b", *fleet.primes["dup-a"])
    for i in range(7):
        fleet.add(f"good-{i}")
    return fleet


def full_comparison(iot) -> dict:
    """What a DynamoDB store that keeps no state reports for the account now (a fresh table)."""
    store = open_store(f"dynamodb://fresh-{random.randrange(10**9)}")
    try:
        findings, phases = audit(iot, store)
    finally:
        store.close()
    assert phase_of(phases).endswith("in full (no saved state)")
    return findings


def stored_members(s3, key: str) -> set[str]:
    _, members = decode(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return set(members.names(members.ids == members.ids))


def test_a_second_audit_compares_only_what_changed_and_equals_a_full_one(iot, s3, comparisons):
    fleet = plant(iot)
    store = open_store(partition_location(LOCATION, ACCOUNT, REGION))
    first, phases = audit(iot, store)
    assert phase_of(phases).endswith("in full (no saved state)") and not comparisons[-1].incremental
    assert first == full_comparison(iot) and len(first) == 4
    assert stored_members(s3, object_key()) == set(fleet.ids.values())

    again, phases = audit(iot, store)
    assert again == first and comparisons[-1].incremental and "0 new and 0 gone" in phase_of(phases)

    fleet.add("joins-pair", fleet.primes["pair-a"][0])
    fleet.add("pairs-good", fleet.primes["good-0"][1])
    fleet.add("new-good")
    fleet.delete("dup-b")
    fleet.status("good-1", "INACTIVE")
    later, phases = audit(iot, store)
    latest = comparisons[-1]
    assert latest.incremental and (latest.added, latest.removed, latest.rebuilt_because) == (3, 2, "")
    assert "3 new and 2 gone" in phase_of(phases)
    assert later == full_comparison(iot)
    assert (fleet.ids["good-0"], SHARED_PRIME) in later and (fleet.ids["dup-a"], DUPLICATE_KEY) not in later
    assert stored_members(s3, object_key()) == set(fleet.ids.values()) - {fleet.ids["dup-b"], fleet.ids["good-1"]}
    store.close()


def test_each_partition_keeps_its_own_state(aws, s3, comparisons):
    east, west = plant(boto3.client("iot", region_name=REGION)), plant(boto3.client("iot", region_name=WEST), 20)
    stores = {region: open_store(partition_location(LOCATION, ACCOUNT, region)) for region in (REGION, WEST)}
    fleets = {REGION: east, WEST: west}
    for region, store in stores.items():
        _, phases = audit(fleets[region].iot, store)
        assert phase_of(phases).endswith("in full (no saved state)")  # not the other region's state
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted([object_key(REGION), object_key(WEST)])
    for region, fleet in fleets.items():
        assert stored_members(s3, object_key(region)) == set(fleet.ids.values())

    west.add("joins-west-pair", west.primes["pair-a"][0])
    for region, store in stores.items():
        findings, phases = audit(fleets[region].iot, store)
        assert comparisons[-1].incremental
        assert ("1 new" if region == WEST else "0 new") in phase_of(phases)
        assert {cid for cid, _ in findings} == {fleets[region].ids[name] for name in (
            "pair-a", "pair-b", "dup-a", "dup-b", *(["joins-west-pair"] if region == WEST else []))}
        store.close()


def _refused(self, *args, **kwargs):
    raise S3ClientError("AccessDenied", "Access Denied")


@pytest.mark.parametrize("fault", ["missing bucket", "access denied"])
def test_an_unusable_bucket_means_a_full_comparison_that_says_why(iot, s3, comparisons, monkeypatch, fault):
    fleet = plant(iot)
    expected = full_comparison(iot)
    location = LOCATION
    if fault == "missing bucket":
        location = LOCATION.replace(BUCKET, "no-such-bucket")
        reading = "cannot be read: the bucket no-such-bucket does not exist (NoSuchBucket)"
        writing = "cannot be written: the bucket no-such-bucket does not exist (NoSuchBucket)"
    else:
        monkeypatch.setattr(moto.s3.models.S3Backend, "get_object", _refused)
        monkeypatch.setattr(moto.s3.models.S3Backend, "put_object", _refused)
        reading = f"cannot be read: access denied; the role needs s3:GetObject on arn:aws:s3:::{BUCKET}/{object_key()}"
        writing = "cannot be written: access denied; the role needs s3:PutObject"
    store = open_store(partition_location(location, ACCOUNT, REGION))
    for late in ("late-0", "late-1"):
        fleet.add(late, fleet.primes["good-0"][0])
        findings, phases = audit(iot, store)  # the task completes (audit() asserts it)
        [rebuilt] = [label for label in phases if " in full (" in label]
        assert "in full (the saved state is unreadable: fleet state s3://" in rebuilt and reading in rebuilt
        assert writing in comparisons[-1].not_saved and not comparisons[-1].incremental
        assert any("the state was not saved" in label for label in phases)
        assert set(expected) < set(findings) and (fleet.ids[late], SHARED_PRIME) in findings  # never all-clear
    store.close()


def test_a_damaged_object_is_compared_in_full_and_saved_whole_again(iot, s3, comparisons):
    fleet = plant(iot)
    store = open_store(partition_location(LOCATION, ACCOUNT, REGION))
    expected, _ = audit(iot, store)
    data = s3.get_object(Bucket=BUCKET, Key=object_key())["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=object_key(), Body=data[:-1] + bytes([data[-1] ^ 1]))
    findings, phases = audit(iot, store)
    assert "in full (the saved state is unusable: fleet product is truncated or damaged" in phase_of(phases)
    assert findings == expected
    assert stored_members(s3, object_key()) == set(fleet.ids.values())  # saved whole again
    store.close()


def test_a_large_state_is_uploaded_in_parts_and_read_back_whole(s3):
    store = open_store(f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/{PREFIX}")
    assert store.load_fleet_state() is None
    rng = random.Random(7)
    parts = [b"header", rng.randbytes(9 * 2**20), b"", rng.randbytes(12 * 2**20 + 3)]
    uploads = []
    s3_client = store._fleet_state._s3  # the store's own client
    s3_client.meta.events.register("before-call.s3.*", lambda model, **_: uploads.append(model.name))
    store.save_fleet_state(parts)
    assert "CreateMultipartUpload" in uploads and "CompleteMultipartUpload" in uploads and "PutObject" not in uploads
    assert store.load_fleet_state() == b"".join(parts)
    store.save_fleet_state([b"small"])  # replaced, one object
    assert store.load_fleet_state() == b"small"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [f"{PREFIX}/{TABLE}/fleet-state"]
    store.close()


def test_parts_are_read_as_one_file_without_being_joined():
    rng = random.Random(11)
    parts = [rng.randbytes(n) for n in (0, 5, 1, 300, 0, 77)]
    whole = b"".join(parts)
    reader = PartsReader(parts)
    assert reader.seek(0, 2) == len(whole) and reader.tell() == len(whole) and reader.read(10) == b""
    for _ in range(50):
        start, size = rng.randrange(len(whole) + 1), rng.randrange(-1, 120)
        reader.seek(start)
        assert reader.read(size) == (whole[start:] if size < 0 else whole[start : start + size])
    reader.seek(3)
    buffer = bytearray(7)
    assert reader.readinto(buffer) == 7 and bytes(buffer) == whole[3:10]
    with pytest.raises(ValueError, match="negative"):
        reader.seek(-1)


def test_the_location_is_a_store_option_kept_by_partitions():
    partition = partition_location(f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/a/b/", ACCOUNT, WEST)
    assert partition == f"dynamodb://{TABLE}/{ACCOUNT}/{WEST}?fleet-state=s3://{BUCKET}/a/b"
    # $DDA_STORE and --store go through pathlib.Path, which collapses every "//".
    assert partition_location(str(Path(f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}")), ACCOUNT, WEST) == (
        f"dynamodb://{TABLE}/{ACCOUNT}/{WEST}?fleet-state=s3://{BUCKET}")
    assert partition_location(f"dynamodb://{TABLE}", ACCOUNT, WEST) == f"dynamodb://{TABLE}/{ACCOUNT}/{WEST}"
    location = S3Location.parse(f"s3://{BUCKET}/{PREFIX}/")
    assert location.key_for(TABLE, None) == f"{PREFIX}/{TABLE}/fleet-state"
    assert location.key_for(TABLE, f"{ACCOUNT}/{WEST}") == f"{PREFIX}/{TABLE}/{ACCOUNT}/{WEST}/fleet-state"
    assert S3Location.parse(f"s3://{BUCKET}").key_for(TABLE, None) == f"{TABLE}/fleet-state"


@pytest.mark.parametrize(("location", "error"), [
    (f"dynamodb://{TABLE}?fleet=s3://{BUCKET}/x", "one option is fleet-state=s3://BUCKET/PREFIX"),
    (f"dynamodb://{TABLE}?fleet-state", "one option is fleet-state"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/x&other=1", "one option is fleet-state"),
    (f"dynamodb://{TABLE}?fleet-state=https://{BUCKET}/x", "write it as s3://BUCKET/PREFIX"),
    (f"dynamodb://{TABLE}?fleet-state=s3://Not_A_Bucket/x", "write it as s3://BUCKET/PREFIX"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/a//b", "write it as s3://BUCKET/PREFIX"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/a b", "write it as s3://BUCKET/PREFIX"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/a/../b", "no . or .. between slashes"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/./b", "no . or .. between slashes"),
    (f"dynamodb://{TABLE}?fleet-state=s3://{BUCKET}/b/..", "no . or .. between slashes"),
    (f"dynamodb://{TABLE}/{ACCOUNT}/{WEST}?fleet-state=s3://{BUCKET}", "one account-region's already"),
])
def test_a_bad_location_is_one_store_error(location, error):
    with pytest.raises(StoreError, match=error):
        partition_location(location, ACCOUNT, REGION)


def test_the_lambdas_keep_the_state_where_ddastore_says(monkeypatch, iot, s3, comparisons):
    """The stack's audit function (every region of the account) and the fan-out's (one
    account-region) take the location from DDA_STORE, as the template sets it (checked below),
    and share the partition's state."""
    fleet = plant(iot)
    for name, value in (("AWS_REGION", REGION), ("DDA_REGIONS", REGION), ("DDA_STORE", LOCATION)):
        monkeypatch.setenv(name, value)
    [first] = scheduled_audit({}, None)["audits"]
    assert first["store"] == f"dynamodb://{TABLE}/{ACCOUNT}/{REGION}?fleet-state=s3://{BUCKET}/{PREFIX}"
    assert stored_members(s3, object_key()) == set(fleet.ids.values())
    fleet.add("joins-pair", fleet.primes["pair-a"][1])
    [second] = scheduled_audit({}, None)["audits"]
    fan_out = audit_account_region({"accountId": ACCOUNT, "region": REGION, "roleArn": None}, None)
    assert [c.incremental for c in comparisons] == [False, True, True]
    assert (comparisons[1].added, comparisons[2].added) == (1, 0)
    flagged = {fleet.ids[name] for name in ("pair-a", "pair-b", "joins-pair", "dup-a", "dup-b")}
    for report in (second, fan_out):
        assert {f["certificateId"] for f in report["findings"]} >= flagged
        assert report["store"] == first["store"]


# the stack (infra/template.yaml) --------------------------------------------------------------


def test_the_stack_gives_each_audit_function_the_state_location_and_only_that_prefix():
    resources = _resources()
    for function, role in AUDIT_FUNCTIONS.items():
        store = _deployed(resources[function]["Properties"]["Environment"]["Variables"]["DDA_STORE"])
        assert store == LOCATION  # what the Lambda test below runs with
        statements = [s for policy in resources[role]["Properties"]["Policies"]
                      for s in policy["PolicyDocument"]["Statement"] if isinstance(s, dict) and "Action" in s]
        s3_grants = {(action, _deployed(s["Resource"]) if "Fn::Sub" in s["Resource"] else s["Resource"]["Fn::GetAtt"][0])
                     for s in statements for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                     if action.startswith("s3:")}
        objects = f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"
        assert s3_grants == {("s3:GetObject", objects), ("s3:PutObject", objects), ("s3:AbortMultipartUpload", objects),
                             ("s3:ListBucket", "FleetBucket")}
        # Every partition's object lies under the granted prefix.
        for region in (REGION, WEST):
            key = object_key(region)
            assert fnmatch.fnmatchcase(f"arn:aws:s3:::{BUCKET}/{key}", objects)
    bucket = resources["FleetBucket"]
    assert "Condition" not in bucket and bucket["DeletionPolicy"] == "Retain"
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    # A state is rewritten only when the fleet changed: no expiry may reach it.
    assert all(rule.get("Prefix") in ("runs/", "results/") for rule in rules if "ExpirationInDays" in rule)
    assert any("AbortIncompleteMultipartUpload" in rule for rule in rules)
