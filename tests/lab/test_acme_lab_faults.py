"""acme_http01_cert against a second Pebble tuned for hard cases: short-lived certificates
(renewal when due), half of all nonces rejected (badNonce storms), a blocklisted name, and
external account binding required."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import time

import labctl
import pytest
from labtools import BIN, REPO, acme_args, ansible_env, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration]

ADDR = "127.0.0.1"
# seconds: renewal is due when half of it is left. Long enough that the run that must find it not due yet does,
# even on two CPUs busy with the rest of the suite (an ansible run has taken up to 10 s there).
VALIDITY = 60
EAB_KID = "linkcert-lab"
# 32 bytes: HS256 needs at least that (RFC 7518 3.2); Pebble 2.6 refuses less, and so does the module.
EAB_HMAC = base64.urlsafe_b64encode(b"linkcert lab external account key").decode().rstrip("=")


@pytest.fixture(scope="module")
def hard_lab(tmp_path_factory):
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    lab = labctl.Lab(dir=tmp_path_factory.mktemp("hardlab"), addr=ADDR, ports=ports, nginx=True, timeout=30.0,
                     cert_validity=VALIDITY, eab={EAB_KID: EAB_HMAC}, domain_blocklist=["blocked.hard.test"],
                     pebble_env={"PEBBLE_WFE_NONCEREJECT": "50", "PEBBLE_AUTHZREUSE": "0"})
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def module_args(lab, tmp_path, certificates, **extra):
    return acme_args(lab, tmp_path / "live", tmp_path / "state", certificates, eab_kid=EAB_KID, eab_hmac_key=EAB_HMAC, **extra)


def test_renewal_when_due_under_nonce_storm(hard_lab, tmp_path):
    hard_lab.dns_set("a", "short.hard.test", [hard_lab.addr])
    args = module_args(hard_lab, tmp_path, [{"domain": "short.hard.test"}])
    first = run_module("acme_http01_cert", args)
    assert first.state == "CHANGED", first.stdout
    issued = first.result["results"][0]
    assert issued["action"] == "issued"
    renew_after = datetime.datetime.fromisoformat(issued["renew_after"].replace("Z", "+00:00"))
    not_after = datetime.datetime.fromisoformat(issued["not_after"].replace("Z", "+00:00"))
    not_before = datetime.datetime.fromisoformat(issued["not_before"].replace("Z", "+00:00"))
    assert abs((not_after - renew_after) - (not_after - not_before) / 2) < datetime.timedelta(seconds=1), "half the lifetime under 10 days"

    early = run_module("acme_http01_cert", args)
    assert early.result["changed"] is False and early.result["ca_requests"] == 0

    wait = (renew_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    time.sleep(max(0.0, wait) + 0.5)
    due = run_module("acme_http01_cert", args)
    assert due.state == "CHANGED", due.stdout
    renewed = due.result["results"][0]
    assert renewed["action"] == "renewed" and renewed["serial"] != issued["serial"]
    state = json.loads((tmp_path / "state" / "short.hard.test.json").read_text())
    assert state["serial"] == renewed["serial"] and state["action"] == "renewed"


def test_blocklisted_name_is_reported_not_fatal(hard_lab, tmp_path):
    hard_lab.dns_set("a", "blocked.hard.test", [hard_lab.addr])
    hard_lab.dns_set("a", "fine.hard.test", [hard_lab.addr])
    run = run_module("acme_http01_cert", module_args(hard_lab, tmp_path, [{"domain": "blocked.hard.test"}, {"domain": "fine.hard.test"}]))
    assert run.state == "CHANGED", run.stdout
    by = run.by("domain")
    blocked = by["blocked.hard.test"]
    assert (blocked["ssl_status"], blocked["action"], blocked["reason"]) == ("unknown", "failed", "acme_rejected_identifier"), blocked
    assert by["fine.hard.test"]["ssl_status"] == "issued"
    assert not (tmp_path / "live" / "blocked.hard.test").exists()


def test_two_runs_at_once_order_once(hard_lab, tmp_path):
    hard_lab.dns_set("a", "race.hard.test", [hard_lab.addr])
    args = module_args(hard_lab, tmp_path, [{"domain": "race.hard.test"}])
    cmd = [str(BIN / "ansible"), "localhost", "-m", "mailops.linkcert.acme_http01_cert", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    env = ansible_env({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _run in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    actions = sorted(json.loads(out.split("=> ", 1)[1])["results"][0]["action"] for out in outputs)
    assert actions == ["issued", "none"], outputs
    versions = list((tmp_path / "live" / ".versions" / "race.hard.test").iterdir())
    assert len(versions) == 1, "one order, one installed version"


def test_external_account_binding(hard_lab, tmp_path):
    hard_lab.dns_set("a", "eab.hard.test", [hard_lab.addr])
    args = module_args(hard_lab, tmp_path, [{"domain": "eab.hard.test"}])
    without = {k: v for k, v in args.items() if not k.startswith("eab_")}
    refused = run_module("acme_http01_cert", without)
    assert refused.result["results"][0]["reason"] == "eab_required"
    # A key of the right form that is not the CA's: the binding is refused, said as such (not as a failed challenge).
    wrong_key = base64.urlsafe_b64encode(b"not the key this CA gave for kid!").decode().rstrip("=")
    wrong = run_module("acme_http01_cert", dict(args, eab_hmac_key=wrong_key))
    result = wrong.result["results"][0]
    assert (result["reason"], result["ssl_status"], result["retry"]) == ("eab_refused", "pending", "fix"), result
    assert "linkcert_acme_eab_hmac_key" in result["remediation"] and EAB_KID in result["message"]
    # One cut short by a paste is named before anything is sent.
    short = run_module("acme_http01_cert", dict(args, eab_hmac_key=EAB_HMAC[:40]))
    assert short.state == "FAILED!" and "eab_hmac_key decodes to 30 bytes" in short.result["msg"], short.stdout
    bound = run_module("acme_http01_cert", args)
    assert bound.state == "CHANGED" and bound.result["results"][0]["action"] == "issued"
    for run in (bound, refused, wrong, short):
        assert EAB_HMAC not in run.stdout + run.stderr and EAB_HMAC[:40] not in run.stdout + run.stderr
