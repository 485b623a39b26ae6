"""Device Defender's documented rules, as a script ported from AWS meets them.

Each test names the rule it holds the emulation to: a constraint of botocore's ``iot`` model
(length, range, pattern, the errors an operation declares) or a sentence of the API reference
(quoted in the test). Every response passes botocore's output shape (``service_helpers.call``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import test_service_api
from botocore.exceptions import ClientError
from service_helpers import call
from test_service_api import ROLE, enable, resource

from devicedefender_audit.models import CHECK_NAME, MitigationActionType, MitigationExecution, MitigationStatus
from devicedefender_audit.service import InvalidRequest, ServiceError, errors
from devicedefender_audit.service.notifications import audit_notification
from devicedefender_audit.service.shapes import iot_model, operation, output_problems

FACTORABLE = "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"
#: The API tests' fixtures: a context over moto with two ROCA certificates.
account, ctx = test_service_api.account, test_service_api.ctx


def test_errors_carry_the_code_and_http_status_of_the_model():
    """Every error the service raises, so one added later is held to it too."""
    raised = [errors.ServiceError, *errors.ServiceError.__subclasses__()]
    assert errors.LimitExceeded in raised
    for error in raised:
        shape = iot_model().shape_for(error.code)
        assert shape.metadata["exception"] and shape.metadata["error"]["httpStatusCode"] == error.status


def test_model_bounds_that_botocore_leaves_to_the_service_are_refused(ctx):
    """botocore checks only minimums; AWS refuses the rest with InvalidRequestException."""
    window = {"startTime": ctx.now() - timedelta(hours=1), "endTime": ctx.now()}
    for name, request in (("ListAuditTasks", {**window, "maxResults": 251}),
                          ("ListAuditFindings", {**window, "maxResults": 251}),
                          ("ListAuditSuppressions", {"maxResults": 251}),
                          ("DescribeAuditTask", {"taskId": "a" * 41}),
                          ("DescribeAuditTask", {"taskId": "/.."}),
                          ("DescribeAuditTask", {"taskId": "task 1"}),  # the pattern is found in it: not enough
                          ("DescribeScheduledAudit", {"scheduledAuditName": "nightly audit"}),
                          ("DescribeAuditFinding", {"findingId": "a" * 129}),
                          ("CreateAuditSuppression", {"checkName": CHECK_NAME, "resourceIdentifier": resource("a" * 64),
                                                      "suppressIndefinitely": True, "clientRequestToken": "t" * 65}),
                          ("CreateAuditSuppression", {"checkName": CHECK_NAME, "resourceIdentifier": resource("a" * 64),
                                                      "suppressIndefinitely": True, "clientRequestToken": "t",
                                                      "description": "x" * 1001})):
        with pytest.raises(InvalidRequest, match="most|pattern"):
            call(ctx, name, **request)
    assert call(ctx, "ListAuditTasks", **window, maxResults=250) == {"tasks": []}


def test_output_validation_sees_model_maximums():
    shape = operation("DescribeAuditTask").output_shape
    assert output_problems(shape, {"auditDetails": {CHECK_NAME: {"message": "m" * 2049}}}) == [
        f"DescribeAuditTaskResponse.auditDetails[{CHECK_NAME}].message: 2049 characters, at most 2048"]


def test_an_error_message_beyond_the_model_is_cut_alike_wherever_it_is_given():
    """AuditCheckDetails.message and AuditMitigationActionExecutionMetadata.message are both the
    model's ErrorMessage (at most 2048): cut once, one way, the cut marked."""
    long = "x" * 3000
    check = errors.check_error("CONNECTION_ERROR", long)["message"]
    execution = MitigationExecution(task_id="t", finding_id="f", action_name="a", action_id="i",
                                    action_type=MitigationActionType.PUBLISH_FINDING_TO_SNS,
                                    status=MitigationStatus.FAILED, message=long).to_api()["message"]
    assert check == execution and len(check) == 2048 and check.endswith("...")
    assert not output_problems(operation("DescribeAuditTask").output_shape,
                               {"auditDetails": {CHECK_NAME: {"message": check}}})


def test_a_next_token_of_another_query_is_refused(ctx, account):
    enable(ctx)
    for n, certificate_id in enumerate(account["weak"] + ["b" * 64]):
        call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=resource(certificate_id),
             suppressIndefinitely=True, clientRequestToken=f"t{n}")
    first = call(ctx, "ListAuditSuppressions", maxResults=1)
    token = first["nextToken"]
    second = call(ctx, "ListAuditSuppressions", maxResults=2, nextToken=token)  # the same query, a new page size
    assert len(first["suppressions"]) + len(second["suppressions"]) == 3 and "nextToken" not in second
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditSuppressions", checkName=CHECK_NAME, nextToken=token)
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditSuppressions", ascendingOrder=False, nextToken=token)
    window = {"startTime": ctx.now() - timedelta(hours=1), "endTime": ctx.now()}
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditTasks", **window, nextToken=token)
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditFindings", **window, nextToken=token)
    # Every List operation ties its tokens to its query, the mitigation and schedule ones too.
    for name in ("a", "b"):
        call(ctx, "CreateScheduledAudit", scheduledAuditName=name, frequency="DAILY", targetCheckNames=[CHECK_NAME])
    scheduled = call(ctx, "ListScheduledAudits", maxResults=1)["nextToken"]
    assert "nextToken" not in call(ctx, "ListScheduledAudits", nextToken=scheduled)
    for name in ("ListMitigationActions", "ListScheduledAudits"):
        with pytest.raises(InvalidRequest, match="nextToken"):
            call(ctx, name, nextToken=token)
    with pytest.raises(InvalidRequest, match="nextToken"):
        call(ctx, "ListAuditMitigationActionsTasks", **window, nextToken=scheduled)


def test_a_check_used_by_a_scheduled_audit_cannot_be_disabled(ctx):
    """"You cannot disable a check if it's used by any scheduled audit. You must first delete the
    check from the scheduled audit or delete the scheduled audit itself." (UpdateAccountAuditConfiguration)"""
    call(ctx, "UpdateAccountAuditConfiguration", roleArn=ROLE,
         auditCheckConfigurations={CHECK_NAME: {"enabled": True}, FACTORABLE: {"enabled": True}})
    call(ctx, "CreateScheduledAudit", scheduledAuditName="daily", frequency="DAILY", targetCheckNames=[CHECK_NAME])
    with pytest.raises(InvalidRequest, match="daily"):
        call(ctx, "UpdateAccountAuditConfiguration", auditCheckConfigurations={CHECK_NAME: {"enabled": False}})
    assert call(ctx, "DescribeAccountAuditConfiguration")["auditCheckConfigurations"][CHECK_NAME] == {"enabled": True}
    call(ctx, "UpdateAccountAuditConfiguration", auditCheckConfigurations={FACTORABLE: {"enabled": False}})
    call(ctx, "DeleteScheduledAudit", scheduledAuditName="daily")
    call(ctx, "UpdateAccountAuditConfiguration", auditCheckConfigurations={CHECK_NAME: {"enabled": False}})


def test_a_suppression_token_is_unique_and_its_check_known(ctx, account):
    """"Each audit suppression must have a unique client request token. If you try to create a new
    audit suppression with the same token as one that already exists, an exception occurs.\""""
    first, second = (resource(c) for c in account["weak"])
    call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=first, suppressIndefinitely=True,
         clientRequestToken="change-42")
    with pytest.raises(InvalidRequest, match="change-42"):
        call(ctx, "CreateAuditSuppression", checkName=CHECK_NAME, resourceIdentifier=second,
             suppressIndefinitely=True, clientRequestToken="change-42")
    assert [s["resourceIdentifier"] for s in call(ctx, "ListAuditSuppressions")["suppressions"]] == [first]
    with pytest.raises(InvalidRequest, match="unsupported audit check"):
        call(ctx, "CreateAuditSuppression", checkName="DEVICE_CERTIFICATE_KEY_QUALITY", resourceIdentifier=second,
             suppressIndefinitely=True, clientRequestToken="typo")


def test_errors_are_the_ones_each_operation_declares(ctx):
    """ListAuditFindings and DeleteAuditSuppression declare no ResourceNotFoundException: a script
    written against AWS catches InvalidRequestException there."""
    for name, request in (("ListAuditFindings", {"taskId": "no-such-task"}),
                          ("DeleteAuditSuppression", {"checkName": CHECK_NAME,
                                                      "resourceIdentifier": resource("c" * 64)})):
        declared = {shape.name for shape in operation(name).error_shapes}
        with pytest.raises(ServiceError) as raised:
            call(ctx, name, **request)
        assert raised.value.code in declared and raised.value.code == "InvalidRequestException"


def test_a_check_refused_for_want_of_permission_reads_insufficient_permissions(ctx, iot):
    """AuditCheckDetails.errorCode: "One of INSUFFICIENT_PERMISSIONS or AUDIT_CHECK_DISABLED"; AWS's
    own refusal stays in the message."""

    def refuse(**_kwargs):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized: iot:List*"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "ListCertificates")

    iot.meta.events.register("before-call.iot.ListCertificates", refuse)
    try:
        enable(ctx)
        task_id = call(ctx, "StartOnDemandAuditTask", targetCheckNames=[CHECK_NAME])["taskId"]
    finally:
        iot.meta.events.unregister("before-call.iot.ListCertificates", refuse)
    details = call(ctx, "DescribeAuditTask", taskId=task_id)["auditDetails"][CHECK_NAME]
    assert (details["checkRunStatus"], details["errorCode"]) == ("FAILED", "INSUFFICIENT_PERMISSIONS")
    assert details["message"].startswith("AccessDeniedException: ") and "not authorized" in details["message"]
    [notified] = audit_notification(ctx.store.get_task(task_id), ctx.account_id)["auditDetails"]
    assert (notified["errorCode"], notified["message"]) == (details["errorCode"], details["message"])
