"""The deployment templates: cfn-lint clean, handlers that exist, roles that match the documented policies."""

from __future__ import annotations

import importlib
import json

import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode
from conftest import REPO

INFRA = REPO / "infra"
TEMPLATES = sorted([*INFRA.glob("*.yaml"), *INFRA.glob("*.yml"),
                    *(p for p in INFRA.glob("*.json") if "AWSTemplateFormatVersion" in p.read_text())])


def _template(name: str) -> dict:
    template, errors = decode(str(INFRA / name))
    assert not errors, errors
    return template


def test_there_is_a_template():
    assert INFRA / "template.yaml" in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_passes(template):
    """Errors, warnings and informational findings alike: a template ships clean."""
    assert [str(match) for match in lint_file(template)] == []


@pytest.mark.parametrize("template", [p.name for p in TEMPLATES])
def test_every_lambda_handler_exists(template):
    functions = [r["Properties"] for r in _template(template)["Resources"].values()
                 if r["Type"] == "AWS::Lambda::Function"]
    assert functions
    for function in functions:
        module, _, name = function["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), function["Handler"]


def _actions(statements: list) -> set[str]:
    found = set()
    for statement in statements:
        if isinstance(statement, dict) and "Action" in statement:
            actions = statement["Action"]
            found.update([actions] if isinstance(actions, str) else actions)
    return found


def _policy_actions(resource: str, prefix: str) -> set[str]:
    role = _template("template.yaml")["Resources"][resource]["Properties"]
    return {a for policy in role["Policies"] for a in _actions(policy["PolicyDocument"]["Statement"])
            if a.startswith(prefix)}


@pytest.mark.parametrize(("role", "policy"), [("AuditRole", "iam-policy-audit.json"),
                                              ("GateRole", "iam-policy-mitigate.json")])
def test_roles_grant_what_the_documented_policies_grant(role, policy):
    documented = json.loads((INFRA / policy).read_text())["Statement"]
    assert _policy_actions(role, "iot:") == {a for a in _actions(documented) if a.startswith("iot:")}
