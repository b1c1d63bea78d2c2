# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Record checks of sending_domain_verify against a scripted view, table-driven."""

from __future__ import annotations

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _verify as v
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import SERVFAIL

EDGE = "edge.esp.example"
EDGE_RECORDS = {EDGE: [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")]}


def org(name):
    return ".".join(name.split(".")[-2:])


TRACKING = [
    ("direct-cname", {"links.c.com": [("CNAME", EDGE + ".")]}, {}, "verified", None),
    ("chain", {"links.c.com": [("CNAME", "mid.c.com.")], "mid.c.com": [("CNAME", EDGE + ".")]}, {}, "verified", None),
    ("flattened", {"links.c.com": [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")]}, {}, "verified", None),
    ("partly-flattened", {"links.c.com": [("A", "192.0.2.10")]}, {}, "mismatch", "proxying CDN"),
    ("proxied", {"links.c.com": [("A", "198.51.100.7")]}, {}, "mismatch", "proxying CDN"),
    ("holds-spf", {"links.c.com": [("A", "198.51.100.7"), ("TXT", '"v=spf1 -all"')]}, {}, "mismatch", "cannot be a CNAME"),
    ("other-cname", {"links.c.com": [("CNAME", "other.example.")], "other.example": [("A", "198.51.100.1")]}, {}, "mismatch", "alias of other.example"),
    ("missing", {"c.com": [("TXT", '"x"')]}, {}, "missing", "does not exist"),
    ("no-address", {"links.c.com": [("TXT", '"x"')]}, {}, "missing", "no address"),
    ("servfail", {}, {"links.c.com": SERVFAIL}, "error", "SERVFAIL"),
]


@pytest.mark.parametrize("case", TRACKING, ids=[c[0] for c in TRACKING])
def test_tracking(case, fake_view):
    _id, records, failures, status, fragment = case
    view = fake_view(dict(EDGE_RECORDS, **records), failures)
    result = v.check_tracking(view, "links.c.com", EDGE)
    assert result["status"] == status, result["message"]
    if fragment:
        assert fragment in result["message"]
    addresses = "links.c.com. A 192.0.2.10\nlinks.c.com. AAAA 2001:db8::10"
    cname = "links.c.com. CNAME edge.esp.example."
    expected = {"verified": None, "error": None, "mismatch": addresses if _id == "holds-spf" else cname,
                "missing": addresses if _id == "no-address" else cname}
    assert result["remediation"] == expected[status]


def test_tracking_to_broken_edge_is_provider_error(fake_view):
    result = v.check_tracking(fake_view({"links.c.com": [("CNAME", EDGE + ".")]}), "links.c.com", EDGE)
    assert result["status"] == "error" and "provider's edge" in result["message"]


SPF = [
    ("ok", ['"v=spf1 include:spf.esp.example ~all"'], "verified", None),
    ("split-strings", ['"v=spf1 include:spf.es" "p.example ~all"'], "verified", None),
    ("none", ['"google-site-verification=1"'], "missing", 'em.c.com. TXT "v=spf1 include:spf.esp.example ~all"'),
    ("two", ['"v=spf1 mx -all"', '"v=spf1 include:x.example -all"'], "mismatch",
     'em.c.com. TXT "v=spf1 mx include:x.example include:spf.esp.example -all"'),
    ("no-include", ['"v=spf1 mx -all"'], "mismatch", 'em.c.com. TXT "v=spf1 mx include:spf.esp.example -all"'),
    ("syntax", ['"v=spf1 bogus -all"'], "mismatch", 'em.c.com. TXT "v=spf1 bogus include:spf.esp.example -all"'),
    ("too-many", ['"v=spf1 include:spf.esp.example ' + " ".join("include:i%d.example" % i for i in range(10)) + ' -all"'], "mismatch", None),
]


@pytest.mark.parametrize("case", SPF, ids=[c[0] for c in SPF])
def test_spf(case, fake_view):
    _id, txts, status, remediation = case
    view = fake_view({"em.c.com": [("TXT", t) for t in txts]})
    result = v.check_spf(view, "em.c.com", "spf.esp.example")
    assert result["status"] == status, result["message"]
    assert result["remediation"] == remediation


DMARC = [
    ("at-name", {"_dmarc.em.c.com": [("TXT", '"v=DMARC1; p=reject"')]}, "quarantine", "verified", "_dmarc.em.c.com"),
    ("at-org", {"_dmarc.c.com": [("TXT", '"v=DMARC1; p=quarantine"')]}, "quarantine", "verified", "_dmarc.c.com"),
    ("org-sp-weaker", {"_dmarc.c.com": [("TXT", '"v=DMARC1; p=reject; sp=none"')]}, "quarantine", "mismatch", "_dmarc.c.com"),
    ("weaker", {"_dmarc.em.c.com": [("TXT", '"v=DMARC1; p=none; rua=mailto:a@c.com"')]}, "reject", "mismatch", "_dmarc.em.c.com"),
    ("missing", {"c.com": [("A", "192.0.2.1")]}, "none", "missing", "_dmarc.em.c.com"),
    ("two", {"_dmarc.em.c.com": [("TXT", '"v=DMARC1; p=none"'), ("TXT", '"v=DMARC1; p=reject"')]}, "none", "mismatch", "_dmarc.em.c.com"),
    ("not-dmarc-ignored", {"_dmarc.em.c.com": [("TXT", '"hello"')], "_dmarc.c.com": [("TXT", '"v=DMARC1; p=none"')]}, "none", "verified",
     "_dmarc.c.com"),
    ("invalid", {"_dmarc.em.c.com": [("TXT", '"v=DMARC1; p=maybe"')]}, "none", "mismatch", "_dmarc.em.c.com"),
]


@pytest.mark.parametrize("case", DMARC, ids=[c[0] for c in DMARC])
def test_dmarc(case, fake_view):
    _id, records, wanted, status, where = case
    result = v.check_dmarc(fake_view(records), "em.c.com", wanted, org)
    assert (result["status"], result["name"]) == (status, where), result["message"]
    if status != "verified":
        assert result["remediation"].startswith("_dmarc.em.c.com. TXT \"v=DMARC1; p=%s" % wanted)


KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAq"
DKIM = [
    ("cname-ok", {"s1._domainkey.em.c.com": [("CNAME", "s1.dkim.esp.example.")], "s1.dkim.esp.example": [("TXT", '"v=DKIM1; p=%s"' % KEY)]},
     v.DkimSpec("s1", "s1.dkim.esp.example", None), "verified"),
    ("cname-target-empty", {"s1._domainkey.em.c.com": [("CNAME", "s1.dkim.esp.example.")], "esp.example": [("A", "192.0.2.1")]},
     v.DkimSpec("s1", "s1.dkim.esp.example", None), "error"),
    ("cname-wrong", {"s1._domainkey.em.c.com": [("CNAME", "x.example.")], "x.example": [("TXT", '"p=%s"' % KEY)]},
     v.DkimSpec("s1", "s1.dkim.esp.example", None), "mismatch"),
    ("cname-but-key", {"s1._domainkey.em.c.com": [("TXT", '"v=DKIM1; p=%s"' % KEY)]}, v.DkimSpec("s1", "s1.dkim.esp.example", None), "mismatch"),
    ("cname-missing", {}, v.DkimSpec("s1", "s1.dkim.esp.example", None), "missing"),
    ("key-ok", {"s1._domainkey.em.c.com": [("TXT", '"v=DKIM1; k=rsa; " "p=%s"' % KEY)]}, v.DkimSpec("s1", None, KEY), "verified"),
    ("key-differs", {"s1._domainkey.em.c.com": [("TXT", '"v=DKIM1; p=MIIBother"')]}, v.DkimSpec("s1", None, KEY), "mismatch"),
    ("key-revoked", {"s1._domainkey.em.c.com": [("TXT", '"v=DKIM1; p="')]}, v.DkimSpec("s1", None, KEY), "mismatch"),
    ("any-key", {"s1._domainkey.em.c.com": [("TXT", '"v=DKIM1; p=abc"')]}, v.DkimSpec("s1", None, None), "verified"),
    ("two-keys", {"s1._domainkey.em.c.com": [("TXT", '"p=a"'), ("TXT", '"p=b"')]}, v.DkimSpec("s1", None, None), "mismatch"),
]


@pytest.mark.parametrize("case", DKIM, ids=[c[0] for c in DKIM])
def test_dkim(case, fake_view):
    _id, records, spec, status = case
    result = v.check_dkim(fake_view(records), "em.c.com", spec)
    assert result["status"] == status, result["message"]
    assert result["name"] == "s1._domainkey.em.c.com"


def test_return_path(fake_view):
    view = fake_view({"bounce.em.c.com": [("CNAME", "bounces.esp.example.")], "rp2.c.com": [("CNAME", "x.example.")]})
    assert v.check_return_path(view, "bounce.em.c.com", "bounces.esp.example")["status"] == "verified"
    wrong = v.check_return_path(view, "rp2.c.com", "bounces.esp.example")
    assert wrong["status"] == "mismatch" and wrong["remediation"] == "rp2.c.com. CNAME bounces.esp.example."
    assert v.check_return_path(view, "rp3.c.com", "bounces.esp.example")["status"] == "missing"


def test_merge_views_disagreement():
    ok = {"check": "spf", "status": "verified", "found": "v=spf1", "message": "fine", "remediation": None}
    missing = {"check": "spf", "status": "missing", "found": None, "message": "none", "remediation": "x. TXT \"v=spf1\""}
    merged = v.merge_views([("ns1", ok), ("ns2", missing)])
    assert merged["status"] == "missing" and "disagree" in merged["message"] and merged["remediation"]
    assert [s["server"] for s in merged["servers"]] == ["ns1", "ns2"]
    same = v.merge_views([("ns1", ok), ("ns2", dict(ok))])
    assert same["status"] == "verified" and "disagree" not in same["message"]


SPEC_ERRORS = [
    ([{"name": "bad name"}], "domains[1].name"),
    ([{"name": "links.c.com", "kind": "tracking"}], "needs cname"),
    ([{"name": "em.c.com"}], "nothing to verify"),
    ([{"name": "a.c.com", "cname": "e.x"}, {"name": "A.C.COM.", "cname": "e.x"}], "listed twice"),
    ([{"name": "em.c.com", "dkim": [{"selector": "s 1"}]}], "dkim[1].selector"),
    ([{"name": "em.c.com", "dkim": [{"selector": "s1", "key": "not base64!"}]}], "not a base64"),
    ([{"name": "em.c.com", "dkim": [{"selector": "s1", "key": "abc", "cname": "x.example"}]}], "not both"),
    ([{"name": "em.c.com", "cname": "bad..target"}], "domains[1].cname"),
    ([{"name": "em.c.com", "return_path": {"name": "b;x.c.com", "cname": "t.example"}}], "return_path.name"),
]


@pytest.mark.parametrize("raw,fragment", SPEC_ERRORS)
def test_spec_errors(raw, fragment):
    with pytest.raises(InputError) as err:
        v.parse_specs(raw)
    assert fragment in err.value.msg


def test_spec_normalised_and_kind_inferred():
    specs = v.parse_specs([{"name": "Links.C.com.", "cname": "Edge.ESP.example."}, {"name": "em.c.com", "spf_include": "spf.x.example"}])
    assert (specs[0].name, specs[0].cname, specs[0].kind) == ("links.c.com", "edge.esp.example", "tracking")
    assert specs[1].kind == "sending"


def test_summary():
    spec = v.parse_specs([{"name": "links.c.com", "cname": EDGE, "spf_include": "s.example"}])[0]
    records = [{"check": "cname", "name": "links.c.com", "status": "verified"}, {"check": "spf", "name": "links.c.com", "status": "missing"}]
    summary = v.summarize(spec, records)
    assert summary["ssl_ready"] is True and summary["verified"] is False
    assert "spf links.c.com is missing" in summary["message"]
