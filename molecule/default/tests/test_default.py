"""Testinfra checks of the converged edge: a real Debian 12 host with systemd as PID 1."""

import json
import socket
import ssl
import urllib.request

import pytest

STATE = "/var/lib/linkcert/state"
LIVE = "/etc/linkcert/live"


def state(host, domain):
    return json.loads(host.file("%s/%s.json" % (STATE, domain)).content_string)


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    assert host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")


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
