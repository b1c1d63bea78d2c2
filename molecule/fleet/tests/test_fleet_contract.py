"""The edge's traffic contract on both nodes of a fleet, and a domain fixed after onboarding reaching both by the timer.

Runs after test_fleet.py (which counts Pebble's certificates before late.example.com is issued). The tests run in file
order and change the lab's DNS; none takes testinfra's parametrized ``host`` (each walks both nodes itself), so pytest
keeps that order. Nothing here runs a playbook: after converge, only the issuer's timers and its pushes act.
"""

import json
import re

import pytest
from conftest import EPHEMERAL, http_get, https_get, tls_refused, wait_served, wait_until

STATE = "/var/lib/linkcert/state"
ISSUER, OTHER = "linkcert-fleet-1", "linkcert-fleet-2"
ISSUED = ["links.example.com", "one.example.com", "rr.example.com"]
LATE = "late.example.com"
LINK = "/c/123?u=1"
SERVE_TIMEOUT = 30
# The watcher checks every 3 seconds in this scenario; issuing, pushing to the other node and two reloads take seconds.
ISSUE_TIMEOUT = 120


def state(node, domain):
    return json.loads(node.file("%s/%s.json" % (STATE, domain)).content_string)


def lands(found, host, scheme):
    status, location, echoed = found
    return status == 200 and location is None and bool(echoed) and echoed.get("upstream") == "linkcert-echo" and (
        echoed["host"], echoed["path"], echoed["forwarded_proto"]) == (host, LINK, scheme)


@pytest.mark.parametrize("domain", ISSUED)
def test_issued_domains_redirect_and_serve_their_certificate_on_both_nodes(edge_addrs, pebble_root, domain):
    for node, addr in edge_addrs.items():
        assert http_get(addr, domain, LINK)[:2] == (301, "https://%s%s" % (domain, LINK)), node
        cert, status, echoed = https_get(addr, domain, pebble_root, LINK)
        assert ("DNS", domain) in cert["subjectAltName"], node
        assert lands((status, None, echoed), domain, "https"), (node, echoed)


@pytest.mark.parametrize("domain", [LATE, "nobody.example.test"])
def test_other_names_are_proxied_over_plain_http_and_refused_on_443_on_both_nodes(edge_addrs, domain):
    for node, addr in edge_addrs.items():
        found = http_get(addr, domain, LINK)
        assert lands(found, domain, "http"), (node, found)
        assert tls_refused(addr, domain), "%s showed a certificate for %s" % (node, domain)


def test_a_domain_fixed_after_onboarding_is_served_on_every_node_by_the_timer_alone(nodes, edge_addrs, pebble_root, lab_dns):
    issuer = nodes[ISSUER]
    assert state(issuer, LATE)["ssl_status"] != "issued" and state(issuer, LATE).get("watch"), "the watcher checks it"
    lab_dns.dns_set("cname", LATE, "edge-all.linkcert.example")
    wait_until(lambda: all(state(node, LATE).get("ssl_status") == "issued" for node in nodes.values()), ISSUE_TIMEOUT,
               "%s issued on the issuer and installed on the other node" % LATE)
    serials = {name: int(state(node, LATE)["serial"], 16) for name, node in nodes.items()}
    assert len(set(serials.values())) == 1, serials
    for node, addr in edge_addrs.items():
        wait_served(nodes[node], lambda: http_get(addr, LATE, LINK)[0] == 301, SERVE_TIMEOUT, "the redirect for %s on %s" % (LATE, node))
        cert, status, echoed = https_get(addr, LATE, pebble_root, LINK)
        assert int(cert["serialNumber"], 16) == serials[node] and lands((status, None, echoed), LATE, "https"), node
    journal = issuer.run("journalctl -u linkcert-watch.service --no-pager -o cat").stdout
    assert "Issued a certificate for %s" % LATE in journal and "fleet node %s updated" % OTHER in journal, journal
    # The other node holds the same key, and the CA issued one certificate for the name: only the issuer ordered.
    keys = {node.file("/etc/linkcert/live/%s/privkey.pem" % LATE).content for node in nodes.values()}
    assert len(keys) == 1
    log = (EPHEMERAL / "lab" / "log" / "pebble.log").read_text()
    assert serials[ISSUER] in [int(serial, 16) for serial in re.findall(r"Issued certificate serial ([0-9a-f]+) for order", log)]
    assert len(re.findall(r"Issued certificate serial", log)) == len(ISSUED) + 1, "one order for the late domain, from one node"


def test_a_hold_reaches_every_node_in_the_same_run(nodes, edge_addrs, pebble_root, lab_dns):
    """rr.example.com's CNAME moves away; support checks it on the issuer (linkcert-renew --domain): held, pushed, and on
    both nodes HTTPS still serves it while plain HTTP is no longer redirected. With the CNAME back, both redirect again."""
    domain, issuer = "rr.example.com", nodes[ISSUER]
    serial = int(state(issuer, domain)["serial"], 16)
    lab_dns.dns_set("cname", domain, "other-esp.example")
    try:
        held = issuer.run("linkcert-renew --domain %s", domain)
        assert held.rc == 1 and "fleet node %s updated" % OTHER in held.stdout, held.stdout + held.stderr
        for name, node in nodes.items():
            assert (state(node, domain)["reason"], state(node, domain)["ssl_status"]) == ("dns_drift", "pending"), name
        for name, addr in edge_addrs.items():
            wait_served(nodes[name], lambda: lands(http_get(addr, domain, LINK), domain, "http"), SERVE_TIMEOUT,
                        "no redirect for %s on %s" % (domain, name))
            assert int(https_get(addr, domain, pebble_root, LINK)[0]["serialNumber"], 16) == serial, name
    finally:
        lab_dns.dns_set("cname", domain, "edge-all.linkcert.example")
    back = issuer.run("linkcert-renew --domain %s", domain)
    assert back.rc == 0, back.stdout + back.stderr
    for name, addr in edge_addrs.items():
        wait_served(nodes[name], lambda: http_get(addr, domain, LINK)[0] == 301, SERVE_TIMEOUT, "the redirect for %s back on %s" % (domain, name))


def test_support_is_told_to_verify_on_the_issuer(nodes):
    other = nodes[OTHER].run("linkcert-renew --domain %s", LATE)
    assert other.rc == 2 and "run linkcert-renew --domain %s on %s" % (LATE, ISSUER) in other.stderr, other.stdout + other.stderr
