"""playbooks/status.yml reads every domain's state file on every edge and reports them."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from labtools import acme_args, run_module, run_playbook

pytestmark = [pytest.mark.lab, pytest.mark.integration]


def test_status_table_and_json(lab, tmp_path):
    lab.dns_set("a", "status.acme.test", [lab.addr])
    state_root = tmp_path / "state"
    issued = run_module("acme_http01_cert", acme_args(lab, tmp_path / "live", state_root, [{"domain": "status.acme.test"}]))
    assert issued.state == "CHANGED"
    recorded = run_module("domain_status", {"state_root": str(state_root), "statuses": [
        {"domain": "blocked.acme.test", "ssl_status": "unknown", "label": "SSL Unknown", "reason": "caa_blocked",
         "message": "CAA forbids", "remediation": 'acme.test. CAA 0 issue "letsencrypt.org"'}]})
    assert recorded.state == "CHANGED" and recorded.result["updated"] == ["blocked.acme.test"]
    again = run_module("domain_status", {"state_root": str(state_root), "statuses": [
        {"domain": "blocked.acme.test", "ssl_status": "unknown", "label": "SSL Unknown", "reason": "caa_blocked",
         "message": "CAA forbids", "remediation": 'acme.test. CAA 0 issue "letsencrypt.org"'}]})
    assert again.state == "SUCCESS" and again.result["updated"] == []

    # Two edges on this machine (local connection), each with its own state directory.
    other_root = tmp_path / "other-state"
    assert run_module("domain_status", {"state_root": str(other_root), "statuses": [
        {"domain": "pending.acme.test", "ssl_status": "pending", "label": "SSL Pending", "reason": "awaiting_issuance",
         "message": "Not issued yet"}]}).state == "CHANGED"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "hosts.yml"
    # These "edges" serve no HTTPS: the served-certificate check is off (the edge tests run it).
    inventory.write_text(yaml.safe_dump({"linkcert_edges": {"vars": {"linkcert_served_check": False}, "hosts": {
        "edge-a": dict(local, linkcert_state_root=str(state_root)), "edge-b": dict(local, linkcert_state_root=str(other_root))}}}))
    out, page = tmp_path / "status.json", tmp_path / "status.html"
    run = run_playbook("playbooks/status.yml", str(inventory), extra_vars={"linkcert_status_file": str(out), "linkcert_status_page": str(page)})
    assert run.rc == 0, run.stdout + run.stderr
    assert "status.acme.test" in run.stdout and "SSL Issued   expires " in run.stdout
    assert 'caa_blocked: publish acme.test. CAA 0 issue "letsencrypt.org"' in run.stdout
    report = json.loads(out.read_text())
    assert [row["domain"] for row in report["edges"]["edge-b"]] == ["pending.acme.test"]
    assert "pending.acme.test  SSL Pending  awaiting_issuance" in run.stdout
    rows = {row["domain"]: row for row in report["edges"]["edge-a"]}
    assert rows["status.acme.test"]["ssl_status"] == "issued" and rows["status.acme.test"]["serial"] == issued.result["results"][0]["serial"]
    assert rows["blocked.acme.test"]["remediation"].startswith("acme.test. CAA")
    text = page.read_text()
    assert "status.acme.test" in text and "pending.acme.test" in text and "caa_blocked" in text
