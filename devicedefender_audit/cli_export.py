"""``export``: an audit's findings as ASFF, SARIF, CSV or JSON, optionally into Security Hub.

Kept out of :mod:`.cli` so that the other commands (``check`` above all) never import the export
modules: :func:`add_export_command` only declares arguments, and the formats are imported when
the command runs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicedefender_audit.exit_codes import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.exports.asff import AsffContext
    from devicedefender_audit.models import AuditFinding, AuditTask, ResourceError
    from devicedefender_audit.store import Store

FORMATS = ("asff", "sarif", "csv", "json")


def add_export_command(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Declare ``export`` on the CLI's subparsers; return its handler by command name."""
    from devicedefender_audit import cli

    export = sub.add_parser("export", help="an audit's findings as ASFF, SARIF, CSV or JSON (or into Security Hub)")
    export.add_argument("task_id", nargs="?", help="default: the latest audit")
    export.add_argument("--format", choices=FORMATS, default=None,
                        help="default json; asff with --to-securityhub")
    export.add_argument("--output", "-o", type=Path, help="write to this file instead of standard output "
                        "(its directory must exist)")
    export.add_argument("--to-securityhub", action="store_true",
                        help="import the ASFF findings into AWS Security Hub (BatchImportFindings)")
    export.add_argument("--account-id", help="ASFF account when it cannot be told from the findings "
                        "(default: the findings' certificate ARNs; with --to-securityhub, the caller's account)")
    cli._aws_options(export)
    cli._store_option(export)
    return {"export": cmd_export}


def _asff_context(args: argparse.Namespace, task: AuditTask, findings: list[AuditFinding],
                  target: AwsTarget | None) -> AsffContext | str:
    """Where the findings are imported (product ARN), or why that cannot be told."""
    from devicedefender_audit.exports.asff import AsffContext, certificate_arn_parts, region_partition

    parts = next((p for p in (certificate_arn_parts(f.certificate_arn) for f in findings) if p), None)
    if target is not None:
        # Security Hub takes custom findings only under the importing account's own product ARN.
        account = args.account_id or target.client("sts").get_caller_identity()["Account"]
        region = target.region_name
    else:
        account = args.account_id or task.account or (parts.account if parts else None)
        region = args.region or task.region or (parts.region if parts else None)
    if not account or not region:
        return "cannot tell the AWS account or region of this audit: give --account-id and --region"
    return AsffContext(account_id=account, region=region,
                       partition=parts.partition if parts else region_partition(region))


def _warn_shortfalls(task: AuditTask, errors: list[ResourceError]) -> None:
    """ASFF has findings only, no place for a certificate that was not checked or a check that
    could not run: say so on stderr, so that a partial list is not taken for the account's."""
    from devicedefender_audit.exports.coverage import shortfalls

    for line in shortfalls(task, errors):
        print(f"warning: {line}", file=sys.stderr)


def _later_completed_audit(store: Store, task: AuditTask) -> str | None:
    """The id of an audit that started after ``task`` and completed, if any (one that failed or
    is still running does not replace what ``task`` found)."""
    from datetime import datetime, timezone

    from devicedefender_audit.models import AuditTaskStatus

    later = store.tasks_started_between(task.task_start_time, datetime.max.replace(tzinfo=timezone.utc))
    return next((t.task_id for t in later
                 if t.task_id != task.task_id and t.task_start_time > task.task_start_time
                 and t.task_status is AuditTaskStatus.COMPLETED), None)


def _other_accounts(findings: list[AuditFinding], account: str) -> list[str]:
    """The accounts of ``findings`` other than ``account``: with the default product ARN,
    ``BatchImportFindings`` takes a finding only when its ``AwsAccountId`` is the caller's, so
    a member account's findings sent with the administrator's credentials are all rejected."""
    from devicedefender_audit.exports.asff import certificate_arn_parts

    return sorted({parts.account for parts in (certificate_arn_parts(f.certificate_arn) for f in findings)
                   if parts and parts.account != account})


def cmd_export(args: argparse.Namespace) -> int:
    from devicedefender_audit import cli

    fmt = args.format or ("asff" if args.to_securityhub else "json")
    if args.to_securityhub and fmt != "asff":
        print("error: --to-securityhub sends ASFF; leave out --format or use --format asff", file=sys.stderr)
        return cli.EXIT_USAGE
    if args.output is not None:
        check_output(args.output)
    # Sent to Security Hub, findings go to the region's hub: the store must be that region's.
    store = cli._open_store(args, cli.ACTS_IN_REGION if args.to_securityhub else cli.READS_LOCALLY)
    try:
        task = cli._resolve_task(store, args.task_id)
        later = _later_completed_audit(store, task) if args.to_securityhub else None
        findings = list(store.findings(task.task_id))
        errors = list(store.errors(task.task_id))
    finally:
        store.close()
    if later is not None:
        print(f"error: audit {later} completed after {task.task_id}: Security Hub gets the latest complete "
              "picture, as an older audit would undo the suppressions and findings later ones changed",
              file=sys.stderr)
        return cli.EXIT_USAGE
    target = None
    if args.to_securityhub:
        target = cli._target(args)
        target.require_credentials()
    context = None
    if fmt == "asff":
        context = _asff_context(args, task, findings, target)
        if isinstance(context, str):
            print(f"error: {context}", file=sys.stderr)
            return cli.EXIT_USAGE
        if target is not None and (foreign := _other_accounts(findings, context.account_id)):
            print(f"error: Security Hub takes findings only from the account they are about, and these are of "
                  f"account {', '.join(foreign)}, not {context.account_id}: export with that account's "
                  "credentials (--profile, or a role in it)", file=sys.stderr)
            return cli.EXIT_USAGE
        _warn_shortfalls(task, errors)
    # Sent to Security Hub without --output, the findings are turned into ASFF a batch at a time.
    if args.output is not None or target is None:
        text = _document_text(fmt, task, findings, errors, context)
        if args.output is not None:
            write_output(args.output, text)
        else:
            print(text, end="")
    if target is None:
        return cli.EXIT_OK
    assert context is not None  # --to-securityhub exports ASFF
    return _to_securityhub(target, task, errors, context, findings)


def _document_text(fmt: str, task: AuditTask, findings: list[AuditFinding], errors: list[ResourceError],
                   context: AsffContext | None) -> str:
    """The export in ``fmt`` (``context`` for ASFF), ending with a newline."""
    document: Any
    if fmt == "asff":
        from devicedefender_audit.exports.asff import asff_findings

        assert context is not None
        document = {"Findings": asff_findings(findings, context)}
    elif fmt == "sarif":
        from devicedefender_audit.exports.sarif import audit_sarif

        document = audit_sarif(task, findings, errors)
    elif fmt == "csv":
        from devicedefender_audit.exports.csv_format import findings_csv

        document = findings_csv(task, findings, errors)
    else:
        from devicedefender_audit.exports.json_format import audit_document

        document = audit_document(task, findings, errors)
    text = document if isinstance(document, str) else json.dumps(document, indent=2)
    return text if text.endswith("\n") else text + "\n"


class OutputError(Exception):
    """An ``--output`` path that cannot be written: exit 2, as any bad argument, unless the
    file system failed while writing (full, over quota, I/O error): exit 1, nothing to fix in
    the command."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.exit_code = EXIT_FAILED if cause is not None and cause.errno in _WRITE_FAILURES else EXIT_USAGE


#: errno values of a write that failed for the file system's sake, not the path's.
_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def check_output(path: Path, option: str = "--output") -> None:
    """Refuse an ``--output`` that cannot be a file before anything is read or sent, so that
    ``--to-securityhub --output DIR`` does not import the findings and then fail. Whether the
    file can really be written is only known when it is (:func:`write_output`). ``option``
    names the argument in the message."""
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file path")
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise OutputError(f"{option} {path}: {path.parent} {what}")


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a regular file is replaced by a sibling
    temporary file once that is written (a disk that fills up mid-write must not leave a
    truncated CSV, fewer rows than findings, where the last export was); it keeps the mode of
    the file it replaces. A device or pipe (``/dev/stdout``) is written directly."""
    import tempfile  # here, not at import: every command's parser imports this module

    try:
        if path.exists() and not path.is_file():
            path.write_text(text, encoding="utf-8")
            return
        target = path.resolve()  # through a symbolic link, as a plain write goes
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode()
        try:
            descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except PermissionError:
            # A writable file in a directory we may not create files in: in place, as before.
            target.write_text(text, encoding="utf-8")
            return
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise OutputError(f"--output {path} cannot be written: {exc.strerror or exc}", exc) from exc


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _to_securityhub(target: AwsTarget, task: AuditTask, errors: list[ResourceError], context: AsffContext,
                    findings: list[AuditFinding]) -> int:
    """Import the audit's findings, carry suppressions made or ended since their import over,
    and archive those it shows resolved (:mod:`.securityhub_sync`); exit 1 when a finding was
    refused or a call was (``securityhub:GetFindings`` or ``BatchUpdateFindings``)."""
    from devicedefender_audit import cli
    from devicedefender_audit.exports.securityhub_sync import sync_audit

    result = sync_audit(target.client("securityhub"), task, findings, errors, context)
    where = f"Security Hub ({target.region_name})"
    print(f"{where}: imported {result.imported.success_count} of {len(findings)} finding(s) "
          f"in {result.imported.batches} request(s); {len(result.imported.failed)} failed")
    for status, done in (("SUPPRESSED", "suppressed"), ("NEW", "reopened (suppression ended)")):
        if status in result.workflow:
            updated = result.workflow[status]
            print(f"{where}: {done} {updated.success_count} finding(s); {len(updated.failed)} failed")
    if result.archived.batches:
        print(f"{where}: archived {result.archived.success_count} finding(s) no longer reported; "
              f"{len(result.archived.failed)} failed")
    for failure in result.failures:
        print(f"error: {failure.get('Id')}: {failure.get('ErrorCode')}: {failure.get('ErrorMessage')}",
              file=sys.stderr)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if result.lookup_error:
        print("error: this tool's findings in Security Hub could not be looked up, so nothing was sent (the "
              "next export sends it all: the lookup tells which suppressions to carry over)", file=sys.stderr)
    return cli.EXIT_FAILED if result.failed else cli.EXIT_OK
