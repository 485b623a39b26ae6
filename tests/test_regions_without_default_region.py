"""``run --regions`` names every region it audits, so it needs no default region besides: the
caller's account (STS GetCallerIdentity) was asked in the configured region only, and with none
(credentials from the environment, no config file) a run at ``--endpoint-url`` (LocalStack, a
moto server), where botocore has no global STS endpoint to fall back on, failed with
``NoRegionError`` before auditing anything."""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import DATA

from devicedefender_audit.check_names import DEVICE_CERTIFICATE_KEY_QUALITY_CHECK
from devicedefender_audit.cli import main


@pytest.fixture
def no_default_region(moto_server, monkeypatch, tmp_path) -> str:
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert boto3.session.Session().region_name is None
    return moto_server


def test_run_regions_at_an_endpoint_audits_without_a_default_region(no_default_region, tmp_path, capsys):
    boto3.client("iot", region_name="eu-west-1", endpoint_url=no_default_region).register_certificate_without_ca(
        certificatePem=(DATA / "roca" / "cert04.pem").read_text(), status="ACTIVE")
    code = main(["run", "--regions", "eu-west-1", "--endpoint-url", no_default_region,
                 "--store", str(tmp_path / "audits.sqlite3"), "--no-progress", "--format", "json",
                 "--checks", DEVICE_CERTIFICATE_KEY_QUALITY_CHECK])
    out, err = capsys.readouterr()
    assert code == 3, (out, err)  # the ROCA certificate is found: the region was audited
    [audited] = json.loads(out)["accountRegions"]
    assert (audited["accountId"], audited["region"]) == ("123456789012", "eu-west-1")
    assert (tmp_path / "audits.123456789012.eu-west-1.sqlite3").exists()
