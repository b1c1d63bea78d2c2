# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Table-driven tests of CAA processing (RFC 8659, RFC 8657)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.mailops.linkcert.plugins.module_utils import _caa
from ansible_collections.mailops.linkcert.plugins.module_utils._caa import CAARecord, Policy, check_domain, evaluate, parse_issue_value
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import SERVFAIL, TIMEOUT

LE = "letsencrypt.org"
ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/1234"
POLICY = Policy([LE], "http-01", ACCOUNT)


def caa(*values):
    return [("CAA", v) for v in values]


# (id, domain, records, failures, policy, allowed, reason, found_at, remediation)
CASES = [
    ("no-records", "links.customer.com", {}, {}, POLICY, True, "no_caa", None, None),
    ("issue-at-name", "links.customer.com", {"links.customer.com": caa('0 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "links.customer.com", None),
    ("issue-at-parent", "links.customer.com", {"customer.com": caa('0 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("closest-set-wins", "links.customer.com",
     {"links.customer.com": caa('0 issue "sectigo.com"'), "customer.com": caa('0 issue "letsencrypt.org"')}, {}, POLICY,
     False, "issuer_not_listed", "links.customer.com", 'links.customer.com. CAA 0 issue "letsencrypt.org"'),
    ("other-ca-at-parent", "links.customer.com", {"customer.com": caa('0 issue "sectigo.com"')}, {}, POLICY,
     False, "issuer_not_listed", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("one-of-several", "a.customer.com", {"customer.com": caa('0 issue "sectigo.com"', '0 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("forbid-all", "a.customer.com", {"customer.com": caa('0 issue ";"')}, {}, POLICY,
     False, "issuance_forbidden", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("tag-case-insensitive", "a.customer.com", {"customer.com": caa('0 ISSUE "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("issuer-case-insensitive", "a.customer.com", {"customer.com": caa('0 issue "LetsEncrypt.ORG"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("only-iodef", "a.customer.com", {"customer.com": caa('0 iodef "mailto:sec@customer.com"')}, {}, POLICY,
     True, "no_issue_property", "customer.com", None),
    ("only-issuewild-plain-name", "a.customer.com", {"customer.com": caa('0 issuewild ";"')}, {}, POLICY,
     True, "no_issue_property", "customer.com", None),
    ("wildcard-issuewild-overrides", "*.customer.com",
     {"customer.com": caa('0 issue "letsencrypt.org"', '0 issuewild "sectigo.com"')}, {}, POLICY,
     False, "issuer_not_listed", "customer.com", 'customer.com. CAA 0 issuewild "letsencrypt.org"'),
    ("wildcard-falls-back-to-issue", "*.customer.com", {"customer.com": caa('0 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("wildcard-issuewild-allows", "*.customer.com", {"customer.com": caa('0 issue ";"', '0 issuewild "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("plain-name-ignores-issuewild", "customer.com", {"customer.com": caa('0 issue ";"', '0 issuewild "letsencrypt.org"')}, {}, POLICY,
     False, "issuance_forbidden", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("critical-unknown", "a.customer.com", {"customer.com": caa('128 tbs "unknown"', '0 issue "letsencrypt.org"')}, {}, POLICY,
     False, "critical_unknown_tag", "customer.com", 'a.customer.com. CAA 0 issue "letsencrypt.org"'),
    ("critical-unknown-at-name", "a.customer.com", {"a.customer.com": caa('128 tbs "unknown"', '0 issue "letsencrypt.org"')}, {}, POLICY,
     False, "critical_unknown_tag", "a.customer.com", None),
    ("critical-known-tag", "a.customer.com", {"customer.com": caa('128 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("noncritical-unknown", "a.customer.com", {"customer.com": caa('0 tbs "unknown"', '0 issue "letsencrypt.org"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("flag-1-as-critical", "a.customer.com", {"customer.com": caa('1 tbs "unknown"', '0 issue "letsencrypt.org"')}, {}, POLICY,
     False, "critical_unknown_tag", "customer.com", 'a.customer.com. CAA 0 issue "letsencrypt.org"'),
    ("malformed-ours", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; accounturi"')}, {}, POLICY,
     False, "malformed_record", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("malformed-issuer", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org/x"')}, {}, POLICY,
     False, "issuer_not_listed", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("accounturi-match", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; accounturi=%s"' % ACCOUNT)}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("accounturi-mismatch", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; accounturi=https://x/acct/9"')}, {}, POLICY,
     False, "account_uri_mismatch", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org; accounturi=%s"' % ACCOUNT),
    ("accounturi-unknown", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; accounturi=https://x/acct/9"')}, {},
     Policy([LE], "http-01", None), False, "account_uri_unknown", "customer.com", None),
    ("accounturi-tag-case-sensitive", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; AccountURI=https://x/1"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("method-allowed", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; validationmethods=dns-01,http-01"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("method-excluded", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; validationmethods=dns-01"')}, {}, POLICY,
     False, "validation_method_not_allowed", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org; validationmethods=http-01"'),
    ("method-bad-label", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; validationmethods=http-01,dns 01"')}, {}, POLICY,
     False, "malformed_record", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("both-params", "a.customer.com",
     {"customer.com": caa('0 issue "letsencrypt.org; accounturi=%s; validationmethods=http-01"' % ACCOUNT)}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("unknown-param-ignored", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; policy=ev"')}, {}, POLICY,
     True, "permitted", "customer.com", None),
    ("duplicate-param", "a.customer.com", {"customer.com": caa('0 issue "letsencrypt.org; accounturi=%s; accounturi=%s"' % (ACCOUNT, ACCOUNT))}, {}, POLICY,
     False, "malformed_record", "customer.com", 'customer.com. CAA 0 issue "letsencrypt.org"'),
    ("alias-target-set", "links.customer.com",
     {"links.customer.com": [("CNAME", "edge.esp.net.")], "edge.esp.net": caa('0 issue "sectigo.com"')}, {}, POLICY,
     False, "issuer_not_listed", "links.customer.com", 'edge.esp.net. CAA 0 issue "letsencrypt.org"'),
    ("alias-target-parent-not-consulted", "links.customer.com",
     {"links.customer.com": [("CNAME", "edge.esp.net.")], "esp.net": caa('0 issue ";"')}, {}, POLICY,
     True, "no_caa", None, None),
    ("servfail-at-name-blocks", "links.customer.com", {"customer.com": caa('0 issue "letsencrypt.org"')},
     {("links.customer.com", "CAA"): SERVFAIL}, POLICY, False, "dns_error", None, None),
    ("timeout-at-parent-blocks", "links.customer.com", {}, {("customer.com", "CAA"): TIMEOUT}, POLICY,
     False, "dns_error", None, None),
    ("failure-above-found-set-ignored", "links.customer.com", {"customer.com": caa('0 issue "letsencrypt.org"')},
     {("com", "CAA"): SERVFAIL}, POLICY, True, "permitted", "customer.com", None),
    ("other-identity", "a.customer.com", {"customer.com": caa('0 issue "pki.goog"')}, {}, Policy(["pki.goog"], "http-01", None),
     True, "permitted", "customer.com", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_caa_cases(case, fake_view):
    _id, domain, records, failures, policy, allowed, reason, found_at, remediation = case
    view = fake_view(records, failures)
    result = check_domain(domain, view.lookup, policy)
    assert (result["allowed"], result["reason"], result["found_at"]) == (allowed, reason, found_at), result["message"]
    assert result["remediation"] == remediation
    assert result["domain"] == domain
    if not allowed:
        assert domain in result["message"]


def test_climb_stops_at_first_set_and_skips_root(fake_view):
    view = fake_view({"customer.com": caa('0 issue "letsencrypt.org"')})
    check_domain("a.b.customer.com", view.lookup, POLICY)
    assert view.asked == [("a.b.customer.com", "CAA"), ("b.customer.com", "CAA"), ("customer.com", "CAA")]


def test_no_set_climbs_to_tld(fake_view):
    view = fake_view({})
    result = check_domain("a.customer.com", view.lookup, POLICY)
    assert [name for name, _rdtype in view.asked] == ["a.customer.com", "customer.com", "com"]
    assert result["checked"] == ["a.customer.com", "customer.com", "com"]


def test_records_are_returned(fake_view):
    view = fake_view({"customer.com": caa('128 issue "letsencrypt.org"', '0 iodef "mailto:a@b.c"')})
    result = check_domain("x.customer.com", view.lookup, POLICY)
    assert sorted(result["records"], key=lambda r: r["tag"]) == [
        {"flags": 0, "tag": "iodef", "value": "mailto:a@b.c"},
        {"flags": 128, "tag": "issue", "value": "letsencrypt.org"},
    ]


PARSE = [
    ("letsencrypt.org", ("letsencrypt.org", {})),
    ("  letsencrypt.org  ", ("letsencrypt.org", {})),
    (";", (None, {})),
    ("", (None, {})),
    ("letsencrypt.org;", ("letsencrypt.org", {})),
    ("letsencrypt.org; a=b; c-d=e", ("letsencrypt.org", {"a": "b", "c-d": "e"})),
    ("letsencrypt.org;a = b", ("letsencrypt.org", {"a": "b"})),
    ("; accounturi=x", (None, {"accounturi": "x"})),
    ("letsencrypt.org; a=", ("letsencrypt.org", {"a": ""})),
    ("lets_encrypt.org", None),
    ("-le.org", None),
    ("letsencrypt.org.", None),
    ("letsencrypt.org; =b", None),
    ("letsencrypt.org; a", None),
    ("letsencrypt.org; a=b c", None),
    ("letsencrypt.org; -a=b", None),
    ("letsencrypt.org; a=b;", None),
    ("letsencrypt.org; a=b; a=c", None),
]


@pytest.mark.parametrize("value,expected", PARSE, ids=[p[0] or "empty" for p in PARSE])
def test_parse_issue_value(value, expected):
    parsed = parse_issue_value(value)
    assert (None if parsed is None else (parsed.issuer, parsed.parameters)) == expected


@given(st.text(max_size=60))
def test_parse_issue_value_never_crashes(value):
    parsed = parse_issue_value(value)
    if parsed is not None and parsed.issuer is not None:
        assert ";" not in parsed.issuer and " " not in parsed.issuer


@given(st.lists(st.tuples(st.sampled_from([0, 1, 128, 129, 2]), st.sampled_from(["issue", "issuewild", "iodef", "tbs", "IsSuE"]),
                          st.sampled_from(["letsencrypt.org", ";", "sectigo.com", "letsencrypt.org; validationmethods=dns-01", "x y"])),
                min_size=1, max_size=5), st.booleans())
def test_evaluate_properties(raw, wildcard):
    records = [CAARecord(f, tag, value) for f, tag, value in raw]
    decision = evaluate(records, wildcard, [LE], "http-01", None)
    critical = any(r.flags & 129 and r.tag.lower() not in _caa.KNOWN_TAGS for r in records)
    if critical:
        assert not decision.allowed and decision.reason == _caa.CRITICAL_UNKNOWN
    plain_le = any(r.tag.lower() == ("issuewild" if wildcard and any(x.tag.lower() == "issuewild" for x in records) else "issue")
                   and r.value == LE for r in records)
    if plain_le and not critical:
        assert decision.allowed
