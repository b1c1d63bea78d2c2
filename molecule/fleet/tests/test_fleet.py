"""Testinfra checks of a fleet: two edge nodes serving the same domains, one of them ordering.

Runs after converge, idempotence and check mode, so the order count below covers all three runs.
"""

import hashlib
import json
import re
import socket
import ssl
import urllib.request

import josepy
import pytest
from cryptography.hazmat.primitives import hashes, serialization

from conftest import EPHEMERAL

STATE = "/var/lib/linkcert/state"
DOMAINS = ["links.example.com", "one.example.com", "rr.example.com"]
ISSUER = "linkcert-fleet-1"


def name_of(host):
    return host.ansible.get_variables()["inventory_hostname"]


def state(host, domain):
    return json.loads(host.file("%s/%s.json" % (STATE, domain)).content_string)


def served_serial(addr, domain, pebble_root):
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((addr, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=domain) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def issued_serials():
    """Serials Pebble issued, from its log: one line per certificate."""
    log = (EPHEMERAL / "lab" / "log" / "pebble.log").read_text()
    return [int(serial, 16) for serial in re.findall(r"Issued certificate serial ([0-9a-f]+) for order", log)]


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_node_serves_the_fleet_certificate(host, edge_addrs, pebble_root, domain):
    recorded = state(host, domain)
    assert recorded["ssl_status"] == "issued" and recorded["label"] == "SSL Issued"
    assert served_serial(edge_addrs[name_of(host)], domain, pebble_root) == int(recorded["serial"], 16)


def test_each_certificate_was_ordered_once_for_the_fleet(edge_addrs, pebble_root):
    issued = issued_serials()
    assert len(issued) == len(DOMAINS), issued
    for domain in DOMAINS:
        served = {served_serial(addr, domain, pebble_root) for addr in edge_addrs.values()}
        assert len(served) == 1 and served <= set(issued), (domain, served)


def private_file_digests(nodes, path):
    """SHA-256 of ``path`` on every node, after checking it is 0600 and owned by root."""
    digests = set()
    for node in nodes.values():
        found = node.file(path)
        assert (found.mode, found.user) == (0o600, "root"), path
        digests.add(hashlib.sha256(found.content).hexdigest())
    return digests


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_key_is_the_same_everywhere_and_private(nodes, domain):
    assert len(private_file_digests(nodes, "/etc/linkcert/live/%s/privkey.pem" % domain)) == 1


def test_account_key_is_shared_and_private(nodes):
    assert len(private_file_digests(nodes, STATE + "/account.key")) == 1


def account_thumbprint(node):
    """RFC 7638 thumbprint of the account key on ``node``, computed here with josepy (not the collection's code)."""
    key = serialization.load_pem_private_key(node.file(STATE + "/account.key").content, password=None)
    return josepy.b64.b64encode(josepy.JWKEC(key=key).thumbprint(hash_function=hashes.SHA256)).decode()


def test_every_node_answers_any_token_with_the_fleet_thumbprint(nodes, edge_addrs):
    answers = set()
    for addr in edge_addrs.values():
        request = urllib.request.Request("http://%s/.well-known/acme-challenge/tok-123_abc" % addr, headers={"Host": "rr.example.com"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers.get_content_type() == "text/plain"
            answers.add(response.read().decode())
    assert answers == {"tok-123_abc." + account_thumbprint(nodes[ISSUER])}


@pytest.mark.parametrize("timer", ["linkcert-renew.timer", "linkcert-watch.timer"])
def test_only_the_issuer_runs_the_renewal_and_watch_timers(host, timer):
    active = host.run("systemctl is-active %s", timer).stdout.strip()
    enabled = host.run("systemctl is-enabled %s", timer).stdout.strip()
    if name_of(host) == ISSUER:
        assert (active, enabled) == ("active", "enabled")
    else:
        assert active != "active" and enabled != "enabled"


def test_the_other_node_accepts_the_issuers_push_key_for_the_receiving_command_only(host):
    if name_of(host) == ISSUER:
        assert host.file("/etc/linkcert/fleet/id_ed25519").mode == 0o600
        assert host.file("/etc/linkcert/fleet/known_hosts").contains("ssh-ed25519")
        return
    entries = [line for line in host.file("/root/.ssh/authorized_keys").content_string.splitlines() if "linkcert-fleet-push@" in line]
    assert len(entries) == 1 and entries[0].startswith('restrict,command="/usr/local/bin/linkcert-renew --receive" ssh-ed25519 '), entries
