"""``DescribeAccountAuditConfiguration``, ``UpdateAccountAuditConfiguration``,
``DeleteAccountAuditConfiguration``: which checks are enabled, the audit role, the SNS target.

As in Device Defender, a check must be enabled before an audit can target it, the first update
must name the ``roleArn``, a check that a scheduled audit targets cannot be disabled, and deleting the configuration resets every check to disabled (and is
refused while scheduled audits exist, unless ``deleteScheduledAudits`` is set).
"""

from __future__ import annotations

from typing import Any

from devicedefender_audit.check_names import AUDIT_CHECKS
from devicedefender_audit.service.context import ServiceContext, drop_none
from devicedefender_audit.service.errors import InvalidRequest
from devicedefender_audit.service.shapes import check_request
from devicedefender_audit.store import Store

#: The audit checks this service runs; others are refused rather than silently never run.
#: Device Defender's key-quality checks and our factorable-key checks (an extension).
SUPPORTED_CHECKS = AUDIT_CHECKS
CONFIGURATION_KIND, CONFIGURATION_KEY = "account_audit_configuration", "audit"
#: Kind of the scheduled audit records (deleted with the configuration when asked).
SCHEDULED_AUDIT_KIND = "scheduled_audit"


def _stored(store: Store) -> dict | None:
    return store.get_record(CONFIGURATION_KIND, CONFIGURATION_KEY)


def enabled_checks(store: Store) -> set[str]:
    """The checks enabled in the account's audit configuration."""
    checks = (_stored(store) or {}).get("auditCheckConfigurations", {})
    return {name for name, config in checks.items() if config.get("enabled")}


def require_supported(check_names: list[str]) -> None:
    """Refuse a check this service does not run (rather than accept it and never run it)."""
    unknown = [name for name in check_names if name not in SUPPORTED_CHECKS]
    if unknown:
        raise InvalidRequest(f"unsupported audit check(s) {unknown}; this service runs {list(SUPPORTED_CHECKS)}")


def require_enabled(store: Store, check_names: list[str]) -> None:
    """Device Defender refuses to target a check that is not enabled for the account."""
    require_supported(check_names)
    disabled = [name for name in check_names if name not in enabled_checks(store)]
    if disabled:
        raise InvalidRequest(f"audit check(s) {disabled} are not enabled for this account "
                             "(UpdateAccountAuditConfiguration)")
    if not check_names:
        raise InvalidRequest("targetCheckNames must name at least one check")


def describe_account_audit_configuration(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DescribeAccountAuditConfiguration", request)
    stored = _stored(ctx.store) or {}
    checks = {name: {"enabled": False} for name in SUPPORTED_CHECKS}
    checks.update(stored.get("auditCheckConfigurations", {}))
    return drop_none({
        "roleArn": stored.get("roleArn"),
        "auditNotificationTargetConfigurations": stored.get("auditNotificationTargetConfigurations"),
        "auditCheckConfigurations": checks,
    })


def update_account_audit_configuration(ctx: ServiceContext, **request: Any) -> dict:
    check_request("UpdateAccountAuditConfiguration", request)
    stored = _stored(ctx.store)
    role = request.get("roleArn") or (stored or {}).get("roleArn")
    if role is None:
        raise InvalidRequest("roleArn is required on the first UpdateAccountAuditConfiguration")
    checks = request.get("auditCheckConfigurations", {})
    require_supported(sorted(checks))
    _refuse_disabling_scheduled(ctx.store, [name for name, config in checks.items() if not config.get("enabled")])
    merged = dict(stored or {})
    merged["roleArn"] = role
    merged["auditCheckConfigurations"] = {**merged.get("auditCheckConfigurations", {}), **checks}
    if "auditNotificationTargetConfigurations" in request:
        merged["auditNotificationTargetConfigurations"] = {
            **merged.get("auditNotificationTargetConfigurations", {}),
            **request["auditNotificationTargetConfigurations"],
        }
    ctx.store.put_record(CONFIGURATION_KIND, CONFIGURATION_KEY, merged)
    return {}


def _refuse_disabling_scheduled(store: Store, disabled: list[str]) -> None:
    """"You cannot disable a check if it's used by any scheduled audit" (the API reference): a
    schedule would otherwise fail at every slot."""
    users = sorted((name, check) for name, body in store.records(SCHEDULED_AUDIT_KIND)
                   for check in body.get("targetCheckNames", ()) if check in disabled)
    if users:
        named = ", ".join(f"{check} (scheduled audit {name})" for name, check in users)
        raise InvalidRequest(f"cannot disable a check a scheduled audit uses: {named}; remove the check from "
                             "the scheduled audit or delete the scheduled audit first")


def delete_account_audit_configuration(ctx: ServiceContext, **request: Any) -> dict:
    check_request("DeleteAccountAuditConfiguration", request)
    schedules = [name for name, _ in ctx.store.records(SCHEDULED_AUDIT_KIND)]
    if schedules and not request.get("deleteScheduledAudits"):
        raise InvalidRequest(f"scheduled audits {schedules} exist; set deleteScheduledAudits to delete them too")
    with ctx.store.batch():
        for name in schedules:
            ctx.store.delete_record(SCHEDULED_AUDIT_KIND, name)
        ctx.store.delete_record(CONFIGURATION_KIND, CONFIGURATION_KEY)
    return {}
