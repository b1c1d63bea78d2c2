"""The renewal runner the renewal role installs, run as its systemd service runs it, against a Pebble
issuing 60-second certificates: it renews what is due, and reloads (through its configured command)
only when a certificate changed."""

from __future__ import annotations

import datetime
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import labctl
import pytest
from labtools import REPO, acme_args, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration]

ADDR = "127.0.0.1"


@pytest.fixture(scope="module")
def short_lab(tmp_path_factory):
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    lab = labctl.Lab(dir=tmp_path_factory.mktemp("renewlab"), addr=ADDR, ports=ports, nginx=True, timeout=30.0, cert_validity=60,
                     pebble_env={"PEBBLE_AUTHZREUSE": "0"})
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def install_runner(lib: Path) -> Path:
    """Build the runner as the renewal role does: one executable zip with the collection's module_utils."""
    lib.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.spec_from_file_location("linkcert_zipapp", REPO / "plugins" / "lookup" / "zipapp.py")
    zipapp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zipapp)
    script = REPO / "roles" / "renewal" / "files" / "linkcert-renew.py"
    runner = lib / "linkcert-renew.pyz"
    runner.write_bytes(zipapp.pack(str(script)))
    assert zipapp.pack(str(script)) == runner.read_bytes()  # deterministic: an unchanged collection copies nothing
    return runner


def test_runner_renews_when_due_and_reloads_only_then(short_lab, tmp_path):
    for name in ("timer.renew.test", "never.renew.test"):
        short_lab.dns_set("a", name, [short_lab.addr])
    common = acme_args(short_lab, tmp_path / "live", tmp_path / "state", [{"domain": "timer.renew.test"}])
    issued = run_module("acme_http01_cert", common)
    assert issued.state == "CHANGED", issued.stdout
    first = issued.result["results"][0]

    marker = tmp_path / "reloaded"
    config = dict(common, certificates=[{"domain": "Timer.Renew.Test."}, {"domain": "never.renew.test"}],
                  reload_command=["touch", str(marker)], check_command=["true"])
    config_path = tmp_path / "renew.json"
    config_path.write_text(json.dumps(config))
    runner = install_runner(tmp_path / "lib")

    def run():
        return subprocess.run([sys.executable, str(runner), "--config", str(config_path)], capture_output=True, text=True, timeout=120, check=False)

    quiet = run()
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "0 renewed" in quiet.stdout and "0 CA request(s)" in quiet.stdout and not marker.exists()
    assert "never.renew.test" not in quiet.stdout, "a domain never issued is left to onboarding"

    due_at = datetime.datetime.fromisoformat(first["renew_after"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, due_at - time.time()) + 0.5)
    due = run()
    assert due.returncode == 0, due.stdout + due.stderr
    assert "1 renewed" in due.stdout and marker.exists()
    state = json.loads((tmp_path / "state" / "timer.renew.test.json").read_text())
    assert state["action"] == "renewed" and state["serial"] != first["serial"]


def test_units_pass_systemd_analyze(tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO / "roles" / "renewal" / "templates")), keep_trailing_newline=True)
    values = {"ansible_managed": "test", "renewal_lib_dir": "/usr/local/lib/linkcert", "renewal_config": "/etc/linkcert/renew.json",
              "renewal_on_calendar": "*-*-* 00,12:00:00", "renewal_randomized_delay": "3h"}
    for unit in ("linkcert-renew.service", "linkcert-renew.timer"):
        (tmp_path / unit).write_text(env.get_template(unit + ".j2").render(**values))
    verified = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "linkcert-renew.timer"), str(tmp_path / "linkcert-renew.service")],
                              capture_output=True, text=True, check=False)
    noise = [line for line in (verified.stdout + verified.stderr).splitlines() if "linkcert" in line]
    assert verified.returncode == 0 and not noise, verified.stdout + verified.stderr
    calendar = subprocess.run(["systemd-analyze", "calendar", values["renewal_on_calendar"]], capture_output=True, text=True, check=False)
    assert calendar.returncode == 0 and "Next elapse" in calendar.stdout


def test_runner_holds_drifted_domains_and_renews_them_once_dns_is_right(short_lab, tmp_path):
    """The timer's runner asks DNS again before renewing: a name moved away from the edge and a CAA that now forbids
    the CA are held (nothing ordered, pair kept, dns_drift / caa_drift recorded with the record to publish)."""
    edge, moved, forbidden, fine = "edge.drift.test", "moved.drift.test", "links.blocked.drift.test", "fine.drift.test"
    short_lab.dns_set("a", edge, [short_lab.addr])
    for name in (moved, forbidden, fine):
        short_lab.dns_set("cname", name, edge)
    certificates = [{"domain": name} for name in (moved, forbidden, fine)]
    common = acme_args(short_lab, tmp_path / "live", tmp_path / "state", certificates, renew_before=1)
    issued = run_module("acme_http01_cert", common)
    assert issued.state == "CHANGED", issued.stdout
    first = {r["domain"]: r for r in issued.result["results"]}
    pairs = {name: (tmp_path / "live" / name / "fullchain.pem").read_bytes() for name in first}

    short_lab.dns_set("cname", moved, "elsewhere.drift.test")
    short_lab.dns_set("caa", "blocked.drift.test", "issue sectigo.com")  # the parent: the name itself is a CNAME
    config_path = tmp_path / "renew.json"
    config_path.write_text(json.dumps(dict(common, force=True, reload_command=["true"], check_command=["true"],
                                           drift_check={"edge_cname": edge, "ca_identities": ["letsencrypt.org"]})))
    runner = install_runner(tmp_path / "lib")

    def run():
        return subprocess.run([sys.executable, str(runner), "--config", str(config_path)], capture_output=True, text=True, timeout=300, check=False)

    held = run()
    assert held.returncode == 1, held.stdout + held.stderr  # drifted domains are SSL Pending
    assert "1 renewed" in held.stdout, held.stdout
    states = {name: json.loads((tmp_path / "state" / ("%s.json" % name)).read_text()) for name in first}
    assert (states[moved]["ssl_status"], states[moved]["reason"]) == ("pending", "dns_drift")
    assert states[moved]["remediation"] == "%s. CNAME %s." % (moved, edge)
    assert (states[forbidden]["ssl_status"], states[forbidden]["reason"]) == ("pending", "caa_drift")
    assert 'CAA 0 issue "letsencrypt.org"' in states[forbidden]["remediation"]
    for name in (moved, forbidden):
        assert states[name]["serial"] == first[name]["serial"], "the held certificate left the record"
        assert (tmp_path / "live" / name / "fullchain.pem").read_bytes() == pairs[name], "a held certificate was replaced"
    assert states[fine]["action"] == "renewed" and states[fine]["serial"] != first[fine]["serial"]

    short_lab.dns_set("cname", moved, edge)
    short_lab.dns_clear("caa", "blocked.drift.test")
    healed = run()
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "3 renewed" in healed.stdout
    for name in (moved, forbidden):
        state = json.loads((tmp_path / "state" / ("%s.json" % name)).read_text())
        assert (state["action"], state["ssl_status"]) == ("renewed", "issued") and state["serial"] != first[name]["serial"]
