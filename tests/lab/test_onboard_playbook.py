"""`make demo`'s path end to end: lab/edgelab.py boots an edge (Debian 12, systemd, nginx) with Pebble
and DNS beside it, and playbooks/onboard_domain.yml, renew.yml (under ansible-runner, as AWX runs it)
and status.yml run on inventories/lab exactly as a user runs them."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import labctl
import pytest
from prometheus_client import parser
from labtools import BIN, REPO, ansible_env, run_playbook
import test_status_page_browser
from test_status_page_browser import artifacts_dir, counter, visible_keys

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.testhost]

PLAYBOOK = "playbooks/onboard_domain.yml"
INVENTORY = "inventories/lab"
EDGELAB = REPO / "lab" / "edgelab.py"
TESTHOST = REPO / "scripts" / "testhost.py"
GOOD = ("links.example.com", "em.example.com")


@pytest.fixture(scope="module")
def edge_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """The demo's lab on free ports in a directory of its own, with an edge named for this process."""
    lab_dir = tmp_path_factory.mktemp("edgelab")
    env = dict(os.environ, LINKCERT_LAB_DIR=str(lab_dir), LINKCERT_LAB_EDGE_HOST="pe-%d" % os.getpid(), PEBBLE_AUTHZREUSE="0")
    for var in ("ACME", "ACME_MGMT", "TLS", "DNS", "DNS_MGMT"):
        env["LINKCERT_LAB_%s_PORT" % var] = "auto"
    start = subprocess.run([sys.executable, str(EDGELAB), "start"], env=env, capture_output=True, text=True, check=False)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        info = json.loads((lab_dir / "lab.json").read_text())
        info["edge"] = json.loads((lab_dir / "edge.json").read_text())
        info["env"] = {"LINKCERT_LAB_DIR": str(lab_dir)}
        yield info
    finally:
        subprocess.run([sys.executable, str(EDGELAB), "stop"], env=env, check=False)
    assert not (lab_dir / "edge.json").exists()


@pytest.fixture(scope="module")
def pebble_root(edge_lab: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labctl.write_pebble_root(edge_lab, tmp_path_factory.mktemp("pebble") / "root.pem")


@pytest.fixture(scope="module")
def first_run(edge_lab: Dict[str, Any]):
    return run_playbook(PLAYBOOK, INVENTORY, env=edge_lab["env"])


def table(stdout: str) -> List[str]:
    """The status lines printed by the certificate role's report."""
    section = stdout.split("TASK [mailops.linkcert.certificate : Report every domain]", 1)[1].split("TASK [", 1)[0]
    return [line.strip() for line in section.splitlines() if "  SSL " in line]


def served(edge_lab: Dict[str, Any], pebble_root: Path, name: str) -> Dict[str, Any]:
    """The certificate the edge serves for NAME by SNI, verified against Pebble's root."""
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((edge_lab["edge"]["ansible_host"], 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


def on_edge(edge_lab: Dict[str, Any], command: str) -> str:
    proc = subprocess.run([sys.executable, str(TESTHOST), "exec", edge_lab["edge"]["linkcert_lab_edge_host"], "--", "sh", "-c", command],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


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


# Not shorter than the demo's 90-day lifetime: every run renews.
DUE = {"certificate_renew_before": 90}


def orders_so_far(edge_lab: Dict[str, Any]) -> int:
    """New-order requests Pebble has logged."""
    return (Path(edge_lab["env"]["LINKCERT_LAB_DIR"]) / "log" / "pebble.log").read_text().count("/order-plz")


def nginx_workers(edge_lab: Dict[str, Any]) -> str:
    """nginx's master pid and its workers' pids, once nginx is settled: a reload replaces the workers. Workers of an
    earlier reload finish their connections first ("shutting down"), and right after a reload they may not say so yet;
    so this waits (bounded) until no worker is shutting down and two looks a second apart agree."""
    look = ("m=$(systemctl show -p MainPID --value nginx); echo $m; "
            "ps -o pid=,args= --ppid $m | awk '{print $1, ($0 ~ /shutting down/) ? \"old\" : \"current\"}' | sort -n")
    previous = None
    for _attempt in range(30):
        seen = on_edge(edge_lab, look)
        if "old" not in seen and seen == previous:
            return seen
        previous = seen
        time.sleep(1)
    pytest.fail("nginx did not settle (workers of an earlier reload still shutting down):\n%s" % previous)
    return ""


def test_a_broken_nginx_config_on_the_edge_orders_nothing_and_keeps_serving(edge_lab, first_run, pebble_root):
    """A colleague's half-finished edit in conf.d: nginx -t fails. The renewal that comes due orders nothing, nginx
    is not reloaded, the working certificates stay served, and the play fails naming the file; fixed, the next run renews."""
    broken = "/etc/nginx/conf.d/customer-redirects.conf"
    pairs = "sha256sum /etc/linkcert/live/*/privkey.pem /etc/linkcert/live/*/fullchain.pem"
    before, workers = on_edge(edge_lab, pairs), nginx_workers(edge_lab)
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)

    on_edge(edge_lab, "printf 'linkcert_no_such_directive on;\\n' > %s" % broken)
    try:
        run = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        said = " ".join(run.stdout.split())
        assert run.rc != 0 and run.total("failed") == 1, run.stdout
        assert "cannot load its configuration, so nothing was ordered for links.example.com, em.example.com" in said, run.stdout
        assert 'unknown directive "linkcert_no_such_directive" in %s:1' % broken in said
        rows = {line.split()[0]: line for line in table(run.stdout)}
        for name in GOOD:
            assert "SSL Issued" in rows[name] and "renewal failed (server_config_broken), still served" in rows[name], rows[name]
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert state["reason"] == "server_config_broken" and state["ssl_status"] == "issued"
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name]
        assert orders_so_far(edge_lab) == orders, "a certificate nginx could not load was ordered"
        assert on_edge(edge_lab, pairs) == before and nginx_workers(edge_lab) == workers, "files changed or nginx was reloaded"
        assert on_edge(edge_lab, "systemctl is-active nginx").strip() == "active"
    finally:
        on_edge(edge_lab, "rm -f %s" % broken)

    fixed = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert fixed.rc == 0, fixed.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        now_served = served(edge_lab, pebble_root, name)["serialNumber"]
        assert state["action"] == "renewed" and now_served != serials[name] and int(now_served, 16) == int(state["serial"], 16)


def test_dns_drift_and_a_failing_caa_parent_hold_renewal_and_keep_serving(edge_lab, first_run, pebble_root):
    """Due certificates (renew_before 90 days): links.example.com's CNAME now points elsewhere (the customer moved it),
    and example.com, em.example.com's CAA parent, answers SERVFAIL. Nothing is ordered, both stay served; drift is
    SSL Pending with the record to publish, the failed lookup keeps SSL Issued. With DNS right again both renew."""
    lab = labctl.Lab.from_env(edge_lab)
    moved, caa_failing = GOOD
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)
    lab.dns_set("cname", moved, "elsewhere.example.org")
    lab.dns_set("servfail", "example.com", True)
    # DNS stays broken until the records are read: the edge's watch timer checks held domains too, and with DNS right
    # again it would (rightly) lift the holds before this test has looked at them.
    try:
        run = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        assert run.rc == 0, run.stdout
        rows = {line.split()[0]: line for line in table(run.stdout)}
        assert re.search(r"SSL Pending\s+dns_drift: publish links\.example\.com\. CNAME edge\.linkcert\.example\.", rows[moved]), rows[moved]
        assert re.search(r"SSL Issued\s+expires \S+; renewal held \(caa_dns_error\)", rows[caa_failing]), rows[caa_failing]
        assert orders_so_far(edge_lab) == orders, "an order went out for a held domain"
        for name, reason, status in ((moved, "dns_drift", "pending"), (caa_failing, "caa_dns_error", "issued")):
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert (state["reason"], state["ssl_status"]) == (reason, status), state
            assert int(state["serial"], 16) == int(serials[name], 16), "the record lost its certificate"
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name], "%s is no longer served" % name
        assert "SERVFAIL" in json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % caa_failing))["message"]
    finally:
        lab.dns_set("cname", moved, "edge.linkcert.example")
        lab.dns_set("servfail", "example.com", False)

    again = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert again.rc == 0, again.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        assert (state["action"], state["ssl_status"]) == ("renewed", "issued"), state
        assert int(served(edge_lab, pebble_root, name)["serialNumber"], 16) == int(state["serial"], 16) != int(serials[name], 16)


def test_renewal_run_holds_drift_and_status_shows_it_until_dns_is_right(edge_lab, first_run, pebble_root, tmp_path):
    """renew.yml (as AWX runs it) when the customer moved links.example.com's CNAME away and published a CAA for
    em.example.com that forbids our CA: nothing is ordered for them, both are SSL Pending with the record to fix and
    keep serving their certificates; status.yml and its page say so; with DNS right again the next run renews."""
    lab = labctl.Lab.from_env(edge_lab)
    moved, forbidden = GOOD
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)
    lab.dns_set("cname", moved, "elsewhere.example.org")
    lab.dns_set("caa", forbidden, "issue sectigo.com")
    try:
        renew = run_playbook("playbooks/renew.yml", INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        assert renew.rc == 0, renew.stdout
        assert orders_so_far(edge_lab) == orders, "an order went out for a drifted domain"
        for name, reason in ((moved, "dns_drift"), (forbidden, "caa_drift")):
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert (state["ssl_status"], state["reason"]) == ("pending", reason), state
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name], "%s is no longer served" % name
        run, rows, page = run_status(edge_lab, tmp_path)
        assert run.rc == 0, run.stdout
        assert (rows[moved]["reason"], rows[moved]["remediation"]) == ("dns_drift", "links.example.com. CNAME edge.linkcert.example.")
        assert rows[forbidden]["reason"] == "caa_drift" and 'CAA 0 issue "letsencrypt.org"' in rows[forbidden]["remediation"]
        assert all(rows[name]["label"] == "SSL Pending" and rows[name]["alerts"] for name in GOOD)
        assert "dns_drift" in page and "caa_drift" in page
        failing, _rows, _page = run_status(edge_lab, tmp_path, linkcert_fail_on="alert")
        said = " ".join(failing.stdout.split())
        assert failing.rc != 0 and re.search(r"2 domain\(s\) with alerts: (links|em)\.example\.com, (em|links)\.example\.com", said), \
            said[said.find("Fail on alerts"):][:600]
    finally:
        lab.dns_set("cname", moved, "edge.linkcert.example")
        lab.dns_clear("caa", forbidden)

    healed = run_playbook("playbooks/renew.yml", INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert healed.rc == 0, healed.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        assert (state["action"], state["ssl_status"]) == ("renewed", "issued")
        assert int(served(edge_lab, pebble_root, name)["serialNumber"], 16) == int(state["serial"], 16) != int(serials[name], 16)


def test_status_reports_a_certificate_renewed_on_disk_but_not_served(edge_lab, first_run, pebble_root, tmp_path):
    """The renewal runner renews on disk with --no-reload (as if the reload had been forgotten): status.yml connects with
    SNI, sees the old serial served and says served_mismatch with the fix; after a reload it is served_ok again."""
    old = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    on_edge(edge_lab, "python3 -c 'import json; c = json.load(open(\"/etc/linkcert/renew.json\")); c[\"force\"] = True; "
                      "json.dump(c, open(\"/root/renew-forced.json\", \"w\"))'")
    on_edge(edge_lab, "python3 /usr/local/lib/linkcert/linkcert-renew.pyz --config /root/renew-forced.json --no-reload; rm /root/renew-forced.json")
    run, rows, page = run_status(edge_lab, tmp_path)
    assert run.rc == 0, run.stdout
    for name in GOOD:
        row = rows[name]
        assert (row["reason"], row["label"]) == ("served_mismatch", "SSL Issued"), row
        assert int(row["served_serial"], 16) == int(old[name], 16) != int(row["serial"], 16)
        assert "nginx has not been reloaded" in row["message"] and "systemctl reload nginx" in row["remediation"]
    assert "served_mismatch" in page
    on_edge(edge_lab, "nginx -t && systemctl reload nginx")
    run, rows, _page = run_status(edge_lab, tmp_path)
    assert run.rc == 0
    for name in GOOD:
        assert rows[name]["alerts"] == [] and int(rows[name]["served_serial"], 16) == int(rows[name]["serial"], 16)


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


def run_status(edge_lab: Dict[str, Any], tmp_path: Path, **extra: Any):
    """status.yml into TMP_PATH; returns the run, the rows by domain and the page's text."""
    out, page = tmp_path / "status.json", tmp_path / "status.html"
    run = run_playbook("playbooks/status.yml", INVENTORY, extra_vars=dict({"linkcert_status_file": str(out), "linkcert_status_page": str(page)},
                                                                          **extra), env=edge_lab["env"])
    rows = {d["domain"]: d for d in json.loads(out.read_text())["edges"]["lab-edge"]} if out.exists() else {}
    return run, rows, page.read_text() if page.exists() else ""


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
