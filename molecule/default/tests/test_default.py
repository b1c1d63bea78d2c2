"""Testinfra checks of the converged edge: a real Debian 12 host (13 in the trixie scenario) with systemd as PID 1."""

import json
import os
import posixpath
import re
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import http_get, https_get, tls_refused, wait_served, wait_until

STATE = "/var/lib/linkcert/state"
LIVE = "/etc/linkcert/live"


def state(host, domain):
    return json.loads(host.file("%s/%s.json" % (STATE, domain)).content_string)


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")


def test_nginx_accepts_the_written_configuration_without_a_warning(host):
    """nginx -t says its two lines and nothing else: no deprecated ``listen ... http2`` on nginx >= 1.25.1 (trixie's
    1.26), no duplicate or conflicting server name, no ignored directive."""
    check = host.run("nginx -t")
    assert check.rc == 0, check.stderr
    lines = [line for line in check.stderr.splitlines() if line.strip()]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "the configuration file /etc/nginx/nginx.conf syntax is ok", "configuration file /etc/nginx/nginx.conf test is successful"], lines


def test_https_serves_the_issued_certificate_by_sni(host, edge_addr, pebble_root):
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((edge_addr, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="links.example.com") as tls:
            served = tls.getpeercert()
            version = tls.version()
    assert version in ("TLSv1.2", "TLSv1.3")
    recorded = state(host, "links.example.com")
    assert recorded["ssl_status"] == "issued" and recorded["label"] == "SSL Issued"
    assert int(served["serialNumber"], 16) == int(recorded["serial"], 16)


def _handshake(edge_addr, version):
    """A client that offers exactly ``version`` (security level 0, so the client itself allows old TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    with socket.create_connection((edge_addr, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="links.example.com") as tls:
            return tls.version()


def test_old_tls_is_refused(host, edge_addr):
    assert _handshake(edge_addr, ssl.TLSVersion.TLSv1_2) == "TLSv1.2", "the same client does get TLS 1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(edge_addr, old)


def test_private_key_is_0600_root(host):
    key = host.file("%s/links.example.com/privkey.pem" % LIVE)
    assert key.mode == 0o600 and key.user == "root"


def test_challenge_location_serves_tokens_only(host, edge_addr):
    def status(path, host_header="links.example.com"):
        request = urllib.request.Request("http://%s%s" % (edge_addr, path), headers={"Host": host_header})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers.get("Location")
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Location")

    host.run("install -m 0644 /dev/null /var/lib/linkcert/webroot/.well-known/acme-challenge/tokenAbc_123-x")
    assert status("/.well-known/acme-challenge/tokenAbc_123-x")[0] == 200
    assert status("/.well-known/acme-challenge/")[0] == 404
    assert status("/.well-known/acme-challenge/../../../etc/passwd")[0] in (400, 404)
    assert status("/other")[0] == 301 and status("/other")[1] == "https://links.example.com/other"
    host.run("rm -f /var/lib/linkcert/webroot/.well-known/acme-challenge/tokenAbc_123-x")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def test_renewal_timer_is_active_with_a_next_elapse(host):
    shown = host.run("systemctl show linkcert-renew.timer -p ActiveState -p NextElapseUSecRealtime -p UnitFileState").stdout
    values = dict(line.split("=", 1) for line in shown.strip().splitlines())
    assert values["ActiveState"] == "active" and values["UnitFileState"] == "enabled"
    assert values["NextElapseUSecRealtime"].strip() not in ("", "0", "n/a")


def test_renewal_service_runs_by_hand_and_status_stays_issued(host):
    before = state(host, "links.example.com")
    run = host.run("systemctl start linkcert-renew.service")
    assert run.rc == 0, run.stderr
    journal = host.run("journalctl -u linkcert-renew.service --no-pager -o cat").stdout
    assert "links.example.com  SSL Issued" in journal
    after = state(host, "links.example.com")
    assert after["ssl_status"] == "issued" and after["serial"] == before["serial"]


@pytest.mark.parametrize("domain,reason,remediation", [
    ("links.example.net", "caa_blocked", 'example.net. CAA 0 issue "letsencrypt.org"'),
    ("click.example.org", "dns_not_ready", "click.example.org. CNAME edge.linkcert.example."),
])
def test_domains_the_customer_must_fix_are_unknown_with_the_fix(host, domain, reason, remediation):
    recorded = state(host, domain)
    assert (recorded["ssl_status"], recorded["label"], recorded["reason"]) == ("unknown", "SSL Unknown", reason)
    assert recorded["remediation"] == remediation
    assert not host.file("%s/%s" % (LIVE, domain)).exists


# ------------------------------------------------------------------ what the nginx workers can reach
# Every check runs as the user nginx's workers run as (runuser), and every refusal must say
# "Permission denied" about a path that exists (checked as root first), so none passes vacuously.

RENEW_CONFIG = "/etc/linkcert/renew.json"
CHALLENGE_CONF = "/etc/nginx/conf.d/linkcert-challenge.conf"
PROBE = ".linkcert-worker-probe"


@pytest.fixture(scope="module")
def worker(host):
    """The nginx workers' user: nginx's ``user`` directive (nginx -T), which the running workers must match."""
    config = host.run("nginx -T")
    assert config.rc == 0, config.stderr
    found = re.search(r"^\s*user\s+([^\s;]+)", config.stdout, re.M)
    assert found, "nginx's configuration sets no user"
    user = found.group(1)
    assert host.user(user).exists and host.user(user).uid != 0
    return user


@pytest.fixture(scope="module")
def layout(host):
    """The edge's roots as the renewal runner uses them, and every private key found under them (as root)."""
    config = json.loads(host.file(RENEW_CONFIG).content_string)
    roots = {name: config[name] for name in ("cert_root", "state_root", "webroot")}
    # Any file holding a private key, whatever its name: certificate keys of every version, the account key.
    found = host.run("grep -rlZ -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' -- %s %s", roots["cert_root"], roots["state_root"])
    assert found.rc == 0, found.stderr
    keys = sorted(path for path in found.stdout.split("\0") if path)
    nginx_keys = re.findall(r"^\s*ssl_certificate_key\s+([^\s;]+);", host.run("nginx -T").stdout, re.M)
    return dict(roots, keys=keys, nginx_keys=nginx_keys, account_key=posixpath.join(roots["state_root"], "account.key"),
                secrets=[RENEW_CONFIG])


def as_worker(host, worker, command, *args):
    return host.run("runuser -u %s -- " % worker + command, *args)


def assert_denied(result, what):
    assert result.rc != 0 and "Permission denied" in result.stderr, (what, result.rc, result.stdout, result.stderr)
    assert "-----BEGIN" not in result.stdout, what


def directories_under(host, root):
    found = host.run("find %s -type d -print0", root)
    assert found.rc == 0, found.stderr
    return sorted(path for path in found.stdout.split("\0") if path)


def test_nginx_workers_run_as_the_unprivileged_user_of_nginx_conf(host, worker):
    uid = host.user(worker).uid
    processes = host.run("ps -C nginx -o uid=,args=").stdout.splitlines()
    workers = [line.split(None, 1) for line in processes if "worker process" in line]
    masters = [line.split(None, 1) for line in processes if "master process" in line]
    assert workers and all(int(entry[0]) == uid for entry in workers), processes
    # Only the master reads the keys (as root, at start and on reload); it hands the workers nothing else.
    assert masters and all(int(entry[0]) == 0 for entry in masters), processes
    assert as_worker(host, worker, "id -un").stdout.strip() == worker, "runuser runs the checks as the worker"


def test_every_private_key_is_0600_root_root_below_no_world_writable_directory(host, layout):
    live_key = posixpath.join(layout["cert_root"], "links.example.com", "privkey.pem")
    resolved = host.run("readlink -e %s", live_key).stdout.strip()
    assert resolved in layout["keys"] and layout["account_key"] in layout["keys"], layout["keys"]
    # nginx serves no key from anywhere else
    assert layout["nginx_keys"] and all(host.run("readlink -e %s", key).stdout.strip() in layout["keys"]
                                        for key in layout["nginx_keys"]), layout["nginx_keys"]
    for key in layout["keys"] + [live_key]:
        found = host.file(key)
        assert found.exists and found.mode == 0o600 and (found.user, found.group) == ("root", "root"), key
    for key in layout["keys"]:  # real paths: the live symlink's target directory is on them
        path = posixpath.dirname(key)
        while True:  # every directory from the key's up to /
            directory = host.file(path)
            assert directory.is_directory and not directory.mode & 0o002 and directory.user == "root", (key, path, oct(directory.mode))
            if path == "/":
                break
            path = posixpath.dirname(path)


def test_worker_cannot_read_a_private_key_or_a_secret(host, worker, layout):
    live_key = posixpath.join(layout["cert_root"], "links.example.com", "privkey.pem")
    for path in layout["keys"] + [live_key] + layout["secrets"]:
        assert host.run("head -c 1 %s", path).rc == 0, "%s exists and root reads it" % path
        assert_denied(as_worker(host, worker, "cat %s", path), path)


def test_worker_cannot_list_a_key_directory_nor_the_state_root(host, worker, layout):
    state_root = layout["state_root"]
    # each key's directory, the live link nginx names it by, everything below .versions, and the state root's tree
    directories = {posixpath.dirname(key) for key in layout["keys"]} | {posixpath.join(layout["cert_root"], "links.example.com")}
    directories |= set(directories_under(host, posixpath.join(layout["cert_root"], ".versions")))
    directories |= set(directories_under(host, state_root))
    assert state_root in directories and layout["cert_root"] not in directories
    for path in sorted(directories):
        listed = host.run("ls -A %s", path)
        assert listed.rc == 0 and listed.stdout.strip(), "%s exists and root lists something in it" % path
        assert_denied(as_worker(host, worker, "ls -A %s", path), path)
    # nor read a state file by its (guessable) name: they name the key paths
    state_file = posixpath.join(state_root, "links.example.com.json")
    assert host.file(state_file).is_file
    assert_denied(as_worker(host, worker, "cat %s", state_file), state_file)


def test_worker_cannot_write_under_the_cert_root_state_root_or_webroot(host, worker, layout):
    for root in (layout["cert_root"], layout["state_root"], layout["webroot"]):
        directories = directories_under(host, root)
        assert root in directories
        for path in [posixpath.dirname(root)] + directories:
            probe = posixpath.join(path, PROBE)
            assert_denied(as_worker(host, worker, "touch %s", probe), probe)
            assert not host.file(probe).exists, probe
        files = host.run("find %s ! -type d -print0", root).stdout.split("\0")
        for path in (path for path in files if path):
            assert_denied(as_worker(host, worker, "sh -c ': >> \"$1\"' append %s", path), path)
    # the live links cannot be pointed elsewhere either
    live = posixpath.join(layout["cert_root"], "links.example.com")
    assert host.file(live).is_symlink
    assert_denied(as_worker(host, worker, "mv -f %s %s", live, live + ".moved"), live)
    assert host.file(live).is_symlink


def test_worker_reads_exactly_what_the_challenge_location_serves(host, worker, layout, edge_addr):
    served = host.file(CHALLENGE_CONF).content_string
    if "try_files" not in served:
        # Stateless answers (a fleet): nginx returns TOKEN.THUMBPRINT itself and reads no file.
        assert 'return 200 "$linkcert_token.' in served
        return
    assert re.search(r"^\s*root\s+%s;" % re.escape(layout["webroot"]), served, re.M), served
    tokens = posixpath.join(layout["webroot"], ".well-known", "acme-challenge")
    token = posixpath.join(tokens, "tokenWorker_read-1")
    # as the ACME module writes a token: root-owned, 0644, below root-owned 0755 directories
    assert host.run("printf %%s tokenWorker_read-1.thumb > %s && chmod 0644 %s", token, token).rc == 0
    try:
        read = as_worker(host, worker, "cat %s", token)
        assert read.rc == 0 and read.stdout == "tokenWorker_read-1.thumb", (read.rc, read.stderr)
        request = urllib.request.Request("http://%s/.well-known/acme-challenge/tokenWorker_read-1" % edge_addr,
                                         headers={"Host": "links.example.com"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"tokenWorker_read-1.thumb"
        assert_denied(as_worker(host, worker, "rm -f %s", token), token)
        assert host.file(token).exists
    finally:
        host.run("rm -f %s", token)


# ------------------------------------------------------------------ the edge's traffic contract
# A tracked link must work in every state of its domain. prepare.yml runs a stand-in tracking upstream on the edge
# that echoes the host, path and scheme that reached it. These run last, in this order (each takes testinfra's ``host``,
# so pytest keeps them in file order): they change the lab's DNS. nginx's reload is asynchronous (new workers take
# over), so what a reload changes is polled for, briefly.

ISSUED, CAA_BLOCKED, WRONG_CNAME, NEVER_HEARD_OF = "links.example.com", "links.example.net", "click.example.org", "nobody.example.test"
LINK = "/c/123?u=1"
SERVE_TIMEOUT = 30


def assert_reaches_upstream(found, host, scheme):
    status, location, echoed = found
    assert status == 200 and location is None, found
    assert echoed and echoed["upstream"] == "linkcert-echo", found
    assert (echoed["host"], echoed["path"], echoed["forwarded_proto"]) == (host, LINK, scheme), echoed


def test_contract_issued_redirects_and_serves_its_own_certificate(host, edge_addr, pebble_root):
    status, location, _echoed = http_get(edge_addr, ISSUED, LINK)
    assert (status, location) == (301, "https://%s%s" % (ISSUED, LINK))
    cert, status, echoed = https_get(edge_addr, ISSUED, pebble_root, LINK)
    assert ("DNS", ISSUED) in cert["subjectAltName"]
    assert_reaches_upstream((status, None, echoed), ISSUED, "https")


@pytest.mark.parametrize("name", [CAA_BLOCKED, WRONG_CNAME, NEVER_HEARD_OF])
def test_contract_every_other_name_is_proxied_over_plain_http_and_refused_on_443(host, edge_addr, name):
    assert_reaches_upstream(http_get(edge_addr, name, LINK), name, "http")
    assert tls_refused(edge_addr, name), "%s got a certificate" % name


def test_contract_no_sni_gets_no_certificate_either(host, edge_addr):
    assert tls_refused(edge_addr, None)


def test_a_domain_fixed_after_onboarding_is_issued_and_served_by_the_watcher_alone(host, edge_addr, pebble_root, lab_dns):
    """The customer fixes the CNAME after onboarding; nothing here runs a playbook or starts a service: the watch timer
    checks the domain (3-second backoff in this scenario), issues its certificate, serves it and redirects."""
    before = host.run("journalctl -u linkcert-watch.service --no-pager -o cat").stdout
    assert "%s  SSL Unknown" % WRONG_CNAME in before, "the watcher has been checking the pending domain"
    lab_dns.dns_set("cname", WRONG_CNAME, "edge.linkcert.example")
    wait_until(lambda: state(host, WRONG_CNAME).get("ssl_status") == "issued", 120, "%s issued by the watcher" % WRONG_CNAME)
    recorded = state(host, WRONG_CNAME)
    assert recorded.get("watch") is None and recorded["action"] == "issued"
    wait_served(host, lambda: http_get(edge_addr, WRONG_CNAME, LINK)[0] == 301, SERVE_TIMEOUT, "the redirect for %s" % WRONG_CNAME)
    assert http_get(edge_addr, WRONG_CNAME, LINK)[1] == "https://%s%s" % (WRONG_CNAME, LINK)
    cert, status, echoed = https_get(edge_addr, WRONG_CNAME, pebble_root, LINK)
    assert int(cert["serialNumber"], 16) == int(recorded["serial"], 16)
    assert_reaches_upstream((status, None, echoed), WRONG_CNAME, "https")
    journal = host.run("journalctl -u linkcert-watch.service --no-pager -o cat").stdout
    assert "Issued a certificate for %s" % WRONG_CNAME in journal and "nginx reloaded" in journal, journal
    # The other pending domain is still checked, and still proxied.
    assert_reaches_upstream(http_get(edge_addr, CAA_BLOCKED, LINK), CAA_BLOCKED, "http")


def test_a_held_certificate_keeps_https_but_loses_its_redirect(host, edge_addr, pebble_root, lab_dns):
    """DNS drift: the customer moved the CNAME away. Support checks the domain now on the edge (linkcert-renew --domain):
    it is held, its certificate still served for links that already use HTTPS, but plain HTTP is no longer redirected
    to it (the same reload). With the CNAME back, the redirect returns."""
    serial = state(host, ISSUED)["serial"]
    lab_dns.dns_set("cname", ISSUED, "other-esp.example")
    try:
        held = host.run("linkcert-renew --domain %s", ISSUED)
        assert held.rc == 1, held.stdout + held.stderr
        recorded = state(host, ISSUED)
        assert (recorded["ssl_status"], recorded["reason"], recorded["serial"]) == ("pending", "dns_drift", serial), recorded
        assert "nginx reloaded" in held.stdout
        wait_served(host, lambda: http_get(edge_addr, ISSUED, LINK)[0] == 200, SERVE_TIMEOUT, "the redirect for %s gone" % ISSUED)
        assert_reaches_upstream(http_get(edge_addr, ISSUED, LINK), ISSUED, "http")
        cert, _status, _echoed = https_get(edge_addr, ISSUED, pebble_root, LINK)
        assert int(cert["serialNumber"], 16) == int(serial, 16)
    finally:
        lab_dns.dns_set("cname", ISSUED, "edge.linkcert.example")
    back = host.run("linkcert-renew --domain %s", ISSUED)
    assert back.rc == 0, back.stdout + back.stderr
    assert state(host, ISSUED)["ssl_status"] == "issued" and state(host, ISSUED).get("watch") is None
    wait_served(host, lambda: http_get(edge_addr, ISSUED, LINK)[0] == 301, SERVE_TIMEOUT, "the redirect for %s back" % ISSUED)
    assert http_get(edge_addr, ISSUED, LINK)[:2] == (301, "https://%s%s" % (ISSUED, LINK))


def test_a_removed_certificate_loses_https_and_its_redirect(host, edge_addr, lab_dns):
    """The certificate of the domain the watcher issued is removed from the edge while its CNAME points elsewhere again:
    the next watcher run takes its TLS server and its redirect out together; its links are proxied again."""
    lab_dns.dns_set("cname", WRONG_CNAME, "other-esp.example")
    assert host.run("rm %s/%s", LIVE, WRONG_CNAME).rc == 0
    wait_until(lambda: _refused_quietly(edge_addr, WRONG_CNAME), 60, "%s refused on 443" % WRONG_CNAME)
    assert_reaches_upstream(http_get(edge_addr, WRONG_CNAME, LINK), WRONG_CNAME, "http")
    names = host.file("/etc/nginx/linkcert/https-names.map").content_string
    assert "%s 1;" % WRONG_CNAME not in names and "%s 1;" % ISSUED in names
    wait_until(lambda: (state(host, WRONG_CNAME).get("reason") == "dns_not_ready" and state(host, WRONG_CNAME).get("watch")), 60,
               "%s watched again" % WRONG_CNAME)


def _refused_quietly(addr, name):
    """tls_refused, as a poll: a certificate still shown (the next run has not come yet) is a no for now."""
    try:
        return tls_refused(addr, name)
    except AssertionError:
        return False


# ------------------------------------------------------------------ Mozilla's intermediate TLS profile, as sslyze sees it

SSLYZE = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".venv" / "sslyze" / "bin" / "sslyze"


def _sslyze_findings(edge_addr, name, *extra):
    """``sslyze --mozilla_config=intermediate`` against NAME on the edge (SNI NAME, connected to its address): the
    findings it lists as ``* criterion: description``, and whether it said the server is compliant."""
    assert SSLYZE.is_file(), "sslyze is not installed (scripts/bootstrap.sh makes .venv/sslyze)"
    proc = subprocess.run([str(SSLYZE), "--mozilla_config=intermediate", *extra, "%s:443{%s}" % (name, edge_addr)],
                          capture_output=True, text=True, timeout=300, check=False)
    report = re.split(r"compliance against tls configuration", proc.stdout, maxsplit=1, flags=re.I)
    assert len(report) == 2 and "Checking results against Mozilla's \"intermediate\" configuration" in report[1], proc.stdout + proc.stderr
    findings = dict(re.findall(r"^\s+\* (\w+): (.*)$", report[1], re.M))
    compliant = "OK - Compliant." in report[1]
    assert compliant == (proc.returncode == 0) and compliant == (not findings), proc.stdout
    return findings, compliant


def test_an_issued_domain_meets_mozillas_intermediate_profile(edge_addr, pebble_root):
    # With the trust stores sslyze ships, the lab's root is unknown: that is the one finding allowed.
    findings, _compliant = _sslyze_findings(edge_addr, "links.example.com")
    assert set(findings) == {"certificate_path_validation"}, findings
    # Trusting the lab's root as well, nothing is left.
    findings, compliant = _sslyze_findings(edge_addr, "links.example.com", "--certinfo_ca_file=%s" % pebble_root)
    assert compliant and not findings, findings
