"""``python -m devicedefender_audit``: audit, review, mitigate, check files, manage blocklists.

Exit codes, so a scheduled audit can gate a pipeline (README, "Statuses and exit codes"):
0 every in-scope certificate was checked and is compliant; 1 the audit could not run or did not
finish (no region or credentials, a missing profile, AWS unreachable or refusing a call, listing
failed, connection lost); 2 bad usage (arguments, an unusable file or store location, a store that
cannot be used, an unknown task id); 3 non-compliant certificates found; 4 no finding, but some certificates could not be checked or
are not covered; 130 / 143 canceled by SIGINT / SIGTERM (the task is recorded ``CANCELED``);
141 the output pipe was closed.

Commands import only what they need, so ``check`` starts fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicedefender_audit.check_names import (
    AUDIT_CHECKS,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
)
from devicedefender_audit.exit_codes import (
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_NON_COMPLIANT,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    task_exit_code,
)

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.models import AuditTask, MitigationExecution
    from devicedefender_audit.store import Store

MITIGATION_ACTIONS = ("UPDATE_DEVICE_CERTIFICATE", "UPDATE_CA_CERTIFICATE", "ADD_THINGS_TO_THING_GROUP",
                      "PUBLISH_FINDING_TO_SNS")
#: The checks ``check`` runs on a key file: the device checks' per-key parts (a CA's key is checked alike).
CHECK_COMMAND_CHECKS = (DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def region_name(text: str) -> str:
    """A region as botocore accepts one (a host label, e.g. eu-west-1), checked when parsed: an
    empty one bound the store to region '' and then failed in botocore with a traceback."""
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"not an AWS region name (e.g. eu-west-1): {text!r}")
    return text


def endpoint_url(text: str) -> str:
    """An http(s) URL with a host, checked when parsed: botocore raised ValueError (a traceback)
    for anything else, at the first client it made."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL with a host (e.g. http://localhost:4566): {text!r}")
    return text


def _check_names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argument type for check names: one, or several separated by commas, each of ``allowed``."""
    def names(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in allowed]
        if not chosen or unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: not one of {', '.join(allowed)}")
        return chosen

    return names


class _ExtendFlat(argparse.Action):
    """Extends the list with every name of every value (each value a list of names)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        lists = values if isinstance(values, list) and values and isinstance(values[0], list) else [values]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *(n for group in lists for n in group)])


def _rate(text: str) -> tuple[str, float]:
    from devicedefender_audit.aws.pacing import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _aws_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AWS (defaults: the standard AWS credential/region chain)")
    group.add_argument("--region", type=region_name)
    group.add_argument("--profile")
    group.add_argument("--endpoint-url", type=endpoint_url, help="e.g. a moto server or LocalStack")
    group.add_argument("--max-attempts", type=_positive_int, default=10,
                       help="attempts per call, retried in botocore's adaptive mode (default 10)")
    group.add_argument("--rate", dest="rates", type=_rate, action="append", default=[],
                       metavar="OPERATION=TPS",
                       help="requests per second for one operation, e.g. DescribeCertificate=50 "
                       "(default: AWS's default quotas; see the README)")


#: ``--store`` of every command (store.resolve_location decides it).
STORE_HELP = ("SQLite audit store, or dynamodb://TABLE (default $DDA_STORE, else "
              "$XDG_DATA_HOME/devicedefender-audit/audits.sqlite3, ~/.local/share by default; the demo "
              "keeps demo.sqlite3 in that directory, never $DDA_STORE)")


def _store_option(parser: argparse.ArgumentParser) -> None:
    # A string, not a Path: a Path collapses dynamodb:// and s3:// to one slash, and '' to '.'.
    parser.add_argument("--store", default=None, help=STORE_HELP)


def _store_aws_options(parser: argparse.ArgumentParser) -> None:
    """Where a ``dynamodb://`` store is, for commands that make no other AWS call."""
    group = parser.add_argument_group("AWS, for a --store dynamodb://TABLE (default: the standard AWS chain)")
    group.add_argument("--region", type=region_name)
    group.add_argument("--profile")
    group.add_argument("--endpoint-url", type=endpoint_url)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table")
    _store_option(parser)


def _blocklists(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocklists", type=Path, default=None,
                        help="CVE-2008-0166 blocklist directory (default $DDA_BLOCKLISTS, else the shipped lists)")


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, computed as shutil computes it."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _CheckHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter at the width it would choose, without importing shutil (and zlib,
    bz2 and lzma with it) to learn the terminal's width: argparse makes a formatter for every
    argument it adds, so ``check`` paid that import (1-2 ms) at each start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


def _add_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser("check", help="check local PEM certificates, keys or CSRs",
                           formatter_class=_CheckHelpFormatter)
    check.add_argument("files", nargs="+")
    check.add_argument("--format", choices=("table", "json", "sarif"), default="table",
                       help="sarif: SARIF 2.1.0 for code scanning in CI")
    # One value per --checks (repeatable, or comma-separated), so that it may come before the files.
    check.add_argument("--checks", type=_check_names(CHECK_COMMAND_CHECKS), action=_ExtendFlat, default=None,
                       metavar="CHECK[,CHECK]",
                       help=f"checks run on each key: {', '.join(CHECK_COMMAND_CHECKS)} (default: both). The "
                       "factorable check's per-key tests (close primes, small factors, insecure parameters) cost "
                       "~1.4 ms an RSA key; its comparison across the fleet needs run")
    _blocklists(check)


def _check_parser() -> argparse.ArgumentParser:
    """:func:`build_parser`'s parser with the ``check`` command only, so ``check ...`` parses
    (and fails, and prints its help) exactly as there. Building every other command, and
    importing the modules that add some, was about a fifth of ``check``'s start-up."""
    parser = argparse.ArgumentParser(prog="devicedefender_audit", description=__doc__.split("\n")[0],
                                     formatter_class=_CheckHelpFormatter)
    _add_check(parser.add_subparsers(dest="command", required=True))
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicedefender_audit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="audit the account's device and CA certificates")
    _aws_options(run)
    _common(run)
    _blocklists(run)
    run.add_argument("--workers", type=_positive_int, default=8, help="concurrent AWS calls (default 8)")
    run.add_argument("--demo", action="store_true",
                     help="audit an embedded moto account seeded with a demo fleet (no AWS needed)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--checks", nargs="+", type=_check_names(AUDIT_CHECKS), action=_ExtendFlat, default=None,
                     metavar="CHECK[,CHECK]",
                     help="audit checks to run (default: all)")
    run.add_argument("--known-moduli", type=Path, default=None, metavar="FILE",
                     help="known moduli or primes (decimal, 0x-hex or Modulus=HEX per line) the fleet is "
                     "compared with by the factorable check")
    many = run.add_argument_group("many accounts and regions (one consolidated report; each account-region "
                                  "in its own store partition, paced on its own)")
    many.add_argument("--regions", metavar="R1,R2|all",
                      help="regions to audit; all: every region where AWS IoT is available (botocore's endpoint data)")
    who = many.add_mutually_exclusive_group()
    who.add_argument("--role-arn", help="audit the account of this IAM role (STS AssumeRole)")
    who.add_argument("--organization", metavar="ROLE_NAME",
                     help="audit every ACTIVE account of the AWS Organization, assuming "
                     "arn:aws:iam::<account>:role/ROLE_NAME in each (your own account with your credentials)")
    many.add_argument("--parallel", type=_positive_int, default=4,
                      help="account-regions audited at once (default 4)")

    demo = sub.add_parser("demo", help="audit the embedded demo fleet, then dry-run its mitigations")
    _common(demo)
    _blocklists(demo)

    listing = sub.add_parser("list-audits", help="past audits from the store")
    _common(listing)
    _store_aws_options(listing)

    show = sub.add_parser("show-findings", help="findings of an audit (default: the latest)")
    show.add_argument("task_id", nargs="?")
    _common(show)
    _store_aws_options(show)

    executions = sub.add_parser("list-mitigations", help="mitigation runs recorded for an audit")
    executions.add_argument("task_id", nargs="?", help="default: the latest audit")
    _common(executions)
    _store_aws_options(executions)

    mitigate = sub.add_parser("mitigate", help="apply mitigation actions to an audit's findings")
    mitigate.add_argument("task_id", nargs="?", help="default: the latest audit")
    mitigate.add_argument("--action", dest="actions", action="append", required=True, choices=MITIGATION_ACTIONS)
    mitigate.add_argument("--thing-group", help="quarantine group for ADD_THINGS_TO_THING_GROUP")
    mitigate.add_argument("--sns-topic-arn", help="topic for PUBLISH_FINDING_TO_SNS")
    mitigate.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    _aws_options(mitigate)
    _common(mitigate)

    _add_check(sub)

    from devicedefender_audit.cli_export import add_export_command

    COMMANDS.update(add_export_command(sub))

    from devicedefender_audit.cli_api import add_api_commands  # stdlib-only until a command runs

    COMMANDS.update(add_api_commands(sub))

    from devicedefender_audit.cli_serve import add_serve_command

    COMMANDS.update(add_serve_command(sub))

    from devicedefender_audit.cli_blocklist import add_blocklist_command

    COMMANDS.update(add_blocklist_command(sub))

    return parser


# helpers ---------------------------------------------------------------------------------------


#: How a command's region meets the store's (:func:`_open_store`).
ACTS_IN_REGION, READS_LOCALLY, ANY_REGION = "acts", "reads", "any"


def _open_store(args: argparse.Namespace, scope: str = ACTS_IN_REGION) -> Store:
    """The store, opened and checked before any AWS call (a bad one is a StoreError: exit 2). A
    ``dynamodb://`` store is reached with the command's own AWS options (region, profile, endpoint).

    A store is one region's. A command that acts on AWS in its region (``ACTS_IN_REGION``:
    ``--region``, else the AWS configuration's) is refused on another region's store and binds
    one not bound yet; one that only reads the store (``READS_LOCALLY``) must find it (a SQLite
    file that does not exist is an error, not created) and is compared only with a
    ``--region`` given on its command line, as is an account-region's partition (which is its
    region's by name: commands act there, :func:`_target`); ``ANY_REGION`` (the table that every
    account-region of ``run --regions`` has a partition in) is not compared. The demo keeps its own store
    (``demo.sqlite3`` beside the default one) unless ``--store`` names one, so that its audits
    are never taken for the account's (``mitigate`` acts on the latest audit).
    """
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.store import open_store, partition_region, resolve_location

    demo = args.command == "demo" or getattr(args, "demo", False)
    location = resolve_location(args.store, demo)
    target = AwsTarget(region=getattr(args, "region", None), profile=getattr(args, "profile", None),
                       endpoint_url=getattr(args, "endpoint_url", None))
    region = None
    if demo:
        from devicedefender_audit.demo import DEMO_REGION

        region = DEMO_REGION
    elif scope == ACTS_IN_REGION and partition_region(location) is None:
        region = configured_region(target)
    elif scope != ANY_REGION:  # reads, and a partition (the command acts in its region: _target)
        region = getattr(args, "region", None)
    if scope == ACTS_IN_REGION and not demo:
        refuse_another_accounts_partition(location, target)
    return open_store(location, target if str(location).startswith("dynamodb:") else None, region,
                      bind=scope == ACTS_IN_REGION, create=scope != READS_LOCALLY)


def refuse_another_accounts_partition(location: str, target: AwsTarget) -> None:
    """A command that acts with these credentials on an account-region's partition acts in the
    credentials' account: on another account's partition it would audit or change this account's
    certificates and record them as that account's (a certificate id can be the same in both).
    A StoreError (exit 2) then, before anything is done."""
    from devicedefender_audit.store import StoreError, partition_of

    partition = partition_of(location)
    if partition is None:
        return
    named = partition[0]
    acting = target.client("sts").get_caller_identity()["Account"]
    if acting != named:
        raise StoreError(f"store {location} is account {named}'s, but these credentials act in account {acting}: "
                         f"use account {named}'s credentials (--profile), or run --role-arn for its audits")


def configured_region(target: AwsTarget) -> str | None:
    """The command's region, or None where none is configured, also as an empty one (a command
    that needs one says so when it calls AWS), or the profile is missing (said by the command's
    first AWS call too)."""
    from botocore.exceptions import NoRegionError, ProfileNotFound

    try:
        return target.region_name
    except (ProfileNotFound, NoRegionError):
        return target.region


def _target(args: argparse.Namespace) -> AwsTarget:
    """Where the command acts: in the region of an account-region's partition when the store is
    one (a DynamoDB partition is reached with --region, the table's), else in the command's."""
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.aws.pacing import DEFAULT_RATES
    from devicedefender_audit.store import partition_region, resolve_location

    named = partition_region(resolve_location(args.store))
    return AwsTarget(region=named or args.region, profile=args.profile, endpoint_url=args.endpoint_url,
                     max_attempts=args.max_attempts, rates={**DEFAULT_RATES, **dict(args.rates)})


def _detectors(args: argparse.Namespace) -> list[Any]:
    from devicedefender_audit.detectors import default_detectors

    return default_detectors(args.blocklists)


def _print_audit(store: Store, task: AuditTask, fmt: str) -> None:
    from devicedefender_audit.report import audit_json, audit_text

    render = audit_json if fmt == "json" else audit_text
    print(render(task, store.findings(task.task_id), store.errors(task.task_id)))


def _checks(args: argparse.Namespace, detectors: list[Any]) -> list[Any]:
    """The audit checks to run: all by default, or those named by ``--checks``."""
    from devicedefender_audit.checks import make_checks

    known = None
    if getattr(args, "known_moduli", None):
        from devicedefender_audit.factoring.known import KnownValues

        try:
            known = KnownValues.load(args.known_moduli)
        except (OSError, ValueError) as exc:
            raise _BadInput(f"--known-moduli: {exc}") from exc
    return make_checks(getattr(args, "checks", None) or AUDIT_CHECKS, detectors, known)


def _run_audit(target: AwsTarget, store: Store, args: argparse.Namespace, progress: bool) -> AuditTask:
    from devicedefender_audit.audit import Audit, AuditInterrupted
    from devicedefender_audit.progress import ProgressBar

    def terminated(signum: int, frame: object) -> None:
        raise AuditInterrupted  # in the main thread, so the audit records itself as canceled

    detectors = _detectors(args)
    bar: ProgressBar | None = None

    def phase(label: str, total: int | None) -> None:
        nonlocal bar
        if bar:
            bar.close()
        bar = ProgressBar(label) if progress else None
        if bar and total is not None:
            bar.set_total(total)

    def advance(step: int) -> None:
        if bar:
            bar.advance(step)

    audit = Audit(target.client("iot"), store, detectors, workers=getattr(args, "workers", 8),
                  region=target.region_name, on_phase=phase, on_advance=advance, checks=_checks(args, detectors))
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        task = audit.run()
    except (KeyboardInterrupt, AuditInterrupted) as exc:
        code = EXIT_SIGINT if isinstance(exc, KeyboardInterrupt) else EXIT_SIGTERM
        print(f"\naudit {audit.task.task_id} canceled and recorded as {audit.task.task_status.value}",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # In-flight AWS calls are abandoned, not awaited: a dead endpoint must not delay the exit.
        os._exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if bar:
        bar.close()
    return task


# commands --------------------------------------------------------------------------------------


def _run_many(args: argparse.Namespace) -> int:
    """``run --regions / --role-arn / --organization``: every account-region, one report."""
    from botocore.exceptions import NoCredentialsError, NoRegionError

    from devicedefender_audit.accounts import (
        AccountCredentials,
        AccountRegion,
        AccountsError,
        check_role_name,
        parse_regions,
        plan,
        role_account,
    )
    from devicedefender_audit.audit import AuditInterrupted
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.aws.pacing import DEFAULT_RATES
    from devicedefender_audit.fleet_run import AccountRegionResult, FleetRun
    from devicedefender_audit.store import open_store, partition_location, resolve_location

    if args.demo:
        raise _BadInput("--demo audits the embedded demo account only; leave out --regions, --role-arn, --organization")
    credentials = AccountCredentials(profile=args.profile, region=args.region, endpoint_url=args.endpoint_url)
    session = credentials.caller_session()
    try:
        regions = parse_regions(args.regions, session) if args.regions is not None else [session.region_name]
        if args.role_arn:
            role_account(args.role_arn)
        if args.organization:
            check_role_name(args.organization)
    except AccountsError as exc:
        raise _BadInput(str(exc)) from exc
    if regions == [None]:
        raise NoRegionError()
    location = resolve_location(args.store)
    partition_location(location, "0" * 12, regions[0])  # not one account-region's already
    # A store location that cannot be used is refused before any AWS call. The table that every
    # DynamoDB partition shares is opened (created if missing); a SQLite path is only the
    # directory for the account-regions' own files, so its own file is not created.
    if str(location).startswith("dynamodb:"):
        _open_store(args, ANY_REGION).close()  # the table of every account-region's partition
    elif str(location) != ":memory:":
        from devicedefender_audit.store.sqlite import check_partition_directory

        check_partition_directory(location)
    detectors = _detectors(args)
    checks = _checks(args, detectors)
    if session.get_credentials() is None:
        raise NoCredentialsError()
    try:
        items, skipped = plan(credentials, regions, args.role_arn, args.organization)
    except AccountsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED

    def open_partition(item: AccountRegion) -> tuple[str, Store]:
        where = partition_location(location, item.account_id, item.region)
        aws = AwsTarget(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url)
        return where, open_store(where, aws if where.startswith("dynamodb:") else None)

    def ended(result: AccountRegionResult) -> None:
        if not args.no_progress:
            print(f"{result.target.account_id} {result.target.region}: {result.status} "
                  f"(exit {result.exit_code})", file=sys.stderr)

    def terminated(signum: int, frame: object) -> None:
        raise AuditInterrupted  # in the main thread: the running audits are canceled and recorded

    fleet = FleetRun(credentials, open_partition, detectors, checks, workers=args.workers, parallel=args.parallel,
                     max_attempts=args.max_attempts, rates={**DEFAULT_RATES, **dict(args.rates)}, on_result=ended)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        report = fleet.run(items, skipped)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.to_json() if args.format == "json" else report.to_text())
    return report.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    if args.regions is not None or args.role_arn or args.organization:
        return _run_many(args)
    if not args.demo:
        target = _target(args)
        target.require_credentials()  # before the store is bound to a region this run cannot audit
    store = _open_store(args)
    try:
        if args.demo:
            from devicedefender_audit.demo import demo_account

            with demo_account() as target:
                task = _run_audit(target, store, args, progress=not args.no_progress)
        else:
            task = _run_audit(target, store, args, progress=not args.no_progress)
        _print_audit(store, task, args.format)
    finally:
        store.close()
    return task_exit_code(task)


def cmd_demo(args: argparse.Namespace) -> int:
    from devicedefender_audit.demo import QUARANTINE_GROUP, demo_account
    from devicedefender_audit.mitigation import ActionDefinition, Mitigator
    from devicedefender_audit.models import MitigationActionType
    from devicedefender_audit.report import audit_json, executions_text
    from devicedefender_audit.store import resolve_location

    store = _open_store(args)
    try:
        with demo_account() as target:
            task = _run_audit(target, store, args, progress=True)
            findings = list(store.findings(task.task_id))
            executions = []
            if findings:
                mitigator = Mitigator(target.client("iot"), target.client("sns"), None, dry_run=True)
                actions = [ActionDefinition.for_type(MitigationActionType.UPDATE_DEVICE_CERTIFICATE),
                           ActionDefinition.for_type(MitigationActionType.UPDATE_CA_CERTIFICATE),
                           ActionDefinition.for_type(MitigationActionType.ADD_THINGS_TO_THING_GROUP,
                                                     thing_group=QUARANTINE_GROUP)]
                executions = mitigator.apply(findings, actions, task_id=f"demo-{task.task_id}")
            if args.format == "json":
                document = json.loads(audit_json(task, findings, store.errors(task.task_id)))
                document["mitigationDryRun"] = {"actionsExecutions": [e.to_aws() for e in executions]}
                print(json.dumps(document, indent=2))
            else:
                _print_audit(store, task, args.format)
                if executions:
                    print()  # the table's heading says it is a dry run that changed nothing
                    print(executions_text(executions))
    finally:
        store.close()
    if args.format == "table":
        print(f"\nSaved as audit {task.task_id} in the demo's own store; see "
              f"`python -m devicedefender_audit list-audits --store {resolve_location(args.store, demo=True)}`.")
    return EXIT_OK if task.task_status.value == "COMPLETED" else EXIT_FAILED


def cmd_list_audits(args: argparse.Namespace) -> int:
    from devicedefender_audit.audit import recover_interrupted
    from devicedefender_audit.report import tasks_text

    store = _open_store(args, READS_LOCALLY)
    try:
        recover_interrupted(store)
        tasks = store.list_tasks()
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps({"tasks": [t.to_aws() for t in tasks]}, indent=2))
    else:
        print(tasks_text(tasks))
    return EXIT_OK


class _BadInput(Exception):
    """An input file given on the command line that cannot be used (exit 2)."""


class _NoSuchAudit(Exception):
    """``show-findings`` and friends on a store without that audit."""


def _resolve_task(store: Store, task_id: str | None) -> AuditTask:
    """The named audit, or the latest one. A store without audits asks for one; a task id the
    store does not hold is said to be unknown (a typo, or another store's or region's audit)."""
    latest = store.latest_task_id()
    task = store.get_task(task_id or latest) if task_id or latest else None
    if task is not None:
        return task
    if latest is None:
        raise _NoSuchAudit(f"no audit in {store.path}; run an audit first")
    raise _NoSuchAudit(f"unknown audit task id {task_id!r}: {store.path} holds no such audit "
                       "(list-audits shows the ones it holds)")


def cmd_show_findings(args: argparse.Namespace) -> int:
    """The audit's report and its exit code, as ``run`` gave them: a task whose process died reads
    FAILED (as in ``list-audits``), and an audit that failed or left certificates unchecked never
    exits 0."""
    from devicedefender_audit.audit import recover_interrupted

    store = _open_store(args, READS_LOCALLY)
    try:
        recover_interrupted(store)
        task = _resolve_task(store, args.task_id)
        _print_audit(store, task, args.format)
    finally:
        store.close()
    return task_exit_code(task)


def _print_executions(executions: Sequence[MitigationExecution], fmt: str, empty: str | None = None) -> None:
    from devicedefender_audit.report import executions_text

    if fmt == "json":
        print(json.dumps({"actionsExecutions": [e.to_aws() for e in executions]}, indent=2))
    else:
        print(executions_text(executions, empty))


def cmd_mitigate(args: argparse.Namespace) -> int:
    """The everyday front of StartAuditMitigationActionsTask: the given action types, with their
    options as unstored definitions, on every finding of one audit (each action on the checks
    whose resource type it acts on), in the foreground."""
    from devicedefender_audit.check_names import RESOURCE_TYPE_OF
    from devicedefender_audit.mitigation import ACTIONS_FOR_RESOURCE, ActionDefinition
    from devicedefender_audit.models import MitigationActionType, new_id
    from devicedefender_audit.service import ServiceContext, ServiceError
    from devicedefender_audit.service.mitigation_tasks import start_mitigation_task

    try:
        actions = {a.name: a for a in (
            ActionDefinition.for_type(MitigationActionType(name), args.thing_group, args.sns_topic_arn)
            for name in dict.fromkeys(args.actions))}
    except ValueError as exc:  # a missing option, or one the model refuses
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = _open_store(args)
    try:
        audit_task = _resolve_task(store, args.task_id)
        mapping = {check: [name for name, action in actions.items()
                           if action.action_type in ACTIONS_FOR_RESOURCE[RESOURCE_TYPE_OF[check]]]
                   for check in audit_task.audit_details if check in RESOURCE_TYPE_OF}
        mapping = {check: names for check, names in mapping.items() if names}
        if not mapping:
            print(f"error: none of {', '.join(actions)} acts on the checks audit {audit_task.task_id} ran",
                  file=sys.stderr)
            return EXIT_USAGE
        target = _target(args)
        target.require_credentials()
        ctx = ServiceContext(store=store, iot_client=lambda: target.client("iot"), detectors=list,
                             region=target.region_name or "us-east-1", sns_client=lambda: target.client("sns"))
        task_id = f"mitigate-{new_id()}"
        start_mitigation_task(ctx, task_id, {"auditTaskId": audit_task.task_id}, mapping, actions,
                              client_request_token=task_id, dry_run=args.dry_run)
        executions = store.executions(task_id)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    _print_executions(executions, args.format)
    return EXIT_FAILED if any(e.status.value == "FAILED" for e in executions) else EXIT_OK


def cmd_list_mitigations(args: argparse.Namespace) -> int:
    from devicedefender_audit.service.mitigation_tasks import executions_for_audit

    store = _open_store(args, READS_LOCALLY)
    try:
        task_id = _resolve_task(store, args.task_id).task_id
        executions = executions_for_audit(store, task_id)
    finally:
        store.close()
    _print_executions(executions, args.format, empty=f"No mitigation action has been applied to audit {task_id}.")
    return EXIT_OK


def _check_detectors(names: Sequence[str], args: argparse.Namespace) -> list[Any]:
    """The detectors of the checks ``names`` that look at one key: the key-quality check's (the
    blocklists and ROCA), and the factorable check's per-key tests (its comparison across the
    fleet needs an inventory, so ``run``)."""
    detectors = _detectors(args) if DEVICE_CERTIFICATE_KEY_QUALITY_CHECK in names else []
    if DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK in names:
        from devicedefender_audit.factoring import per_key_detectors

        detectors += per_key_detectors()
    return detectors


def cmd_check(args: argparse.Namespace) -> int:
    from devicedefender_audit.detectors.base import Verdict
    from devicedefender_audit.key_check import check_files, result_detail
    from devicedefender_audit.text_table import table

    checks = check_files(args.files, _check_detectors(args.checks or CHECK_COMMAND_CHECKS, args))
    if args.format == "sarif":
        from devicedefender_audit.exports.sarif import checks_sarif

        print(json.dumps(checks_sarif(checks), indent=2))
    elif args.format == "json":
        print(json.dumps([
            {"file": c.path, "error": c.error,
             "key": None if c.key is None else {"algorithm": c.key.algorithm, "bits": c.key.bits,
                                                "exponent": c.key.exponent, "source": c.key.source},
             "results": [{"detector": r.detector, "verdict": r.verdict.value,
                          "reasonCode": r.reason_code, "detail": r.detail} for r in c.results]}
            for c in checks
        ], indent=2))
    else:
        rows = []
        #: The RESULT and DETAIL cells of each result object, made once: a detector returns one
        #: shared object for every clean key, and an Enum's .value (and hash) is a Python call.
        #: Keyed by id: every result outlives this loop in ``checks``, so no id is reused.
        cells: dict[int, tuple[str, str]] = {}
        for c in checks:
            if c.error:
                rows.append((c.path, "-", "ERROR", c.error))
            key = f"{c.key.algorithm} {c.key.bits}" if c.key else "-"
            for r in c.results:
                cell = cells.get(id(r))
                if cell is None:
                    cell = cells[id(r)] = (f"{r.detector}: {r.verdict.value}", result_detail(r))
                rows.append((c.path, key, cell[0], cell[1]))
        print(table(("FILE", "KEY", "RESULT", "DETAIL"), rows))
    if any(r.verdict is Verdict.VULNERABLE for c in checks for r in c.results):
        return EXIT_NON_COMPLIANT
    # A key no detector data covers (e.g. RSA-8192, DSA) is not clean, as in run's RESOURCES_NOT_COVERED.
    unchecked = any(c.error for c in checks) or any(r.verdict is Verdict.NOT_COVERED for c in checks for r in c.results)
    return EXIT_INCOMPLETE if unchecked else EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "list-audits": cmd_list_audits,
    "show-findings": cmd_show_findings,
    "list-mitigations": cmd_list_mitigations,
    "mitigate": cmd_mitigate,
    "check": cmd_check,
}


def _explain(exc: Exception) -> tuple[int, str] | None:
    """(exit code, one-line message) for the errors a user can cause or fix; None for bugs."""
    from devicedefender_audit.store import StoreError, StoreUnavailable

    if isinstance(exc, StoreError):  # a store that failed in use (locked, full) is no usage error
        return (EXIT_FAILED if isinstance(exc, StoreUnavailable) else EXIT_USAGE), str(exc)
    from devicedefender_audit.cli_export import OutputError

    if isinstance(exc, OutputError):
        return exc.exit_code, str(exc)
    if isinstance(exc, (_NoSuchAudit, _BadInput)):
        return EXIT_USAGE, str(exc)
    if type(exc).__module__.startswith("botocore"):
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ProfileNotFound,
        )

        from devicedefender_audit.aws.errors import aws_error_code, aws_error_message, is_connection_error

        if isinstance(exc, (NoRegionError, ProfileNotFound, NoCredentialsError, PartialCredentialsError)):
            # botocore ends some of its messages with a period ("You must specify a region."), not all.
            return EXIT_FAILED, (f"{str(exc).rstrip('.')}. Set the AWS region/credentials (or --region/--profile), "
                                 "or try the embedded demo: python -m devicedefender_audit run --demo")
        if is_connection_error(exc):
            # Raised after botocore's retries by a call made outside an audit (an audit records its
            # own connection errors): Security Hub, STS, a DynamoDB store, an organization's accounts.
            return EXIT_FAILED, (f"no response from AWS: {str(exc).rstrip('.')}. Check the network, "
                                 "--region and --endpoint-url")
        if isinstance(exc, ClientError):
            return EXIT_FAILED, (f"AWS refused {exc.operation_name}: {aws_error_code(exc)}: "
                                 f"{aws_error_message(exc)}")
    from devicedefender_audit.debian_weak.blocklist_file import BlocklistError

    if isinstance(exc, (BlocklistError, FileNotFoundError)):
        return EXIT_FAILED, str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = (_check_parser() if argv[:1] == ["check"] else build_parser()).parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # output redirected to a full disk fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (``show-findings | head``): stop quietly, as other tools do.
        _drop_stdout()
        return EXIT_PIPE
    except KeyboardInterrupt:
        # Outside an audit (which records itself CANCELED): a report or listing cut short, whose
        # audit is already stored. What stdout still holds is dropped: its reader may be gone.
        print("\ninterrupted; what was already recorded stays in the store", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_SIGINT)
    except OSError as exc:
        if exc.errno not in _WRITE_FAILURES:
            return _explained(exc)
        # Standard output redirected to a file system that refuses it (``> report.txt`` on a full
        # disk): what was recorded stays in the store; the rest of the output is dropped.
        _drop_stdout()
        print(f"error: the output cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - _explained raises again what it does not know
        return _explained(exc)


#: Errors of a write that the file system refused: full, over quota, too large, failing.
_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _explained(exc: Exception) -> int:
    """One ``error:`` line and the exit code for an error :func:`_explain` knows; others propagate."""
    explained = _explain(exc)
    if explained is None:
        raise exc
    code, message = explained
    print(f"error: {message}", file=sys.stderr)
    return code


def _drop_stdout() -> None:
    """Point standard output at the null device, so that what is still buffered for it is not
    written again at exit (a second failure, printed as a traceback by the interpreter)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
