"""Metrics for node_exporter's textfile collector, as the renewal runner and domain_status write them: parsed back with
prometheus_client, checked against the certificate issued by the lab's CA, through failing and healed renewals."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from cryptography import x509
from labtools import acme_args, run_module
from prometheus_client.parser import text_string_to_metric_families
from test_renewal_runner import install_runner

pytestmark = [pytest.mark.lab, pytest.mark.integration]

NOWHERE = "127.0.0.9"  # loopback where nothing listens: the self-check (and the CA) cannot reach the edge
DOMAIN = "metrics.renew.test"


def parse(path: Path) -> Dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(path.read_text())}


def value(families: Dict[str, Any], name: str, **labels: str) -> Any:
    found = [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def not_after(pem_path: Path) -> float:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    when = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def test_runner_metrics_through_failed_and_healed_renewals(lab, tmp_path):
    lab.dns_set("a", DOMAIN, [lab.addr])
    common = acme_args(lab, tmp_path / "live", tmp_path / "state", [{"domain": DOMAIN}])
    issued = run_module("acme_http01_cert", common)
    assert issued.state == "CHANGED", issued.stdout
    metrics = tmp_path / "textfile"  # created by the runner
    config = dict(common, reload_command=["true"], check_command=["true"], metrics_dir=str(metrics), node="edge-m1")
    config_path = tmp_path / "renew.json"
    runner = install_runner(tmp_path / "lib")
    took = []  # each run's wall time, as this test saw it

    def run(**extra: Any) -> subprocess.CompletedProcess:
        config_path.write_text(json.dumps(dict(config, **extra)))
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(runner), "--config", str(config_path)], capture_output=True, text=True, timeout=300,
                              check=False)
        took.append(time.monotonic() - started)
        return done

    def read() -> Dict[str, Any]:
        assert sorted(p.name for p in metrics.iterdir()) == ["linkcert-domains.prom", "linkcert-run-timer.prom"], "temporary files left"
        for path in metrics.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
        found = parse(metrics / "linkcert-domains.prom")
        found.update(parse(metrics / "linkcert-run-timer.prom"))
        return found

    quiet = run()
    assert quiet.returncode == 0 and "0 renewed" in quiet.stdout, quiet.stdout + quiet.stderr
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o755
    found = read()
    state = json.loads((tmp_path / "state" / ("%s.json" % DOMAIN)).read_text())
    labels = {"domain": DOMAIN, "node": "edge-m1"}
    assert value(found, "linkcert_certificate_expiry_timestamp_seconds", **labels) == not_after(tmp_path / "live" / DOMAIN / "cert.pem")
    assert value(found, "linkcert_certificate_last_success_timestamp_seconds", **labels) == epoch(state["last_success"])
    assert value(found, "linkcert_domain_status", status="issued", **labels) == 1
    assert value(found, "linkcert_domain_status", status="pending", **labels) == 0
    assert value(found, "linkcert_certificate_consecutive_failures", **labels) == 0
    assert value(found, "linkcert_certificate_expiry_alert", **labels) == 0
    timer = {"job": "timer", "node": "edge-m1"}
    assert value(found, "linkcert_run_success", **timer) == 1
    assert 0 < value(found, "linkcert_run_duration_seconds", **timer) <= took[-1], "the run lasted longer than its process"
    assert value(found, "linkcert_run_certificates", action="none", **timer) == 1
    first_run_at = value(found, "linkcert_run_last_timestamp_seconds", **timer)
    # The first file, held open: a file replaced by a rename stays whole and unlinked; one rewritten in place changes.
    before = open(metrics / "linkcert-domains.prom", "rb")  # noqa: SIM115 (closed below)
    first = before.read()

    # The renewal cannot go ahead: the CA cannot be reached (nothing listens on port 1). Not a validation made to
    # fail: Pebble's PEBBLE_AUTHZREUSE=0 still reuses a valid authorization 1 time in 100 (it reuses when
    # rand.Intn(100) > 0 is false), and then a renewal with its DNS broken went through.
    try:
        for attempt in (1, 2):
            failed = run(force=True, acme_directory="https://127.0.0.1:1/dir", timeout=5)
            assert failed.returncode == 0, failed.stdout + failed.stderr  # the installed certificate is still valid and served
            assert "1 failed" in failed.stdout, failed.stdout
            found = read()
            assert value(found, "linkcert_certificate_consecutive_failures", **labels) == attempt
            assert value(found, "linkcert_run_success", **timer) == 0
            assert value(found, "linkcert_run_certificates", action="failed", **timer) == 1
            assert value(found, "linkcert_domain_status", status="issued", **labels) == 1, "a failed renewal keeps the certificate"
            assert value(found, "linkcert_certificate_last_success_timestamp_seconds", **labels) == epoch(state["last_success"])
        assert value(found, "linkcert_run_last_timestamp_seconds", **timer) > first_run_at
        before.seek(0)
        assert os.fstat(before.fileno()).st_nlink == 0 and before.read() == first, "the file was not replaced"
    finally:
        before.close()

    healed = run(force=True)
    assert healed.returncode == 0 and "1 renewed" in healed.stdout, healed.stdout + healed.stderr
    found = read()
    state = json.loads((tmp_path / "state" / ("%s.json" % DOMAIN)).read_text())
    assert value(found, "linkcert_certificate_consecutive_failures", **labels) == 0
    assert value(found, "linkcert_run_success", **timer) == 1 and value(found, "linkcert_run_certificates", action="renewed", **timer) == 1
    assert value(found, "linkcert_certificate_last_success_timestamp_seconds", **labels) == epoch(state["last_success"])
    assert value(found, "linkcert_certificate_expiry_timestamp_seconds", **labels) == not_after(tmp_path / "live" / DOMAIN / "cert.pem")


def test_domain_status_writes_metrics_without_reporting_a_change(tmp_path):
    state_root, metrics = tmp_path / "state", tmp_path / "textfile"
    statuses = [{"domain": "a.metrics.test", "ssl_status": "issued", "label": "SSL Issued", "reason": "issued", "message": "ok",
                 "action": "issued"},
                {"domain": "b.metrics.test", "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_not_ready",
                 "message": 'publish "x"\nnow', "remediation": "b.metrics.test. CNAME edge.example."},
                {"domain": "c.metrics.test", "ssl_status": "pending", "label": "SSL Pending", "reason": "acme_connection",
                 "message": "CA down", "action": "failed"}]
    args = {"state_root": str(state_root), "statuses": statuses, "metrics_dir": str(metrics), "metrics_job": "onboard",
            "metrics_node": "edge-m2", "run_duration": 42.5}

    checked = run_module("domain_status", args, check=True)
    assert checked.state == "CHANGED" and checked.result["metrics_files"] == [], checked.stdout
    assert not metrics.exists(), "check mode wrote metrics"

    first = run_module("domain_status", args)
    assert first.state == "CHANGED", first.stdout
    assert sorted(Path(p).name for p in first.result["metrics_files"]) == ["linkcert-domains.prom", "linkcert-run-onboard.prom"]
    domains = parse(metrics / "linkcert-domains.prom")
    run = parse(metrics / "linkcert-run-onboard.prom")
    onboard = {"job": "onboard", "node": "edge-m2"}
    assert value(run, "linkcert_run_duration_seconds", **onboard) == 42.5
    assert value(run, "linkcert_run_success", **onboard) == 0, "a certificate failed in this run"
    assert {s.labels["action"]: s.value for s in run["linkcert_run_certificates"].samples} == {"issued": 1, "renewed": 0, "failed": 1, "none": 1}
    assert value(domains, "linkcert_domain_status", domain="b.metrics.test", status="unknown", node="edge-m2") == 1
    assert value(domains, "linkcert_domain_info", domain="b.metrics.test", reason="dns_not_ready") == 1
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in metrics.iterdir()} == {"linkcert-domains.prom": 0o644, "linkcert-run-onboard.prom": 0o644}
    assert [r["consecutive_failures"] for r in first.result["domains"]] == [0, 0, 0]

    before = (metrics / "linkcert-run-onboard.prom").stat().st_mtime_ns
    again = run_module("domain_status", dict(args, run_duration=7.0))
    assert again.state == "SUCCESS" and again.result["updated"] == [], "rewriting the metrics is not a change"
    assert (metrics / "linkcert-run-onboard.prom").stat().st_mtime_ns >= before
    assert value(parse(metrics / "linkcert-run-onboard.prom"), "linkcert_run_duration_seconds", **onboard) == 7.0

    read_only = run_module("domain_status", {"state_root": str(state_root), "metrics_dir": str(metrics), "metrics_job": "renew"})
    assert read_only.state == "SUCCESS" and len(read_only.result["metrics_files"]) == 2
    assert value(parse(metrics / "linkcert-run-renew.prom"), "linkcert_run_duration_seconds", job="renew") is None

    disabled = run_module("domain_status", dict(args, metrics_dir=""))
    assert disabled.state == "SUCCESS" and disabled.result["metrics_files"] == []

    (tmp_path / "blocked").write_text("x")
    blocked = run_module("domain_status", dict(args, metrics_dir=str(tmp_path / "blocked" / "sub")))
    assert blocked.state == "SUCCESS" and blocked.result["metrics_files"] == [], blocked.stdout
    assert "metrics for node_exporter were not written" in blocked.stdout + blocked.stderr
