"""`make demo`'s path end to end: lab/edgelab.py boots an edge (Debian 12, systemd, nginx) with Pebble
and DNS beside it, and playbooks/onboard_domain.yml, renew.yml (under ansible-runner, as AWX runs it)
and status.yml run on inventories/lab exactly as a user runs them. Renewals on such an edge (due, held by DNS
drift or a broken nginx) are test_onboard_renewals.py's, on an edge of its own."""

from __future__ import annotations

import datetime
import json
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any, Dict, List

import pytest
from prometheus_client import parser
from labtools import BIN, REPO, ansible_env, run_playbook
import onboard_edge
from onboard_edge import GOOD, INVENTORY, PLAYBOOK, on_edge, run_status, served, table
import test_status_page_browser
from test_status_page_browser import artifacts_dir, counter, visible_keys

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.testhost]

# The edge of this file (onboard_edge.py's fixtures, module-scoped: started for this file, stopped after it).
edge_lab, pebble_root, first_run = onboard_edge.edge_lab, onboard_edge.pebble_root, onboard_edge.first_run


def test_onboarding_issues_serves_and_reports_each_domain(edge_lab, first_run, pebble_root):
    assert first_run.rc == 0, first_run.stdout + first_run.stderr
    assert first_run.total("failed") == 0 and first_run.total("changed") > 0
    rows = {line.split()[0]: line for line in table(first_run.stdout)}
    assert sorted(rows) == sorted(["links.example.com", "links.example.net", "click.example.org", "em.example.com", "em.example.net"])
    expiry = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90)).date()
    for name in GOOD:
        match = re.search(r"SSL Issued\s+expires (\d{4}-\d\d-\d\d)", rows[name])
        assert match, rows[name]
        assert abs((datetime.date.fromisoformat(match.group(1)) - expiry).days) <= 1
        cert = served(edge_lab, pebble_root, name)
        assert ("DNS", name) in cert["subjectAltName"]
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        assert state["ssl_status"] == "issued" and state["label"] == "SSL Issued"
        assert int(state["serial"], 16) == int(cert["serialNumber"], 16)
        assert on_edge(edge_lab, "stat -L -c '%a %U' " + state["privkey"]).split() == ["600", "root"]
    assert re.search(r'SSL Unknown\s+caa_blocked: publish example\.net\. CAA 0 issue "letsencrypt\.org"', rows["links.example.net"])
    assert re.search(r"SSL Unknown\s+dns_not_ready: publish click\.example\.org\. CNAME edge\.linkcert\.example\.", rows["click.example.org"])
    assert "SSL Unknown" in rows["em.example.net"] and "publish em.example.net. A %s" % edge_lab["edge"]["ansible_host"] in rows["em.example.net"]
    # The domains the customer must fix are on record with their remediation, and have no certificate.
    state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/links.example.net.json"))
    assert state["ssl_status"] == "unknown" and state["reason"] == "caa_blocked" and not state.get("serial")
    assert on_edge(edge_lab, "ls /etc/linkcert/live").split() == sorted(GOOD)
    # The renewal timer is installed and waiting.
    assert on_edge(edge_lab, "systemctl is-active linkcert-renew.timer").strip() == "active"


def without_watch(lines: List[str]) -> List[str]:
    """The status lines without the pending watcher's next check, which every run that checks a domain moves on."""
    return [re.sub(r"; next check \S+ \S+ UTC \(\d+ checks? since \S+ \S+ UTC\)", "", line) for line in lines]


def test_second_run_and_check_mode_change_nothing(edge_lab, first_run):
    lines = table(first_run.stdout)
    assert len([line for line in lines if "; next check " in line]) == 3, "the three domains not issued are watched"
    second = run_playbook(PLAYBOOK, INVENTORY, env=edge_lab["env"])
    assert second.rc == 0 and second.total("changed") == 0, second.stdout
    assert without_watch(table(second.stdout)) == without_watch(lines)
    check = run_playbook(PLAYBOOK, INVENTORY, env=edge_lab["env"], check=True)
    assert check.rc == 0 and check.total("changed") == 0, check.stdout
    assert without_watch(table(check.stdout)) == without_watch(lines)


def test_sending_domains_follow_the_traffic_contract_too(edge_lab, first_run, pebble_root):
    """em.example.com (a sending domain with the edge's address) is issued: redirected and served its certificate.
    em.example.net (its DNS not ready) is answered over plain HTTP, never redirected, and refused on 443 with an alert.
    The demo sets no tracking upstream, so the edge answers itself where it would proxy."""
    addr = edge_lab["edge"]["ansible_host"]

    def http(host: str) -> Any:
        request = urllib.request.Request("http://%s/c/123?u=1" % addr, headers={"Host": host})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers.get("Location"), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Location"), ""

    assert http("em.example.com")[:2] == (301, "https://em.example.com/c/123?u=1")
    assert ("DNS", "em.example.com") in served(edge_lab, pebble_root, "em.example.com")["subjectAltName"]
    assert http("em.example.net") == (200, None, "linkcert edge: em.example.net\n")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((addr, 443), timeout=10) as raw:
        with pytest.raises(ssl.SSLError, match="(?i)alert|unrecognized"):
            context.wrap_socket(raw, server_hostname="em.example.net")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None


def test_verify_now_handles_one_domain_and_keeps_the_others_served(edge_lab, first_run, pebble_root):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"domain": "Links.Example.NET."}, env=edge_lab["env"])
    assert run.rc == 0, run.stdout
    lines = table(run.stdout)
    assert len(lines) == 1 and lines[0].startswith("links.example.net") and "caa_blocked" in lines[0]
    assert run.total("changed") == 0
    for name in GOOD:
        assert ("DNS", name) in served(edge_lab, pebble_root, name)["subjectAltName"]


@pytest.mark.parametrize("domain, message", [
    ("links.example.com; rm -rf /", "-e domain 'links.example.com; rm -rf /' contains the character ';'"),
    ("../../etc/passwd", "-e domain '../../etc/passwd' contains the character '/'"),
    ("links.example.org", "-e domain links.example.org is not in linkcert_domains"),
])
def test_a_bad_or_unknown_domain_stops_before_anything_runs(edge_lab, first_run, domain, message):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"domain": domain}, env=edge_lab["env"])
    assert run.rc != 0
    assert message in " ".join(run.stdout.split()), run.stdout
    assert "TASK [mailops.linkcert.challenge_webroot" not in run.stdout
    assert run.total("changed") == 0


def test_fail_on_unknown_fails_after_reporting(edge_lab, first_run):
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"linkcert_fail_on": "unknown"}, env=edge_lab["env"])
    assert run.rc != 0 and run.total("failed") == 1
    assert len(table(run.stdout)) == 5
    assert "Domains not ready: links.example.net, click.example.org, em.example.net" in run.stdout


CONFIG_FILES = "/etc/nginx/conf.d/linkcert-challenge.conf /etc/nginx/conf.d/linkcert-sites.conf " \
    "/etc/systemd/system/linkcert-renew.service /etc/systemd/system/linkcert-renew.timer /etc/linkcert/renew.json"


def test_a_bad_timer_schedule_leaves_the_installed_units_and_timer_alone(edge_lab, first_run):
    before = on_edge(edge_lab, "sha256sum %s; stat -c '%%n %%a %%U' %s" % (CONFIG_FILES, CONFIG_FILES))
    run = run_playbook(PLAYBOOK, INVENTORY, extra_vars={"renewal_on_calendar": "every other tuesday"}, env=edge_lab["env"])
    assert run.rc != 0 and run.total("failed") == 1
    said = " ".join(run.stdout.split())
    assert "rejected the new files (exit 1), so the previous ones are back in place" in said, run.stdout
    assert "Failed to parse calendar specification" in said
    assert on_edge(edge_lab, "sha256sum %s; stat -c '%%n %%a %%U' %s" % (CONFIG_FILES, CONFIG_FILES)) == before
    assert on_edge(edge_lab, "systemctl is-active linkcert-renew.timer").strip() == "active"


def test_nginx_rejecting_new_files_gets_the_previous_ones_back_and_keeps_serving(edge_lab, first_run, pebble_root):
    """edge_files on the real edge: a directive nginx refuses, in a changed file and a new one."""
    before = on_edge(edge_lab, "sha256sum /etc/nginx/conf.d/*; stat -c '%n %a %U' /etc/nginx/conf.d/*")
    serial = served(edge_lab, pebble_root, GOOD[0])["serialNumber"]
    args = {"files": [{"path": "/etc/nginx/conf.d/linkcert-challenge.conf", "content": "server { listen 80; bogus_directive on; }\n"},
                      {"path": "/etc/nginx/conf.d/zz-new.conf", "content": "# new\n", "mode": "0644"}],
            "validate": ["nginx", "-t"]}
    proc = subprocess.run([str(BIN / "ansible"), "linkcert_edges", "-i", str(REPO / INVENTORY), "-m", "mailops.linkcert.edge_files",
                           "-a", json.dumps(args)], env=ansible_env(edge_lab["env"]), capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)
    said = " ".join(proc.stdout.split())
    assert proc.returncode != 0, proc.stdout
    assert 'unknown directive "bogus_directive"' in said and "restored: true" in said and "reason: validate_failed" in said
    assert on_edge(edge_lab, "sha256sum /etc/nginx/conf.d/*; stat -c '%n %a %U' /etc/nginx/conf.d/*") == before
    on_edge(edge_lab, "nginx -t 2>&1 && systemctl reload nginx")
    assert served(edge_lab, pebble_root, GOOD[0])["serialNumber"] == serial


def test_metrics_for_node_exporter_are_on_the_edge(edge_lab, first_run):
    """The onboarding run wrote node_exporter textfile metrics; Prometheus' own parser reads them back."""
    text = on_edge(edge_lab, "cat /var/lib/prometheus/node-exporter/linkcert-domains.prom")
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        labels = (("domain", name), ("node", "lab-edge"))
        expiry = datetime.datetime.fromisoformat(state["not_after"].replace("Z", "+00:00")).timestamp()
        assert samples[("linkcert_certificate_expiry_timestamp_seconds", labels)] == expiry
        assert samples[("linkcert_domain_status", labels + (("status", state["ssl_status"]),))] == 1
        assert samples[("linkcert_certificate_consecutive_failures", labels)] == 0
    assert samples[("linkcert_domain_status", (("domain", "links.example.net"), ("node", "lab-edge"), ("status", "unknown")))] == 1
    run = {f.name: f for f in parser.text_string_to_metric_families(on_edge(edge_lab, "cat /var/lib/prometheus/node-exporter/linkcert-run-onboard.prom"))}
    assert [s.value for s in run["linkcert_run_success"].samples] == [1.0]
    assert on_edge(edge_lab, "stat -c '%a %U' /var/lib/prometheus/node-exporter/linkcert-domains.prom").split() == ["644", "root"]


def secrets_on_edge(edge_lab: Dict[str, Any]) -> List[str]:
    """Every base64 line of every private key on the edge (certificate keys and the ACME account key)."""
    pems = on_edge(edge_lab, "cat /etc/linkcert/live/*/privkey.pem /var/lib/linkcert/state/account.key")
    lines = [line for line in pems.splitlines() if line and not line.startswith("-----")]
    assert len(lines) >= 3 * (len(GOOD) + 1), "fewer key lines than keys"
    return lines


def test_no_private_key_in_any_output_or_log(edge_lab, first_run):
    """The first run, a -vvv run (module arguments and results in full) and the renewal service's journal."""
    loud = run_playbook(PLAYBOOK, INVENTORY, env=edge_lab["env"], verbosity=3)
    assert loud.rc == 0, loud.stdout
    # Control: the verbose run prints every module's returned values (the ACME task's ca_requests among them).
    assert "ca_requests" in loud.stdout and len(loud.stdout) > 3 * len(first_run.stdout), "not a verbose run"
    on_edge(edge_lab, "systemctl start linkcert-renew.service")
    journal = on_edge(edge_lab, "journalctl -u linkcert-renew.service --no-pager -o cat")
    assert "linkcert-renew:" in journal, journal
    outputs = {"first run": first_run.stdout + first_run.stderr, "-vvv run": loud.stdout + loud.stderr, "journal": journal}
    for line in secrets_on_edge(edge_lab):
        for where, text in outputs.items():
            assert line not in text, "a private key line is in the %s" % where


def test_renew_under_ansible_runner_hands_awx_the_summary(edge_lab, first_run, tmp_path):
    """renew.yml as AWX runs it: ansible-runner with a private data dir; the summary is in the artifacts."""
    private = tmp_path / "runner"
    (private / "env").mkdir(parents=True)
    (private / "project").symlink_to(REPO)
    env = ansible_env(edge_lab["env"])
    (private / "env" / "envvars").write_text(json.dumps({key: env[key] for key in (
        "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_HOME", "LINKCERT_LAB_DIR", "ANSIBLE_NOCOLOR")}))
    proc = subprocess.run([str(BIN / "ansible-runner"), "run", str(private), "-p", "playbooks/renew.yml",
                           "--inventory", str(REPO / INVENTORY), "--ident", "renew-1"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    artifacts = private / "artifacts" / "renew-1"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (artifacts / "status").read_text() == "successful"
    assert (artifacts / "rc").read_text() == "0"
    events = [json.loads(p.read_text()) for p in sorted((artifacts / "job_events").glob("*.json"))]
    stats = [e for e in events if e.get("event") == "playbook_on_stats"]
    assert len(stats) == 1
    summary = stats[0]["event_data"]["artifact_data"]["linkcert_renewal"]["lab-edge"]
    assert sorted(summary["issued"]) == sorted(GOOD)
    assert sorted(summary["unknown"]) == ["click.example.org", "em.example.net", "links.example.net"]
    assert summary["renewed"] == [] and summary["failed"] == [] and summary["pending"] == []
    # Nothing was due: the unattended run changed nothing on the edge.
    assert stats[0]["event_data"]["changed"] == {}
    # AWX keeps every job event: no private key may be in them.
    stored = "".join(p.read_text(errors="replace") for p in artifacts.rglob("*") if p.is_file())
    for line in secrets_on_edge(edge_lab):
        assert line not in stored, "a private key line is in the runner's artifacts"


def test_status_playbook_writes_every_domain_with_its_next_renewal(edge_lab, first_run, tmp_path):
    run, domains, page = run_status(edge_lab, tmp_path)
    assert run.rc == 0, run.stdout
    assert len(domains) == 5
    for name in GOOD:
        assert domains[name]["label"] == "SSL Issued" and domains[name]["not_after"] and domains[name]["renew_after"]
        assert domains[name]["not_after"] > domains[name]["renew_after"]
        assert domains[name]["alerts"] == [] and domains[name]["node"] == "lab-edge"
        assert int(domains[name]["served_serial"], 16) == int(domains[name]["serial"], 16), "the served check did not run"
    for name in domains:
        assert name in page
    assert "SSL Unknown" in page and "caa_blocked" in page
    assert domains["links.example.net"]["reason"] == "caa_blocked"
    assert domains["links.example.net"]["remediation"] == 'example.net. CAA 0 issue "letsencrypt.org"'


# Debian's chromium driven by Selenium: the status page browser test's fixture, shared.
browser = test_status_page_browser.browser


def test_the_status_page_after_onboarding_opens_clean_in_a_browser(edge_lab, first_run, tmp_path, browser):  # pylint: disable=redefined-outer-name
    """What a new user opens after `make demo`: status.yml's page, in Debian's chromium."""
    run, rows, _page = run_status(edge_lab, tmp_path)
    assert run.rc == 0, run.stdout
    browser.set_window_size(1280, 900)
    browser.get_log("browser")
    browser.get((tmp_path / "status.html").as_uri())
    assert [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []
    assert sorted(visible_keys(browser)) == sorted((name, "lab-edge") for name in rows)
    assert counter(browser) == "%d of %d domains" % (len(rows), len(rows))
    text = browser.find_element("id", "rows").text
    assert "SSL Issued" in text and "SSL Unknown" in text and 'example.net. CAA 0 issue "letsencrypt.org"' in text
    browser.save_screenshot(str(artifacts_dir() / "status-page-demo.png"))
