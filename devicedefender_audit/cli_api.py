"""The Device Defender operations as CLI subcommands, named and optioned as the AWS CLI has them.

``python -m devicedefender_audit list-audit-findings --task-id ID`` takes what
``aws iot list-audit-findings`` takes and prints what ``aws iot ... --output json`` prints
(indented JSON, ISO 8601 timestamps, nothing for an empty response; paginated operations fetch
every page unless ``--next-token`` or ``--max-results`` is given). Options are derived from
botocore's model when the command runs: structures and maps are given as JSON, lists of strings
as several values, booleans as ``--flag`` / ``--no-flag``. A service error prints AWS CLI's
``An error occurred (Code) when calling the Op operation: message`` and exits 254, as AWS CLI v2.

Only the standard library is imported here: the service, the engine and the model (0.3 s to
load) are imported when an API command runs, so other commands (``check``) start as fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

#: CLI command -> operation, for every operation in :data:`devicedefender_audit.service.OPERATIONS`.
API_COMMANDS = {
    "describe-account-audit-configuration": "DescribeAccountAuditConfiguration",
    "update-account-audit-configuration": "UpdateAccountAuditConfiguration",
    "delete-account-audit-configuration": "DeleteAccountAuditConfiguration",
    "start-on-demand-audit-task": "StartOnDemandAuditTask",
    "describe-audit-task": "DescribeAuditTask",
    "list-audit-tasks": "ListAuditTasks",
    "cancel-audit-task": "CancelAuditTask",
    "list-audit-findings": "ListAuditFindings",
    "describe-audit-finding": "DescribeAuditFinding",
    "list-related-resources-for-audit-finding": "ListRelatedResourcesForAuditFinding",
    "create-audit-suppression": "CreateAuditSuppression",
    "describe-audit-suppression": "DescribeAuditSuppression",
    "update-audit-suppression": "UpdateAuditSuppression",
    "delete-audit-suppression": "DeleteAuditSuppression",
    "list-audit-suppressions": "ListAuditSuppressions",
    "create-scheduled-audit": "CreateScheduledAudit",
    "describe-scheduled-audit": "DescribeScheduledAudit",
    "update-scheduled-audit": "UpdateScheduledAudit",
    "delete-scheduled-audit": "DeleteScheduledAudit",
    "list-scheduled-audits": "ListScheduledAudits",
    "create-mitigation-action": "CreateMitigationAction",
    "describe-mitigation-action": "DescribeMitigationAction",
    "update-mitigation-action": "UpdateMitigationAction",
    "delete-mitigation-action": "DeleteMitigationAction",
    "list-mitigation-actions": "ListMitigationActions",
    "start-audit-mitigation-actions-task": "StartAuditMitigationActionsTask",
    "describe-audit-mitigation-actions-task": "DescribeAuditMitigationActionsTask",
    "list-audit-mitigation-actions-tasks": "ListAuditMitigationActionsTasks",
    "cancel-audit-mitigation-actions-task": "CancelAuditMitigationActionsTask",
    "list-audit-mitigation-actions-executions": "ListAuditMitigationActionsExecutions",
}
#: Our extensions, as options beside the model's: operation -> (option, keyword, help).
EXTENSION_FLAGS = {
    "StartAuditMitigationActionsTask": ("--dry-run", "dry_run",
                                        "this tool's extension: make no mutating AWS call, record what would be done"),
}
#: AWS CLI v2's exit status for an error returned by the service.
EXIT_SERVICE_ERROR = 254


def add_api_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register every API command (its arguments are parsed when it runs); {command: handler}."""
    for command, operation in API_COMMANDS.items():
        # No option prefix: every argument is passed through untouched to the model-derived parser.
        parser = sub.add_parser(command, help=f"Device Defender {operation}", add_help=False, prefix_chars="\0")
        parser.add_argument("api_args", nargs=argparse.REMAINDER)
    run_due = sub.add_parser("run-due", help="start the scheduled audits that are due (for cron or EventBridge)",
                             add_help=False, prefix_chars="\0")
    run_due.add_argument("api_args", nargs=argparse.REMAINDER)
    return {**dict.fromkeys(API_COMMANDS, run_api_command), "run-due": run_due_command}


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def _add_member(parser: argparse.ArgumentParser, name: str, shape: Any, required: bool) -> None:
    from botocore import xform_name

    option = "--" + xform_name(name, "-")
    kind = shape.type_name
    if kind == "boolean":
        parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None)
        return
    common: dict[str, Any] = {"dest": name, "required": required, "default": None,
                              "metavar": xform_name(name).upper()}
    if kind in ("integer", "long"):
        parser.add_argument(option, type=int, **common)
    elif kind == "list" and shape.member.type_name == "string":
        parser.add_argument(option, nargs="+", **common)
    elif kind in ("structure", "map", "list"):
        parser.add_argument(option, type=_json_argument, **{**common, "metavar": "JSON"})
    else:
        parser.add_argument(option, choices=getattr(shape, "enum", None) or None, **common)


def _operation_parser(command: str) -> argparse.ArgumentParser:
    from devicedefender_audit.service.shapes import operation

    model = operation(API_COMMANDS[command])
    parser = argparse.ArgumentParser(prog=f"devicedefender_audit {command}",
                                     description=model.documentation.split("</p>")[0].removeprefix("<p>"))
    if model.input_shape is not None:
        for name, shape in model.input_shape.members.items():
            # An idempotency token is required by the model but filled in when left out, as the AWS CLI does.
            required = name in model.input_shape.required_members and not shape.metadata.get("idempotencyToken")
            _add_member(parser, name, shape, required)
    if API_COMMANDS[command] in EXTENSION_FLAGS:
        option, keyword, text = EXTENSION_FLAGS[API_COMMANDS[command]]
        parser.add_argument(option, dest=keyword, action="store_true", help=text)
    _local_options(parser)
    return parser


def _local_options(parser: argparse.ArgumentParser) -> None:
    """Where the operations run: this tool's options, beside the model's."""
    from devicedefender_audit.cli import STORE_HELP, endpoint_url, region_name

    local = parser.add_argument_group("where (this tool's options)")
    local.add_argument("--store", default=None,  # a string: a Path collapses dynamodb:// and '' to '.'
                       help=STORE_HELP)
    local.add_argument("--blocklists", type=Path, default=None, help="CVE-2008-0166 blocklist directory")
    local.add_argument("--region", type=region_name)
    local.add_argument("--profile")
    local.add_argument("--endpoint-url", type=endpoint_url,
                       help="AWS IoT endpoint the audits read (e.g. a moto server)")
    local.add_argument("--output", choices=("json",), default="json")
    local.add_argument("--assume-roles", action="store_true",
                       help="act as Device Defender does, with the configured roles (the audit configuration's "
                       "roleArn for audits, the SNS target's for notifications, each action's for its calls); "
                       "by default the CLI acts with your own credentials and only records role ARNs")


def _timestamp_text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_response(response: dict) -> None:
    """As ``aws ... --output json``: nothing for an empty response."""
    if response:
        print(json.dumps(response, indent=4, ensure_ascii=False, default=_timestamp_text))


def _call_all_pages(call: Callable[..., dict], config: dict, request: dict) -> dict:
    """Every page merged into one response, as the AWS CLI's automatic pagination prints it;
    one page when the request names a token or a page size itself."""
    response = call(**request)
    if {config["input_token"], config["limit_key"]} & set(request):
        return response
    key = config["result_key"]
    while response.get("nextToken"):
        following = call(**request, nextToken=response.pop("nextToken"))
        response[key] = response.get(key, []) + following.get(key, [])
        response.update({k: v for k, v in following.items() if k != key})
    return response


def run_api_command(args: argparse.Namespace) -> int:
    from devicedefender_audit.service import OPERATIONS, ServiceError
    from devicedefender_audit.service.shapes import pagination

    options = _operation_parser(args.command).parse_args(args.api_args)
    operation_name = API_COMMANDS[args.command]
    model_members = _members(operation_name)
    request = {name: getattr(options, name) for name in model_members if getattr(options, name) is not None}
    flag = EXTENSION_FLAGS.get(operation_name)
    extensions = {flag[1]: True} if flag and getattr(options, flag[1]) else {}
    ctx = _context(options, read_only=operation_name.startswith(("Describe", "List")))
    store = ctx.store
    try:
        def call(**params: Any) -> dict:
            return OPERATIONS[operation_name](ctx, **params, **extensions)

        config = pagination(operation_name)
        response = _call_all_pages(call, config, request) if config else call(**request)
    except ServiceError as exc:
        print(f"\nAn error occurred ({exc.code}) when calling the {operation_name} operation: {exc.message}",
              file=sys.stderr)
        return EXIT_SERVICE_ERROR
    finally:
        store.close()
    print_response(response)
    return 0


def _members(operation_name: str) -> Sequence[str]:
    from devicedefender_audit.service.shapes import operation

    shape = operation(operation_name).input_shape
    return list(shape.members) if shape is not None else []



def _context(options: argparse.Namespace, read_only: bool = False) -> Any:
    """The service context for one command: the store, paced AWS clients, detectors on demand."""
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.cli import configured_region
    from devicedefender_audit.service import ServiceContext
    from devicedefender_audit.store import open_store, partition_region, resolve_location

    # ``target`` reaches the store (a DynamoDB table in the stack's region); ``aws`` is where the
    # audits act: an account-region's partition is its region's, whatever region reaches it.
    target = AwsTarget(region=options.region, profile=options.profile, endpoint_url=options.endpoint_url)
    named = partition_region(resolve_location(options.store))
    aws = AwsTarget(region=named, profile=options.profile, endpoint_url=options.endpoint_url) if named else target
    command_region = configured_region(target)
    # A store is one region's (store/region_binding.py). A partition, and any store for a
    # read-only operation, is compared only with a --region given on the command line (the
    # configured one may be the table's); only an operation that writes binds a store.
    compare = options.region if named or read_only else command_region
    if named and not read_only and not options.assume_roles:
        from devicedefender_audit.cli import refuse_another_accounts_partition

        refuse_another_accounts_partition(resolve_location(options.store), aws)
    store = open_store(options.store, target, compare, bind=not read_only)
    region = named or command_region or "us-east-1"  # the fallback names ARNs only

    def detectors() -> list[Any]:
        from devicedefender_audit.detectors import default_detectors

        return default_detectors(options.blocklists)

    return ServiceContext(store=store, iot_client=lambda: aws.client("iot"), detectors=detectors,
                          region=region,
                          sns_client=lambda: aws.client("sns"),
                          role_client=aws.client if options.assume_roles else None)



def run_due_command(args: argparse.Namespace) -> int:
    """Start the due scheduled audits (in the foreground) and print what started, as JSON.

    Exit 0 when every due schedule started, 1 when one could not (e.g. its check was disabled).
    """
    from devicedefender_audit.service.context import as_utc
    from devicedefender_audit.service.errors import InvalidRequest
    from devicedefender_audit.service.scheduled import run_due

    def moment(text: str) -> datetime:
        try:
            return as_utc(text)
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(exc.message) from exc

    parser = argparse.ArgumentParser(prog="devicedefender_audit run-due", description=run_due_command.__doc__)
    parser.add_argument("--now", type=moment, default=None,
                        help="start the slots due at this moment (ISO 8601 or epoch seconds) to catch up or test a "
                             "schedule; the audits run, and are recorded, now")
    _local_options(parser)
    options = parser.parse_args(args.api_args)
    ctx = _context(options)
    try:
        result = run_due(ctx, options.now)
    finally:
        ctx.store.close()
    print_response(result)
    return 1 if result["failedSchedules"] else 0
