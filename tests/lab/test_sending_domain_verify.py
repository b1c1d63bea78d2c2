"""sending_domain_verify over the wire, run as Ansible runs it.

The lab DNS carries the demo's example customers (lab/demo-dns.yml); DNSResponders
model NXDOMAIN, failures and authoritative servers that disagree.
"""

from __future__ import annotations

import pytest
from labtools import REPO, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration]

EDGE = "edge.linkcert.example"
SENDING = {
    "spf_include": "spf.linkcert.example",
    "dkim": [{"selector": "s1", "cname": "s1.dkim.linkcert.example"}],
    "dmarc": "quarantine",
    "return_path": {"name": "bounce.em.example.com", "cname": "bounces.linkcert.example"},
}


@pytest.fixture(scope="module")
def demo_dns(lab):
    lab.seed(str(REPO / "lab" / "demo-dns.yml"))
    return lab


def test_demo_customers(demo_dns, lab_resolver):
    domains = [
        {"name": "links.example.com", "cname": EDGE},
        {"name": "click.example.org", "cname": EDGE},
        {"name": "Em.Example.Com.", "kind": "sending", **SENDING},
        {"name": "em.example.net", "spf_include": "spf.linkcert.example", "dkim": [{"selector": "s1", "cname": "s1.dkim.linkcert.example"}]},
    ]
    run = run_module("sending_domain_verify", {"domains": domains, "resolvers": [lab_resolver]})
    assert run.state == "SUCCESS", run.stdout
    assert run.result["changed"] is False and run.result["all_verified"] is False
    by = run.by("name")
    assert list(by) == ["links.example.com", "click.example.org", "em.example.com", "em.example.net"]

    links = by["links.example.com"]
    assert (links["verified"], links["ssl_ready"], links["kind"]) == (True, True, "tracking")
    assert links["records"][0]["found"] == "links.example.com -> edge.linkcert.example"

    click = by["click.example.org"]
    assert (click["verified"], click["ssl_ready"]) == (False, False)
    record = click["records"][0]
    assert record["status"] == "mismatch" and "proxying CDN" in record["message"]
    assert record["found"] == ["127.0.0.99"]
    assert record["remediation"] == "click.example.org. CNAME edge.linkcert.example."

    em = by["em.example.com"]
    assert em["verified"] is True, em["message"]
    assert [(r["check"], r["name"], r["status"]) for r in em["records"]] == [
        ("spf", "em.example.com", "verified"),
        ("dkim", "s1._domainkey.em.example.com", "verified"),
        ("dmarc", "_dmarc.example.com", "verified"),
        ("return_path", "bounce.em.example.com", "verified"),
    ]

    net = {r["check"]: r for r in by["em.example.net"]["records"]}
    assert net["spf"]["status"] == "mismatch" and "2 SPF records" in net["spf"]["message"]
    assert net["spf"]["remediation"].startswith('em.example.net. TXT "v=spf1 ')
    assert "include:spf.linkcert.example" in net["spf"]["remediation"]
    assert net["dkim"]["status"] == "missing"
    assert net["dkim"]["remediation"] == "s1._domainkey.em.example.net. CNAME s1.dkim.linkcert.example."


ZONE = """
c.test.              300 IN SOA ns1.c.test. host.c.test. 1 3600 600 86400 60
links.c.test.        300 IN CNAME edge.esp.test.
edge.esp.test.       300 IN A 127.0.0.1
flat.c.test.         300 IN A 127.0.0.1
em.c.test.           300 IN TXT "v=spf1 include:spf.esp.test -all"
_dmarc.c.test.       300 IN TXT "v=DMARC1; p=none"
bad.test.            300 IN SOA ns1.bad.test. host.bad.test. 1 3600 600 86400 60
"""


def test_missing_flattened_and_failures(responder):
    server = responder(ZONE, recursive=True)
    server.set_fault("sf.bad.test.", None, "servfail")
    domains = [
        {"name": "links.c.test", "cname": "edge.esp.test"},
        {"name": "flat.c.test", "cname": "edge.esp.test"},
        {"name": "gone.c.test", "cname": "edge.esp.test"},
        {"name": "sf.bad.test", "cname": "edge.esp.test"},
        {"name": "em.c.test", "spf_include": "spf.esp.test", "dmarc": "quarantine"},
    ]
    run = run_module("sending_domain_verify", {"domains": domains, "resolvers": ["%s:%d" % (server.address, server.port)], "retries": 0})
    assert run.state == "SUCCESS"
    by = run.by("name")
    assert by["links.c.test"]["ssl_ready"] and by["flat.c.test"]["ssl_ready"]
    assert "flattened" in by["flat.c.test"]["records"][0]["message"]
    gone = by["gone.c.test"]["records"][0]
    assert gone["status"] == "missing" and "does not exist" in gone["message"]
    failed = by["sf.bad.test"]["records"][0]
    assert failed["status"] == "error" and "SERVFAIL" in failed["message"] and failed["remediation"] is None
    em = {r["check"]: r for r in by["em.c.test"]["records"]}
    assert em["spf"]["status"] == "verified"
    assert (em["dmarc"]["status"], em["dmarc"]["name"]) == ("mismatch", "_dmarc.c.test")
    assert em["dmarc"]["remediation"] == '_dmarc.em.c.test. TXT "v=DMARC1; p=quarantine"'


def _auth_zone(spf: str) -> str:
    return """
c.test.              300 IN SOA ns1.c.test. host.c.test. 1 3600 600 86400 60
c.test.              300 IN NS ns1.c.test.
c.test.              300 IN NS ns2.c.test.
ns1.c.test.          300 IN A 127.0.0.2
ns2.c.test.          300 IN A 127.0.0.3
links.c.test.        300 IN CNAME edge.esp.test.
em.c.test.           300 IN TXT "%s"
edge.esp.test.       300 IN A 127.0.0.1
""" % spf


def _same_port_pair(responder, new_zone, old_zone):
    """Two authoritative servers on 127.0.0.2 and 127.0.0.3 sharing one port."""
    for _attempt in range(20):
        first = responder(new_zone, address="127.0.0.2")
        try:
            second = responder(old_zone, address="127.0.0.3", port=first.port)
        except OSError:
            first.stop()
            continue
        return first, second
    raise AssertionError("no common free port on 127.0.0.2 and 127.0.0.3")


def test_authoritative_servers_show_half_propagated_change(responder):
    new = _auth_zone("v=spf1 include:spf.esp.test ~all")
    old = _auth_zone("v=spf1 mx ~all")
    resolver = responder(new, recursive=True)
    ns1, ns2 = _same_port_pair(responder, new, old)
    domains = [{"name": "em.c.test", "spf_include": "spf.esp.test"}, {"name": "links.c.test", "cname": "edge.esp.test"}]
    args = {"domains": domains, "resolvers": ["%s:%d" % (resolver.address, resolver.port)]}

    recursive = run_module("sending_domain_verify", args)
    assert recursive.result["all_verified"] is True, "the recursive view already has the new record"

    auth = run_module("sending_domain_verify", dict(args, authoritative=True, authoritative_port=ns1.port))
    assert auth.state == "SUCCESS", auth.stdout
    em = auth.by("name")["em.c.test"]
    assert em["authoritative_servers"] == ["ns1.c.test (127.0.0.2:%d)" % ns1.port, "ns2.c.test (127.0.0.3:%d)" % ns2.port]
    spf = em["records"][0]
    assert spf["status"] == "mismatch" and "disagree" in spf["message"]
    assert [(s["status"]) for s in spf["servers"]] == ["verified", "mismatch"]
    assert auth.by("name")["links.c.test"]["verified"] is True
    assert ("em.c.test", "TXT") in ns2.queries and ("em.c.test", "TXT") in ns1.queries

    pinned = run_module("sending_domain_verify", dict(args, authoritative_servers=["127.0.0.2:%d" % ns1.port]))
    assert pinned.by("name")["em.c.test"]["verified"] is True


def test_bad_input_named_before_any_query(responder):
    server = responder(ZONE, recursive=True)
    run = run_module("sending_domain_verify", {"domains": [{"name": "links.c.test", "cname": "edge.esp.test"},
                                                           {"name": "em.c.test", "dkim": [{"selector": "s1;rm", "cname": "x.test"}]}],
                                               "resolvers": ["%s:%d" % (server.address, server.port)]})
    assert run.state == "FAILED!"
    assert "domains[2].dkim[1].selector" in run.result["msg"]
    assert server.queries == []


def test_check_mode_and_many_domains(responder):
    server = responder(ZONE, recursive=True)
    domains = [{"name": "t%03d.c.test" % i, "cname": "edge.esp.test"} for i in range(200)] + [{"name": "links.c.test", "cname": "edge.esp.test"}]
    run = run_module("sending_domain_verify", {"domains": domains, "resolvers": ["%s:%d" % (server.address, server.port)]}, check=True)
    assert run.state == "SUCCESS" and run.result["changed"] is False
    assert len(run.result["results"]) == 201
    assert [r["records"][0]["status"] for r in run.result["results"]] == ["missing"] * 200 + ["verified"]
    assert server.queries.count(("edge.esp.test", "A")) <= 1


def test_caa_option_checks_the_ready_names_as_caa_check_does(demo_dns, lab_resolver):
    domains = [{"name": "links.example.com", "cname": EDGE}, {"name": "links.example.net", "cname": EDGE},
               {"name": "click.example.org", "cname": EDGE}]
    run = run_module("sending_domain_verify", {"domains": domains, "resolvers": [lab_resolver], "caa": {}})
    assert run.state == "SUCCESS", run.stdout
    ready = [r["name"] for r in run.result["results"] if r["ssl_ready"]]
    assert ready == ["links.example.com", "links.example.net"]  # click.example.org does not reach the edge
    alone = run_module("caa_check", {"domains": ready, "resolvers": [lab_resolver]})
    assert run.result["caa_results"] == alone.result["results"]
    allowed = {r["domain"]: (r["allowed"], r["reason"]) for r in run.result["caa_results"]}
    assert allowed["links.example.net"] == (False, "issuer_not_listed")
    assert allowed["links.example.com"][0] is True
    assert "caa_results" not in run_module("sending_domain_verify", {"domains": domains, "resolvers": [lab_resolver]}).result


def test_caa_option_with_a_bad_method_fails_before_any_query(responder):
    server = responder(ZONE, recursive=True)
    run = run_module("sending_domain_verify", {"domains": [{"name": "links.c.test", "cname": "edge.esp.test"}],
                                               "resolvers": ["%s:%d" % (server.address, server.port)],
                                               "caa": {"validation_method": "http 01"}})
    assert run.state == "FAILED!" and "validation_method 'http 01' is not an ACME challenge type" in run.result["msg"]
    assert server.queries == []
