"""A mitigation task's record of its own effects (mitigation_effects.RunEffects), against moto:
shared by the Mitigators of every role in a task, never recorded for a call that failed, never
suppressing another resource's change; and the audit phases and account planning around it."""

from __future__ import annotations

import dataclasses

import boto3
from botocore.exceptions import ClientError
from conftest import DATA, REGION, register, run_audit
from conftest import issue_certificate as issue
from test_mitigation import TASK, config, group_members, status_of

from devicedefender_audit.mitigation import ActionDefinition, Mitigator
from devicedefender_audit.models import MitigationActionType as Action
from devicedefender_audit.models import MitigationStatus
from devicedefender_audit.service.context import ServiceContext
from devicedefender_audit.service.mitigation_tasks import start_mitigation_task
from devicedefender_audit.store import open_store

QUALITY = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
FACTORABLE = "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"
ROLE_A = "arn:aws:iam::123456789012:role/mitigation-a"
ROLE_B = "arn:aws:iam::123456789012:role/mitigation-b"


def _first(a):
    return next(f for f in a["findings"] if f.certificate_id == a["certs"][0]["certificateId"])


def _second_finding(a):
    """A FACTORABLE finding of the first certificate, stored as an audit would have."""
    second = _first(a).model_copy(update={"finding_id": "second-finding", "check_name": FACTORABLE})
    a["store"].add_findings([second])
    return second


def _fail_once(client, operation: str, code: str = "ThrottlingException"):
    """The first ``operation`` call (botocore model name) raises ``code``; later ones go through."""
    state = {"failed": False}

    def hook(model, **_):
        if model.name == operation and not state["failed"]:
            state["failed"] = True
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, model.name)

    client.meta.events.register("before-call.*.*", hook)
    return state


def _ctx(a) -> ServiceContext:
    """The service as the CLI runs it: own credentials, role ARNs only recorded."""
    return ServiceContext(store=a["store"], iot_client=lambda: a["iot"], detectors=list,
                          sns_client=lambda: a["sns"])


def _task_calls(a, task_id):
    return sorted((c.operation, tuple(sorted(c.parameters.items())))
                  for e in a["store"].executions(task_id) for c in e.calls)


# --- one RunEffects per task, whichever role's Mitigator made the change -------------------


def test_a_dry_run_task_plans_the_real_calls_when_two_actions_of_one_effect_have_other_roles(account):
    """Two stored actions that deactivate (same digest) but act with different roleArns: the
    task has one Mitigator per role, and the real run deactivates once; the dry run's second
    Mitigator must see the first one's planned effect, or it reads ACTIVE and plans it again."""
    a = account
    deactivate = ActionDefinition.for_type(Action.UPDATE_DEVICE_CERTIFICATE)
    definitions = {"deactivate": dataclasses.replace(deactivate, name="deactivate", role_arn=ROLE_A),
                   "deactivate-b": dataclasses.replace(deactivate, name="deactivate-b", action_id="b",
                                                       role_arn=ROLE_B)}
    mapping = {QUALITY: ["deactivate", "deactivate-b"]}
    target = {"findingIds": [_first(a).finding_id]}
    start_mitigation_task(_ctx(a), "dry", target, mapping, definitions, "t-dry", dry_run=True)
    start_mitigation_task(_ctx(a), "real", target, mapping, definitions, "t-real", dry_run=False)
    assert status_of(a["iot"], a["certs"][0]) == "INACTIVE"
    assert [op for op, _ in _task_calls(a, "real")] == ["update_certificate"]
    assert _task_calls(a, "dry") == _task_calls(a, "real")


def test_a_certificate_another_roles_action_deactivated_is_not_redone_by_a_later_task(account):
    """An operator's reactivation is not undone by the certificate's other finding when the two
    findings' actions act with different roles: the QUALITY finding mapped to an action of role
    A, the FACTORABLE finding of the same certificate to an equal action of role B. Were the
    second finding's skip read from AWS ("already INACTIVE", claim released), the next task
    would deactivate the reactivated certificate."""
    a = account
    second = _second_finding(a)
    deactivate = ActionDefinition.for_type(Action.UPDATE_DEVICE_CERTIFICATE)
    definitions = {"deactivate": dataclasses.replace(deactivate, name="deactivate", role_arn=ROLE_A),
                   "deactivate-b": dataclasses.replace(deactivate, name="deactivate-b", action_id="b",
                                                       role_arn=ROLE_B)}
    mapping = {QUALITY: ["deactivate"], FACTORABLE: ["deactivate-b"]}
    target = {"findingIds": [_first(a).finding_id, second.finding_id]}
    start_mitigation_task(_ctx(a), "first", target, mapping, definitions, "t1")
    assert status_of(a["iot"], a["certs"][0]) == "INACTIVE"
    a["iot"].update_certificate(certificateId=second.certificate_id, newStatus="ACTIVE")  # accepted by an operator
    start_mitigation_task(_ctx(a), "again", target, mapping, definitions, "t2")
    again = {e.finding_id: e for e in a["store"].executions("again")}
    assert again[second.finding_id].status is MitigationStatus.SKIPPED, again[second.finding_id].message
    assert status_of(a["iot"], a["certs"][0]) == "ACTIVE"


# --- effects of failed calls, other resources, dry runs ------------------------------------


def test_a_dry_run_that_skips_as_done_in_this_run_writes_no_claim(account):
    """_made now runs in a dry run too (and on _DoneInThisRun): it must record the effect in
    memory only, never an APPLIED claim, so the real run that follows still acts."""
    from devicedefender_audit.mitigation import CLAIM_KIND

    a = account
    findings = [_first(a), _second_finding(a)]
    actions = config(a, (Action.UPDATE_DEVICE_CERTIFICATE, Action.ADD_THINGS_TO_THING_GROUP))
    dry = Mitigator(a["iot"], a["sns"], a["store"], dry_run=True).apply(findings, actions, TASK)
    assert "would already be set INACTIVE" in dry[2].message
    assert list(a["store"].records(CLAIM_KIND)) == []
    real = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(findings, actions, TASK)
    assert [e.status for e in real] == [MitigationStatus.COMPLETED] * 2 + [MitigationStatus.SKIPPED] * 2
    assert status_of(a["iot"], a["certs"][0]) == "INACTIVE" and group_members(a["iot"]) == {"meter-1", "meter-1b"}


def test_a_failed_deactivation_records_no_effect_and_the_certificates_next_finding_makes_it(account):
    """The effect is recorded after the call returns: a failed UpdateCertificate neither marks
    the certificate INACTIVE for the run nor leaves the failing finding's claim APPLIED."""
    a = account
    first, second = _first(a), _second_finding(a)
    _fail_once(a["iot"], "UpdateCertificate")
    actions = config(a, (Action.UPDATE_DEVICE_CERTIFICATE,))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert [e.status for e in executions] == [MitigationStatus.FAILED, MitigationStatus.COMPLETED]
    assert status_of(a["iot"], a["certs"][0]) == "INACTIVE"
    # The failed finding is retried by a later run (finds it INACTIVE); the second is APPLIED.
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert "already INACTIVE" in again[0].message and "already applied" in again[1].message


def test_a_failed_create_thing_group_does_not_suppress_the_next_findings_create(account):
    """A CreateThingGroup that failed is not an existing group: the next finding creates it
    (not straight to AddThingToThingGroup on a missing group), and the failed finding's
    partial effects do not make a later finding of the same certificate skip its things."""
    a = account
    first, second = _first(a), _second_finding(a)
    _fail_once(a["iot"], "CreateThingGroup")
    actions = config(a, (Action.ADD_THINGS_TO_THING_GROUP,))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert [e.status for e in executions] == [MitigationStatus.FAILED, MitigationStatus.COMPLETED]
    assert [c.operation for c in executions[1].calls] == ["create_thing_group", "add_thing_to_thing_group",
                                                          "add_thing_to_thing_group"]
    assert group_members(a["iot"]) == {"meter-1", "meter-1b"}


def test_a_partly_failed_quarantine_leaves_the_rest_to_the_next_finding_and_its_own_claim_free(account):
    """meter-1 added, meter-1b refused for the first finding: the second finding of the
    certificate adds meter-1b only, and the first finding (FAILED) is retried by a later run."""
    a = account
    first, second = _first(a), _second_finding(a)
    state = {"adds": 0}

    def refuse_second_add(model, params, **_):
        if model.name == "AddThingToThingGroup":
            state["adds"] += 1
            if state["adds"] == 2:
                raise ClientError({"Error": {"Code": "LimitExceededException", "Message": "injected"}}, model.name)

    a["iot"].meta.events.register("before-call.*.*", refuse_second_add)
    actions = config(a, (Action.ADD_THINGS_TO_THING_GROUP,))
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert [e.status for e in executions] == [MitigationStatus.FAILED, MitigationStatus.COMPLETED]
    assert [c.parameters["thingName"] for c in executions[1].calls] == ["meter-1b"]
    assert group_members(a["iot"]) == {"meter-1", "meter-1b"}
    again = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([first, second], actions, TASK)
    assert again[0].status is MitigationStatus.COMPLETED and "already applied" in again[1].message


def test_a_group_that_exists_is_not_created_and_each_new_group_once(account):
    """Two groups, one existing and one not, over three findings (two of one certificate) with
    overrideDynamicGroups: dry run and real run make the same calls, the existing group is never
    created, the new one once, and overrideDynamicGroups reaches every add."""
    a = account
    a["iot"].create_thing_group(thingGroupName="exists")
    action = ActionDefinition.from_action_params("q2", "q2", {"addThingsToThingGroupParams": {
        "thingGroupNames": ["exists", "new"], "overrideDynamicGroups": True}})
    findings = [_first(a), _second_finding(a), *(f for f in a["findings"] if f is not _first(a))]
    runs = {dry: Mitigator(a["iot"], a["sns"], a["store"], dry_run=dry).apply(findings, [action], TASK)
            for dry in (True, False)}
    calls = {dry: [(c.operation, c.parameters) for e in runs[dry] for c in e.calls] for dry in runs}
    assert calls[True] == calls[False]
    ops = [op for op, _ in calls[False]]
    assert ops.count("create_thing_group") == 1 and ("create_thing_group", {"thingGroupName": "new"}) in calls[False]
    assert ops.count("add_thing_to_thing_group") == 6  # 3 things x 2 groups, the second finding adds none
    assert all(p["overrideDynamicGroups"] is True for op, p in calls[False] if op == "add_thing_to_thing_group")


def test_the_gate_without_a_store_plans_and_makes_the_same_calls(account):
    """store=None (the registration gate): RunEffects alone dedupes. Two actions of one effect
    (a publish twice to one topic, a group twice) act once in both modes."""
    a = account
    finding = _first(a)
    actions = config(a)
    actions += [dataclasses.replace(d, name=d.name + "-again", action_id="x" + d.action_id) for d in actions]
    runs = {dry: Mitigator(a["iot"], a["sns"], None, dry_run=dry).apply([finding], actions, TASK)
            for dry in (True, False)}
    calls = {dry: [(c.operation, c.parameters) for e in runs[dry] for c in e.calls] for dry in runs}
    assert calls[True] == calls[False]
    assert [op for op, _ in calls[False]].count("publish") == 1
    assert len(a["drain"]()) == 1
    assert [e.status for e in runs[False][3:]] == [MitigationStatus.SKIPPED] * 3


def test_a_run_that_did_the_change_for_one_finding_does_not_skip_another_certificates_finding(account):
    """Effects are per certificate and per (group, thing): deactivating and quarantining the
    first certificate does not suppress the second certificate's distinct changes, nor a
    second action that adds to another group."""
    a = account
    actions = [*config(a, (Action.UPDATE_DEVICE_CERTIFICATE, Action.ADD_THINGS_TO_THING_GROUP)),
               *config(a, (Action.ADD_THINGS_TO_THING_GROUP,), group="quarantine-2")]
    executions = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply(a["findings"], actions, TASK)
    assert [e.status for e in executions] == [MitigationStatus.COMPLETED] * 6
    assert [status_of(a["iot"], c) for c in a["certs"]] == ["INACTIVE", "INACTIVE"]


def test_a_concurrent_tasks_live_claim_is_skipped_by_a_dry_run_and_waited_for_by_a_real_run(account, monkeypatch):
    """Across Mitigators: a claim held (CLAIMED, owner alive) by another task is skipped by a dry
    run, which records no claim of its own; a real run waits for it and, still held after the
    wait, fails the action (CLAIM_HELD) without a call."""
    from devicedefender_audit import mitigation

    monkeypatch.setattr(mitigation, "HELD_WAIT_S", 0.2)
    monkeypatch.setattr(mitigation, "HELD_POLL_S", 0.05)
    a = account
    finding = _first(a)
    [deactivate] = config(a, (Action.UPDATE_DEVICE_CERTIFICATE,))
    from devicedefender_audit.mitigation import CLAIM_KIND
    from devicedefender_audit.mitigation_claims import new_claim

    key = f"{finding.finding_id}/{deactivate.digest}"
    a["store"].insert_record(CLAIM_KIND, key, new_claim("other-task", deactivate.name))
    for dry, status, code in ((True, MitigationStatus.SKIPPED, None), (False, MitigationStatus.FAILED, "CLAIM_HELD")):
        [execution] = Mitigator(a["iot"], a["sns"], a["store"], dry_run=dry).apply([finding], [deactivate], TASK)
        assert (execution.status, execution.error_code) == (status, code)
        assert "being applied by task other-task" in execution.message and execution.calls == []
    assert a["store"].get_record(CLAIM_KIND, key)["taskId"] == "other-task"
    assert status_of(a["iot"], a["certs"][0]) == "ACTIVE"


# --- account planning ---------------------------------------------------------------------


def test_an_organization_listing_with_a_malformed_account_id_is_one_clear_error(aws, capsys, tmp_path, monkeypatch):
    """AWS lists 12-digit ids only, an emulator at --endpoint-url need not: an id that cannot
    name a store partition is one error before any audit, never a traceback."""
    from devicedefender_audit import accounts
    from devicedefender_audit.cli import main

    org = boto3.client("organizations", region_name=REGION)
    org.create_organization(FeatureSet="ALL")
    original = accounts.AccountCredentials.caller_session

    def session_listing_a_bad_id(self, regions=()):
        session = original(self, regions)

        def add_bad(parsed, **_):
            parsed["Accounts"].append({"Id": "12345", "Name": "odd", "State": "ACTIVE", "Status": "ACTIVE"})

        session.events.register("after-call.organizations.ListAccounts", add_bad)
        return session

    monkeypatch.setattr(accounts.AccountCredentials, "caller_session", session_listing_a_bad_id)
    code = main(["run", "--organization", "dda-audit", "--regions", REGION, "--no-progress", "--format", "json",
                 "--store", str(tmp_path / "audits.sqlite3")])
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    assert captured.err.startswith("error: ") and "'12345'" in captured.err and "12-digit" in captured.err
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []


def test_a_device_certificate_and_a_ca_of_one_id_are_two_effects(iot, tmp_path):
    """The same PEM registered as a device certificate and as a CA (one certificate id) with a
    finding each, and a second finding of the CA: the device deactivation does not make the CA's
    "done in this run" (``ca:`` keys), the CA's second finding is, and both modes agree."""
    from test_ca_checks import register_ca

    from devicedefender_audit.check_names import CA_CERTIFICATE_KEY_FACTORABLE_CHECK, CA_CERTIFICATE_KEY_QUALITY_CHECK
    from devicedefender_audit.checks import make_checks
    from devicedefender_audit.detectors import default_detectors

    pem = (DATA / "roca" / "cert04.pem").read_text()
    device = register(iot, pem, thing="meter-1")["certificateId"]
    ca = register_ca(iot, pem)
    assert ca == device
    store = open_store(tmp_path / "s.sqlite3")
    audited = run_audit(iot, [], store, checks=make_checks([QUALITY, CA_CERTIFICATE_KEY_QUALITY_CHECK],
                                                            default_detectors()))
    ca_finding = next(f for f in audited.findings if f.check_name == CA_CERTIFICATE_KEY_QUALITY_CHECK)
    findings = [*audited.findings, ca_finding.model_copy(update={"finding_id": "ca-second",
                                                                "check_name": CA_CERTIFICATE_KEY_FACTORABLE_CHECK})]
    actions = [ActionDefinition.for_type(Action.UPDATE_CA_CERTIFICATE),
               ActionDefinition.for_type(Action.UPDATE_DEVICE_CERTIFICATE)]
    sns = boto3.client("sns", region_name=REGION)
    runs = {dry: Mitigator(iot, sns, store, dry_run=dry).apply(findings, actions, TASK) for dry in (True, False)}
    calls = {dry: [(c.operation, c.parameters) for e in runs[dry] for c in e.calls] for dry in runs}
    assert calls[True] == calls[False]
    assert sorted(op for op, _ in calls[False]) == ["update_ca_certificate", "update_certificate"]
    assert "set INACTIVE for finding" in runs[False][-1].message
    assert iot.describe_ca_certificate(certificateId=ca)["certificateDescription"]["status"] == "INACTIVE"
    assert iot.describe_certificate(certificateId=device)["certificateDescription"]["status"] == "INACTIVE"
    store.close()


# --- audit phases --------------------------------------------------------------------------


def test_a_failed_ca_listing_leaves_the_device_fleet_comparison_whole(iot):
    """CA listing refused with both factorable checks on: ca is None through _fleet_scan and
    _check_ca; the device keys sharing a prime are still found, the CA check alone fails."""
    import random

    from test_factorable_audit import key, prime

    from devicedefender_audit.check_names import CA_CERTIFICATE_KEY_FACTORABLE_CHECK
    from devicedefender_audit.checks import make_checks
    from devicedefender_audit.factoring.codes import SHARED_PRIME

    rng = random.Random(2048)
    shared = prime(rng)
    pair = {register(iot, issue(key(shared, prime(rng)), f"d{i}"))["certificateId"] for i in range(2)}
    for i in range(3):
        register(iot, issue(key(prime(rng), prime(rng)), f"good-{i}"))

    def refuse(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "ListCACertificates")

    iot.meta.events.register("before-call.iot.ListCACertificates", refuse)
    audited = run_audit(iot, [], checks=make_checks([FACTORABLE, CA_CERTIFICATE_KEY_FACTORABLE_CHECK], []))
    assert {f.certificate_id for f in audited.findings if f.reason_for_non_compliance_code == SHARED_PRIME} == pair
    details = audited.task.audit_details
    assert (details[CA_CERTIFICATE_KEY_FACTORABLE_CHECK].check_run_status,
            details[CA_CERTIFICATE_KEY_FACTORABLE_CHECK].error_code) == ("FAILED", "AccessDeniedException")
    assert details[FACTORABLE].check_run_status == "COMPLETED_NON_COMPLIANT"
    assert audited.task.task_status.value == "COMPLETED"


# --- a claim retaken while its owner still works -----------------------------------------


def test_a_task_whose_claim_was_retaken_stops_before_its_next_change(account):
    """A task silent for over 15 minutes is taken for gone and its claim retaken; when it wakes
    it must not make the change too (the new holder makes it) nor release the new holder's
    claim. Simulated: the claim is retaken while the task reads the certificate's status."""
    from devicedefender_audit.mitigation import CLAIM_KIND
    from devicedefender_audit.mitigation_claims import new_claim

    a = account
    finding = _first(a)
    [deactivate] = config(a, (Action.UPDATE_DEVICE_CERTIFICATE,))
    key = f"{finding.finding_id}/{deactivate.digest}"
    called: list[str] = []

    def retaken_meanwhile(model, **_):
        called.append(model.name)
        if model.name == "DescribeCertificate":
            a["store"].put_record(CLAIM_KIND, key, new_claim("other-task", "deactivate"))

    a["iot"].meta.events.register("before-call.*.*", retaken_meanwhile)
    [execution] = Mitigator(a["iot"], a["sns"], a["store"], dry_run=False).apply([finding], [deactivate], TASK)
    assert execution.status is MitigationStatus.SKIPPED
    assert "task other-task retook the claim" in execution.message
    assert "UpdateCertificate" not in called and status_of(a["iot"], a["certs"][0]) == "ACTIVE"
    assert a["store"].get_record(CLAIM_KIND, key)["taskId"] == "other-task"
