"""caa_check over the wire, run as `ansible localhost -m mailops.linkcert.caa_check`.

The lab's pebble-challtestsrv serves the common cases; a DNSResponder serves what
challtestsrv cannot express (critical flags, NXDOMAIN, SERVFAIL at a chosen name).
"""

from __future__ import annotations


import pytest
from labtools import run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration]

ACCOUNT = "https://acme.lab.example/acct/1"

LAB_DATA = {
    "records": [
        {"host": "allowed.test", "caa": [{"tag": "issue", "value": "letsencrypt.org"}]},
        {"host": "blocked.test", "caa": [{"tag": "issue", "value": "sectigo.com"}]},
        {"host": "links.alias.test", "cname": "edge.esp.test"},
        {"host": "edge.esp.test", "caa": [{"tag": "issue", "value": "sectigo.com"}]},
        {"host": "wild.test", "caa": [{"tag": "issue", "value": "letsencrypt.org"}, {"tag": "issuewild", "value": "sectigo.com"}]},
        {"host": "acct.test", "caa": [{"tag": "issue", "value": "letsencrypt.org; accounturi=https://acme.lab.example/acct/2"}]},
        {"host": "methods.test", "caa": [{"tag": "issue", "value": "letsencrypt.org; validationmethods=dns-01"}]},
        {"host": "broken.test", "servfail": True},
    ],
}

# (domain, allowed, reason, found_at, remediation)
LAB_CASES = [
    ("links.allowed.test", True, "permitted", "allowed.test", None),
    ("Links.Allowed.Test.", True, "permitted", "allowed.test", None),
    ("links.blocked.test", False, "issuer_not_listed", "blocked.test", 'blocked.test. CAA 0 issue "letsencrypt.org"'),
    ("links.alias.test", False, "issuer_not_listed", "links.alias.test", 'edge.esp.test. CAA 0 issue "letsencrypt.org"'),
    ("*.wild.test", False, "issuer_not_listed", "wild.test", 'wild.test. CAA 0 issuewild "letsencrypt.org"'),
    ("www.wild.test", True, "permitted", "wild.test", None),
    ("links.acct.test", False, "account_uri_mismatch", "acct.test", 'acct.test. CAA 0 issue "letsencrypt.org; accounturi=%s"' % ACCOUNT),
    ("links.methods.test", False, "validation_method_not_allowed", "methods.test", 'methods.test. CAA 0 issue "letsencrypt.org; validationmethods=http-01"'),
    ("links.nocaa.test", True, "no_caa", None, None),
    ("links.broken.test", False, "dns_error", None, None),
]


@pytest.fixture(scope="module")
def seeded(lab):
    lab.seed(LAB_DATA)
    return lab


def test_rfc_answers_through_the_lab_dns(seeded, lab_resolver):
    run = run_module("caa_check", {"domains": [c[0] for c in LAB_CASES], "resolvers": [lab_resolver],
                                   "account_uri": ACCOUNT, "timeout": 2, "retries": 1})
    assert run.state == "SUCCESS", run.stdout
    assert run.result["changed"] is False
    assert run.result["all_allowed"] is False
    results = run.result["results"]
    assert [r["domain"] for r in results] == ["links.allowed.test", "links.allowed.test"] + [c[0] for c in LAB_CASES[2:]]
    for (domain, allowed, reason, found_at, remediation), result in zip(LAB_CASES, results):
        assert (result["allowed"], result["reason"], result["found_at"], result["remediation"]) == (allowed, reason, found_at, remediation), domain
        assert result["message"]
    assert results[2]["records"] == [{"flags": 0, "tag": "issue", "value": "sectigo.com"}]
    assert "broken.test" in results[-1]["message"] and "SERVFAIL" in results[-1]["message"]


def test_check_mode_gives_the_same_answer(seeded, lab_resolver):
    args = {"domains": ["links.blocked.test", "links.allowed.test"], "resolvers": [lab_resolver]}
    normal = run_module("caa_check", args)
    check = run_module("caa_check", args, check=True)
    assert check.state == "SUCCESS" and check.result["changed"] is False
    assert check.result["results"] == normal.result["results"]


RESPONDER_ZONE = """
crit.test.            300 IN CAA 128 tbs "unknown"
crit.test.            300 IN CAA 0 issue "letsencrypt.org"
flag1.test.           300 IN CAA 1 future "x"
flag1.test.           300 IN CAA 0 issue "letsencrypt.org"
critknown.test.       300 IN CAA 128 issue "letsencrypt.org"
parent.test.          300 IN CAA 0 issue "letsencrypt.org"
parent.test.          300 IN SOA ns.parent.test. host.parent.test. 1 3600 600 86400 60
sf.test.              300 IN A 127.0.0.9
found.test.           300 IN CAA 0 issue "letsencrypt.org"
forbid.test.          300 IN CAA 0 issue ";"
"""


def test_cases_challtestsrv_cannot_express(responder):
    server = responder(RESPONDER_ZONE, recursive=True)
    server.set_fault("sf.test.", "CAA", "servfail")
    server.set_fault("test.", "CAA", "servfail")   # above found.test: must not matter
    run = run_module("caa_check", {"domains": ["a.crit.test", "a.flag1.test", "a.critknown.test", "missing.parent.test",
                                               "x.sf.test", "a.found.test", "a.forbid.test"],
                                   "resolvers": ["%s:%d" % (server.address, server.port)], "timeout": 2, "retries": 0})
    assert run.state == "SUCCESS", run.stdout
    got = {r["domain"]: (r["allowed"], r["reason"], r["found_at"]) for r in run.result["results"]}
    assert got == {
        "a.crit.test": (False, "critical_unknown_tag", "crit.test"),
        "a.flag1.test": (False, "critical_unknown_tag", "flag1.test"),
        "a.critknown.test": (True, "permitted", "critknown.test"),
        "missing.parent.test": (True, "permitted", "parent.test"),
        "x.sf.test": (False, "dns_error", None),
        "a.found.test": (True, "permitted", "found.test"),
        "a.forbid.test": (False, "issuance_forbidden", "forbid.test"),
    }
    crit = run.by("domain")["a.crit.test"]
    assert {"flags": 128, "tag": "tbs", "value": "unknown"} in crit["records"]
    assert crit["remediation"] == 'a.crit.test. CAA 0 issue "letsencrypt.org"'
    # Every climb stopped where its set was found (or failed) below the TLD, whose lookup would SERVFAIL.
    assert ("test", "CAA") not in server.queries


def test_timeout_blocks_in_bounded_time(responder):
    server = responder(RESPONDER_ZONE, recursive=True)
    server.set_fault("slow.test.", None, "timeout")
    run = run_module("caa_check", {"domains": ["slow.test"], "resolvers": ["%s:%d" % (server.address, server.port)],
                                   "timeout": 1, "retries": 1})
    assert run.state == "SUCCESS"
    result = run.result["results"][0]
    assert (result["allowed"], result["reason"]) == (False, "dns_error")
    assert "timeout" in result["message"]
    # Bounded by the query count, not by the clock: one retry (retries 1), each attempt at most two sends (the
    # per-send timeout is half the attempt's), so 2 to 4 questions, and the run ends.
    assert 2 <= server.queries.count(("slow.test", "CAA")) <= 4, "a timed-out query is retried, a bounded number of times"


@pytest.mark.parametrize("bad,fragment", [
    ("bad;name.test", "';'"),
    ("../etc.test", "'/'"),
    ("a..b.test", "empty label"),
    ("x" * 64 + ".test", "64 octets"),
    ("192.0.2.1", "IP address"),
    ("", "empty"),
])
def test_bad_input_fails_before_any_query(responder, bad, fragment):
    server = responder(RESPONDER_ZONE, recursive=True)
    run = run_module("caa_check", {"domains": ["ok.parent.test", bad], "resolvers": ["%s:%d" % (server.address, server.port)]})
    assert run.state == "FAILED!"
    assert "item 2" in run.result["msg"] and fragment in run.result["msg"]
    assert server.queries == [], "no DNS query may be sent when any input is bad"


def test_bad_resolver_named(responder):
    run = run_module("caa_check", {"domains": ["a.test"], "resolvers": ["dns.example:53"]})
    assert run.state == "FAILED!" and "dns.example:53" in run.result["msg"]


def test_hundreds_of_domains_in_one_task_share_lookups(responder):
    server = responder(RESPONDER_ZONE, recursive=True)
    domains = ["d%03d.parent.test" % i for i in range(300)]
    run = run_module("caa_check", {"domains": domains, "resolvers": ["%s:%d" % (server.address, server.port)], "workers": 32})
    assert run.state == "SUCCESS"
    assert [r["domain"] for r in run.result["results"]] == domains
    assert all(r["allowed"] and r["found_at"] == "parent.test" for r in run.result["results"])
    assert server.queries.count(("parent.test", "CAA")) == 1, "a parent shared by many domains is asked once"
    assert len(server.queries) == 301
