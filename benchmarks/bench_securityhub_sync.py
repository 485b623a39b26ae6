"""Memory and time of a Security Hub sync as the fleet's weak keys grow.

Run: ``.venv/bin/python benchmarks/bench_securityhub_sync.py [--findings 10000 50000]``.

A ROCA chip in a product line makes every device of it a finding, so an account can have tens
of thousands. Each size runs in a child process: it builds N audit findings (RSA-2048, ROCA),
then runs :func:`~devicedefender_audit.exports.securityhub_sync.sync_audit` for a complete audit
against a stand-in Security Hub that answers every call at once and holds nothing: its
``GetFindings`` pages (100 findings) are the N findings as an earlier sync imported them, with
the members Security Hub adds, and one in ten is suppressed since, so the sync also sets their
workflow. Printed: the Python heap the findings take (tracemalloc), the sync's peak heap above
them, the calls made, and the wall time (tracing slows it; compare within this benchmark only).
moto is not used: its backend would hold every finding and its memory would be counted as ours.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
import tracemalloc
from typing import Any

REGION, ACCOUNT = "us-east-1", "123456789012"


class StandInHub:
    """Security Hub answering at once: imports and updates succeed, ``GetFindings`` pages the
    N findings as imported earlier (``Workflow`` ``NEW``, Security Hub's own product fields)."""

    def __init__(self, template: dict[str, Any], ids: list[str], certificates: list[str]) -> None:
        self.template, self.ids, self.certificates = template, ids, certificates
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def batch_import_findings(self, Findings: list[dict[str, Any]]) -> dict[str, Any]:
        self._count("BatchImportFindings")
        return {"SuccessCount": len(Findings), "FailedFindings": []}

    def batch_update_findings(self, **request: Any) -> dict[str, Any]:
        self._count("BatchUpdateFindings")
        return {"ProcessedFindings": request["FindingIdentifiers"], "UnprocessedFindings": []}

    def get_paginator(self, name: str) -> Any:
        hub = self

        class Paginator:
            def paginate(self, **_: Any) -> Any:
                for start in range(0, len(hub.ids), 100):
                    hub._count("GetFindings")
                    page = []
                    for n in range(start, min(len(hub.ids), start + 100)):
                        finding = copy.deepcopy(hub.template)
                        finding["Id"] = hub.ids[n]
                        finding["Resources"][0]["Details"]["Other"]["deviceCertificateId"] = hub.certificates[n]
                        finding.update({"Workflow": {"Status": "NEW"}, "CompanyName": "Personal",
                                        "ProductName": "Default", "ProcessedAt": finding["UpdatedAt"]})
                        finding["ProductFields"]["aws/securityhub/FindingId"] = f"{finding['ProductArn']}/{hub.ids[n]}"
                        page.append(finding)
                    yield {"Findings": page}

        return Paginator()


def child(count: int) -> None:
    from devicedefender_audit.exports.asff import AsffContext, asff_finding, asff_id
    from devicedefender_audit.exports.securityhub_sync import sync_audit
    from devicedefender_audit.models import (
        AuditCheckDetails,
        AuditFinding,
        AuditTask,
        NonCompliantResource,
        ResourceIdentifier,
    )

    context = AsffContext(ACCOUNT, REGION)
    earlier = AuditTask(region=REGION, task_status="COMPLETED")
    task = AuditTask(region=REGION, task_status="COMPLETED")
    task.audit_details = {"DEVICE_CERTIFICATE_KEY_QUALITY_CHECK": AuditCheckDetails(
        check_run_status="COMPLETED_NON_COMPLIANT", check_compliant=False, total_resources_count=count,
        non_compliant_resources_count=count)}

    def finding(n: int) -> AuditFinding:
        certificate = f"{n:064x}"
        return AuditFinding(
            task_id=task.task_id, task_start_time=task.task_start_time, is_suppressed=n % 10 == 0,
            non_compliant_resource=NonCompliantResource(
                resource_identifier=ResourceIdentifier(device_certificate_id=certificate,
                                                       device_certificate_arn=f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{certificate}"),
                additional_info={"keyAlgorithm": "RSA", "keySize": "2048", "certificateStatus": "ACTIVE",
                                 "things": f"meter-{n:06d}"}),
            reason_for_non_compliance="RSA-2048 modulus has the ROCA structure (CVE-2017-15361)",
            reason_for_non_compliance_code="CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361")

    tracemalloc.start()
    findings = [finding(n) for n in range(count)]
    held = tracemalloc.get_traced_memory()[0]
    template = asff_finding(findings[1].model_copy(update={"task_id": earlier.task_id}), context)
    hub = StandInHub(template, [asff_id(f, context) for f in findings], [f.certificate_id for f in findings])
    ids_held = tracemalloc.get_traced_memory()[0] - held  # the stand-in's, not the sync's
    tracemalloc.reset_peak()
    started = time.perf_counter()
    result = sync_audit(hub, task, findings, [], context)
    wall = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - held - ids_held
    assert not result.failed and result.imported.success_count == count
    calls = ", ".join(f"{name} {n}" for name, n in sorted(hub.calls.items()))
    print(f"{count:>7} findings: findings {held / 2**20:6.1f} MiB; sync peak above them {peak / 2**20:6.1f} MiB "
          f"({peak / count:6.0f} B/finding); {wall:5.2f} s; suppressed {result.workflow['SUPPRESSED'].success_count}; "
          f"calls: {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    for count in args.findings:
        subprocess.run([sys.executable, __file__, "--child", str(count)], check=True)


if __name__ == "__main__":
    main()
