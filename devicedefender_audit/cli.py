"""``python -m devicedefender_audit``: audit, review, mitigate, check files, manage blocklists.

Exit codes, so a scheduled audit can gate a pipeline:
0 everything in scope was checked and is compliant; 1 the audit could not run (e.g. listing
failed); 2 bad usage; 3 non-compliant certificates found; 4 no finding, but some certificates
could not be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from botocore.exceptions import NoCredentialsError, NoRegionError, ProfileNotFound

from devicedefender_audit.audit import Auditor, AuditResult
from devicedefender_audit.aws_clients import AwsTarget
from devicedefender_audit.debian_weak.blocklist_file import BlocklistError
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.detectors.debian_weak import DebianWeakDetector, default_blocklist_dir
from devicedefender_audit.key_check import check_files
from devicedefender_audit.mitigation import MitigationConfig, Mitigator
from devicedefender_audit.models import AuditTask, AuditTaskStatus, MitigationActionType, MitigationExecution
from devicedefender_audit.progress import ProgressBar
from devicedefender_audit.report import audit_json, audit_text, executions_text, table, tasks_text
from devicedefender_audit.scanner import CertificateScanner
from devicedefender_audit.store import AuditStore, default_store_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NON_COMPLIANT, EXIT_INCOMPLETE = 0, 1, 2, 3, 4


def _aws_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AWS (defaults: the standard AWS credential/region chain)")
    group.add_argument("--region")
    group.add_argument("--profile")
    group.add_argument("--endpoint-url", help="e.g. a moto server or LocalStack")
    group.add_argument("--max-attempts", type=int, default=10,
                       help="attempts per call, retried in botocore's adaptive mode (default 10)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--store", type=Path, default=None,
                        help=f"SQLite audit history (default {default_store_path()})")


def _blocklists(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocklists", type=Path, default=None,
                        help=f"CVE-2008-0166 blocklist directory (default {default_blocklist_dir()})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicedefender_audit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="audit the account's device certificates")
    _aws_options(run)
    _common(run)
    _blocklists(run)
    run.add_argument("--workers", type=int, default=8, help="concurrent DescribeCertificate calls")
    run.add_argument("--demo", action="store_true",
                     help="audit an embedded moto account seeded with a demo fleet (no AWS needed)")
    run.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="audit the embedded demo fleet, then dry-run its mitigations")
    _common(demo)
    _blocklists(demo)

    listing = sub.add_parser("list-audits", help="past audits from the store")
    _common(listing)

    show = sub.add_parser("show-findings", help="findings of an audit (default: the latest)")
    show.add_argument("task_id", nargs="?")
    _common(show)

    executions = sub.add_parser("list-mitigations", help="mitigation runs recorded for an audit")
    executions.add_argument("task_id", nargs="?", help="default: the latest audit")
    _common(executions)

    mitigate = sub.add_parser("mitigate", help="apply mitigation actions to an audit's findings")
    mitigate.add_argument("task_id", nargs="?", help="default: the latest audit")
    mitigate.add_argument("--action", dest="actions", action="append", required=True,
                          choices=[a.value for a in MitigationActionType])
    mitigate.add_argument("--thing-group", help="quarantine group for ADD_THINGS_TO_THING_GROUP")
    mitigate.add_argument("--sns-topic-arn", help="topic for PUBLISH_FINDINGS_TO_SNS")
    mitigate.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    _aws_options(mitigate)
    _common(mitigate)

    check = sub.add_parser("check", help="check local PEM certificates, keys or CSRs")
    check.add_argument("files", nargs="+")
    check.add_argument("--format", choices=("table", "json"), default="table")
    _blocklists(check)

    blocklist = sub.add_parser("blocklist", help="CVE-2008-0166 blocklists")
    bsub = blocklist.add_subparsers(dest="blocklist_command", required=True)
    gen = bsub.add_parser("generate", help="regenerate weak keys (resumable) and build the list")
    gen.add_argument("--bits", type=int, required=True)
    gen.add_argument("--platforms", nargs="+", default=None, choices=("le32", "le64", "be32"))
    gen.add_argument("--variants", nargs="+", default=None, choices=("rnd", "nornd-old", "nornd-new", "ssh-keygen"))
    gen.add_argument("--pid-start", type=int, default=0)
    gen.add_argument("--pid-stop", type=int, default=32768)
    gen.add_argument("--workers", type=int, default=None)
    gen.add_argument("--no-build", action="store_true", help="only compute checkpoints")
    build = bsub.add_parser("build", help="merge checkpoints into the shipped list")
    build.add_argument("--bits", type=int, required=True)
    info = bsub.add_parser("info", help="which key sizes are covered")
    imp = bsub.add_parser("import", help="merge an openssl-vulnkey blacklist.RSA-NNNN file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--bits", type=int, required=True)
    exp = bsub.add_parser("export", help="write a list in openssl-vulnkey format")
    exp.add_argument("out", type=Path)
    exp.add_argument("--bits", type=int, required=True)
    for p in (gen, build, info, imp, exp):
        _blocklists(p)
    return parser


def _open_store(args: argparse.Namespace) -> AuditStore:
    return AuditStore(args.store or default_store_path())


def _print_audit(result: AuditResult, fmt: str) -> None:
    render = audit_json if fmt == "json" else audit_text
    print(render(result.task, result.findings, result.errors))


def _audit_exit_code(result: AuditResult) -> int:
    if result.task.task_status is AuditTaskStatus.FAILED:
        return EXIT_FAILED
    if result.findings:
        return EXIT_NON_COMPLIANT
    return EXIT_INCOMPLETE if result.errors else EXIT_OK


def _run_audit(target: AwsTarget, args: argparse.Namespace, progress: bool) -> AuditResult:
    detectors = default_detectors(args.blocklists)
    for detector in detectors:
        for error in getattr(detector, "load_errors", []):
            print(f"warning: {error}", file=sys.stderr)
    scanner = CertificateScanner(target.client("iot"), workers=getattr(args, "workers", 8))
    bar = ProgressBar("Scanning certificates") if progress else None
    result = Auditor(scanner, detectors).run(progress=bar)
    result.task.region = target.region or target.session().region_name
    store = _open_store(args)
    try:
        store.save_audit(result)
    finally:
        store.close()
    return result


def cmd_run(args: argparse.Namespace) -> int:
    if args.demo:
        from devicedefender_audit.demo import demo_account

        with demo_account() as target:
            result = _run_audit(target, args, progress=not args.no_progress)
    else:
        target = AwsTarget(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url,
                           max_attempts=args.max_attempts)
        result = _run_audit(target, args, progress=not args.no_progress)
    _print_audit(result, args.format)
    return _audit_exit_code(result)


def cmd_demo(args: argparse.Namespace) -> int:
    from devicedefender_audit.demo import QUARANTINE_GROUP, demo_account

    with demo_account() as target:
        result = _run_audit(target, args, progress=True)
        _print_audit(result, args.format)
        if args.format == "table" and result.findings:
            mitigator = Mitigator(target.client("iot"), target.client("sns"), None, dry_run=True)
            config = MitigationConfig(
                actions=(MitigationActionType.UPDATE_DEVICE_CERTIFICATE,
                         MitigationActionType.ADD_THINGS_TO_THING_GROUP),
                thing_group=QUARANTINE_GROUP,
            )
            print("\nMitigation dry run (nothing is changed):")
            print(executions_text(mitigator.apply(result.findings, config)))
    if args.format == "table":
        print(f"\nSaved as audit {result.task.task_id}; see `python -m devicedefender_audit list-audits`.")
    return EXIT_OK if result.task.task_status is AuditTaskStatus.COMPLETED else EXIT_FAILED


def cmd_list_audits(args: argparse.Namespace) -> int:
    store = _open_store(args)
    tasks = store.list_tasks()
    store.close()
    if args.format == "json":
        print(json.dumps({"tasks": [t.to_aws() for t in tasks]}, indent=2))
    else:
        print(tasks_text(tasks))
    return EXIT_OK


def _resolve_task(store: AuditStore, task_id: str | None) -> AuditTask:
    """The named audit, or the latest one; exits with a clear message when there is none."""
    resolved = task_id or store.latest_task_id()
    task = store.get_task(resolved) if resolved else None
    if task is None:
        wanted = f"audit {task_id}" if task_id else "audit"
        raise SystemExit(f"error: no {wanted} in {store.path}; run an audit first")
    return task


def cmd_show_findings(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        task = _resolve_task(store, args.task_id)
        findings, errors = store.findings(task.task_id), store.errors(task.task_id)
    finally:
        store.close()
    print((audit_json if args.format == "json" else audit_text)(task, findings, errors))
    return EXIT_NON_COMPLIANT if findings else EXIT_OK


def _print_executions(executions: Sequence[MitigationExecution], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({"actionsExecutions": [e.to_aws() for e in executions]}, indent=2))
    else:
        print(executions_text(executions))


def cmd_mitigate(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        task_id = _resolve_task(store, args.task_id).task_id
        config = MitigationConfig(
            actions=tuple(MitigationActionType(a) for a in args.actions),
            thing_group=args.thing_group,
            sns_topic_arn=args.sns_topic_arn,
        )
        try:
            config.validate()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        target = AwsTarget(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url,
                           max_attempts=args.max_attempts)
        mitigator = Mitigator(target.client("iot"), target.client("sns"), store, dry_run=args.dry_run)
        executions = mitigator.apply(store.findings(task_id), config)
    finally:
        store.close()
    _print_executions(executions, args.format)
    return EXIT_FAILED if any(e.status.value == "FAILED" for e in executions) else EXIT_OK


def cmd_list_mitigations(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        executions = store.executions(_resolve_task(store, args.task_id).task_id)
    finally:
        store.close()
    _print_executions(executions, args.format)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    checks = check_files(args.files, default_detectors(args.blocklists))
    if args.format == "json":
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
        for c in checks:
            if c.error:
                rows.append((c.path, "-", "ERROR", c.error))
            for r in c.results:
                key = f"{c.key.algorithm} {c.key.bits}" if c.key else "-"
                rows.append((c.path, key, f"{r.detector}: {r.verdict.value}", r.reason_code or r.detail))
        print(table(("FILE", "KEY", "RESULT", "DETAIL"), rows))
    if any(c.vulnerable for c in checks):
        return EXIT_NON_COMPLIANT
    return EXIT_INCOMPLETE if any(c.error for c in checks) else EXIT_OK


def cmd_blocklist(args: argparse.Namespace) -> int:
    from devicedefender_audit.debian_weak import generator, vulnkey_format

    directory = args.blocklists or default_blocklist_dir()
    command = args.blocklist_command
    if command == "generate":
        chunks = generator.plan(
            args.bits,
            args.platforms or generator.PLATFORM_NAMES,
            args.variants or generator.VARIANT_NAMES,
            args.pid_start,
            args.pid_stop,
        )
        computed = generator.generate(directory, chunks, workers=args.workers)
        print(f"computed {computed} new chunk(s) of {len(chunks)} requested")
        if not args.no_build:
            manifest = generator.build(directory, args.bits)
            print(f"RSA-{args.bits}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
    elif command == "build":
        manifest = generator.build(directory, args.bits)
        print(f"RSA-{args.bits}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
    elif command == "info":
        detector = DebianWeakDetector(directory)
        rows = [(bits, state) for bits, state in detector.coverage().items()]
        print(f"blocklists: {directory}")
        print(table(("RSA BITS", "COVERAGE"), rows) if rows else "no blocklists found")
        for error in detector.load_errors:
            print(f"error: {error}", file=sys.stderr)
    elif command == "import":
        added = vulnkey_format.import_vulnkey_list(directory, args.bits, args.file)
        print(f"added {added} fingerprint(s) to RSA-{args.bits}")
    elif command == "export":
        count = vulnkey_format.export_vulnkey_list(directory, args.bits, args.out)
        print(f"wrote {count} fingerprint(s) to {args.out}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "list-audits": cmd_list_audits,
    "show-findings": cmd_show_findings,
    "list-mitigations": cmd_list_mitigations,
    "mitigate": cmd_mitigate,
    "check": cmd_check,
    "blocklist": cmd_blocklist,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (NoRegionError, ProfileNotFound, NoCredentialsError) as exc:
        print(f"error: {exc}. Set the AWS region/credentials (or --region/--profile), "
              "or try the embedded demo: python -m devicedefender_audit run --demo", file=sys.stderr)
        return EXIT_FAILED
    except (BlocklistError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
