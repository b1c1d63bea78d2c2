# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-domain SSL status from DNS and CAA results."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _status


def verify(name, cname_status="verified", others=(), remediation="x. CNAME e."):
    records = [{"check": "cname", "name": name, "status": cname_status, "message": "m-%s" % cname_status,
                "remediation": None if cname_status == "verified" else remediation}]
    records += [{"check": c, "name": name, "status": s, "message": "", "remediation": "r"} for c, s in others]
    return {"name": name, "verified": all(r["status"] == "verified" for r in records), "ssl_ready": cname_status == "verified",
            "records": records}


CASES = [
    ("ready", verify("a.c.com"), {"domain": "a.c.com", "allowed": True}, "pending", "awaiting_issuance", None),
    ("ready-other-issues", verify("a.c.com", others=[("spf", "missing")]), {"domain": "a.c.com", "allowed": True},
     "pending", "awaiting_issuance", None),
    ("not-routed", verify("a.c.com", "mismatch"), None, "unknown", "dns_not_ready", "x. CNAME e."),
    ("dns-error", verify("a.c.com", "error"), None, "unknown", "dns_error", None),
    ("caa-blocked", verify("a.c.com"),
     {"domain": "a.c.com", "allowed": False, "reason": "issuer_not_listed", "message": "no", "remediation": 'c.com. CAA 0 issue "letsencrypt.org"'},
     "unknown", "caa_blocked", 'c.com. CAA 0 issue "letsencrypt.org"'),
    ("caa-dns", verify("a.c.com"), {"domain": "a.c.com", "allowed": False, "reason": "dns_error", "message": "sf"},
     "unknown", "caa_dns_error", None),
    ("no-route", {"name": "a.c.com", "verified": True, "ssl_ready": False, "records": [{"check": "spf", "name": "a.c.com", "status": "verified"}]},
     None, "unknown", "no_edge_route", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_domain_status(case):
    _id, ver, caa, status, reason, remediation = case
    entry = _status.domain_status("a.c.com", ver, caa)
    assert (entry["ssl_status"], entry["reason"], entry["remediation"]) == (status, reason, remediation)
    assert entry["label"] == {"pending": "SSL Pending", "unknown": "SSL Unknown"}[status]


def test_statuses_follow_normalised_names_and_table():
    entries = _status.statuses([{"name": "A.C.com"}, {"name": "b.c.com"}], [verify("a.c.com"), verify("b.c.com", "missing")],
                               [{"domain": "a.c.com", "allowed": True}])
    assert [(e["domain"], e["label"]) for e in entries] == [("a.c.com", "SSL Pending"), ("b.c.com", "SSL Unknown")]
    lines = _status.table(entries + [_status.status_entry("long.c.com", "issued", "valid", "", not_after="2027-02-21T10:00:00Z")])
    assert lines[0] == "DOMAIN      STATUS       DETAIL"
    assert lines[1] == "a.c.com     SSL Pending  awaiting_issuance"
    assert lines[2] == "b.c.com     SSL Unknown  dns_not_ready: publish x. CNAME e."
    assert lines[3] == "long.c.com  SSL Issued   expires 2027-02-21"


def test_verify_input_defaults_edge():
    got = _status.verify_input([{"name": "l.c.com", "kind": "tracking", "extra": 1}, {"name": "em.c.com", "https": False, "dmarc": "none"},
                                {"name": "x.c.com", "cname": "own.edge"}], "edge.esp")
    assert got == [{"name": "l.c.com", "kind": "tracking", "cname": "edge.esp"}, {"name": "em.c.com", "dmarc": "none"},
                   {"name": "x.c.com", "cname": "own.edge"}]


def test_acme_result_takes_precedence():
    acme = [{"domain": "a.c.com", "ssl_status": "issued", "label": "SSL Issued", "reason": "issued", "message": "Issued.",
             "action": "issued", "serial": "0a", "not_after": "2027-02-21T00:00:00Z", "fullchain": "/x/fullchain.pem"}]
    entries = _status.statuses([{"name": "a.c.com"}, {"name": "b.c.com"}], [verify("a.c.com", others=[("spf", "missing")]), verify("b.c.com", "missing")],
                               [{"domain": "a.c.com", "allowed": True}], acme)
    assert (entries[0]["label"], entries[0]["serial"], entries[0]["fullchain"]) == ("SSL Issued", "0a", "/x/fullchain.pem")
    assert entries[0]["dns_issues"][0]["check"] == "spf"
    assert (entries[1]["label"], entries[1]["reason"]) == ("SSL Unknown", "dns_not_ready")
    assert _status.table(entries)[1] == "a.c.com  SSL Issued   expires 2027-02-21"


def test_acme_input_orders_the_ready_and_holds_the_others():
    domains = [{"name": "A.c.com", "alt_names": ["www.a.c.com"]}, {"name": "b.c.com"}, {"name": "c.c.com"}, {"name": "d.c.com"}]
    ver = [verify("a.c.com"), verify("b.c.com"), verify("c.c.com", "mismatch"),
           {"name": "d.c.com", "verified": True, "ssl_ready": False, "records": [{"check": "spf", "name": "d.c.com", "status": "verified"}]}]
    caa = [{"domain": "a.c.com", "allowed": True},
           {"domain": "b.c.com", "allowed": False, "reason": "issuer_not_listed", "message": "no", "remediation": "c.com. CAA 0 issue \"x\""}]
    assert _status.acme_input(domains, ver, caa) == [
        {"domain": "a.c.com", "alt_names": ["www.a.c.com"]},
        {"domain": "b.c.com", "alt_names": [], "hold": {"reason": "caa_blocked", "explanation": "no", "remediation": "c.com. CAA 0 issue \"x\""}},
        {"domain": "c.c.com", "alt_names": [], "hold": {"reason": "dns_not_ready", "explanation": "m-mismatch", "remediation": "x. CNAME e."}},
    ]  # d.c.com is not served over HTTPS by us: not handed to the ACME module at all


# hold reason, certificate valid → status, reason, message starts with
HELD = [
    ("dns_not_ready", True, "pending", "dns_drift", "DNS changed after the certificate was issued: "),
    ("caa_blocked", True, "pending", "caa_drift", "CAA changed after the certificate was issued: "),
    ("caa_dns_error", True, "issued", "caa_dns_error", "why"),
    ("dns_error", True, "issued", "dns_error", "why"),
    ("dns_error", False, "pending", "dns_error", "why"),
    ("caa_blocked", False, "pending", "caa_drift", "CAA changed"),
]


@pytest.mark.parametrize("reason, valid, status, new_reason, starts", HELD, ids=["%s-%s" % (h[0], h[1]) for h in HELD])
def test_held_certificates(reason, valid, status, new_reason, starts):
    got = _status.held(reason, "why", valid)
    assert got[:2] == (status, new_reason) and got[2].startswith(starts) and got[2].endswith("why")


def test_statuses_of_held_certificates():
    ver = [verify("a.c.com", "mismatch"), verify("b.c.com", "mismatch")]
    acme = [
        {"domain": "a.c.com", "held": True, "serial": None, "ssl_status": "pending", "reason": "dns_not_ready", "message": "m", "action": "none"},
        {"domain": "b.c.com", "held": True, "serial": "0a", "ssl_status": "pending", "reason": "dns_drift", "message": "DNS changed",
         "remediation": "x. CNAME e.", "action": "none", "not_after": "2027-02-21T00:00:00Z"},
    ]
    never, drifted = _status.statuses([{"name": "a.c.com"}, {"name": "b.c.com"}], ver, None, acme)
    assert (never["ssl_status"], never["reason"], never["remediation"]) == ("unknown", "dns_not_ready", "x. CNAME e.")
    assert (drifted["ssl_status"], drifted["reason"], drifted["serial"], drifted["held"]) == ("pending", "dns_drift", "0a", True)
    assert _status.table([drifted])[1] == "b.c.com  SSL Pending  dns_drift: publish x. CNAME e."
    issued = dict(drifted, ssl_status="issued", label="SSL Issued", reason="caa_dns_error", remediation=None)
    assert _status.table([issued])[1] == "b.c.com  SSL Issued   expires 2027-02-21; renewal held (caa_dns_error)"


def test_table_shows_the_next_renewal_of_an_issued_domain():
    entry = {"domain": "a.c.com", "ssl_status": "issued", "label": "SSL Issued", "not_after": "2027-02-21T00:00:00Z",
             "renew_after": "2027-01-22T08:00:00Z"}
    assert _status.table([entry])[1] == "a.c.com  SSL Issued   expires 2027-02-21, renews from 2027-01-22"


def test_table_says_when_the_renewal_of_a_served_certificate_failed():
    entry = {"domain": "a.c.com", "ssl_status": "issued", "label": "SSL Issued", "not_after": "2027-02-21T00:00:00Z",
             "renew_after": None, "action": "failed", "reason": "server_config_broken"}
    assert _status.table([entry])[1] == "a.c.com  SSL Issued   expires 2027-02-21; renewal failed (server_config_broken), still served"


NOW7 = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


def record(name, not_before="2026-11-01T00:00:00Z", not_after="2027-01-30T00:00:00Z", serial="0a"):
    return {"domain": name, "ssl_status": "issued", "label": "SSL Issued", "reason": "not_due", "message": "fine", "remediation": None,
            "serial": serial, "not_before": not_before, "not_after": not_after}


# case, record, verify, caa, served → status, reason, number of alerts, expiring
REPORT = [
    ("all-well", record("a.c.com"), verify("a.c.com"), {"domain": "a.c.com", "allowed": True}, {"domain": "a.c.com", "reason": "served_ok"},
     "issued", "not_due", 0, False),
    ("cname-moved", record("a.c.com"), verify("a.c.com", "mismatch"), None, None, "pending", "dns_drift", 1, False),
    ("caa-now-forbids", record("a.c.com"), verify("a.c.com"),
     {"domain": "a.c.com", "allowed": False, "reason": "issuer_not_listed", "message": "no", "remediation": 'c.com. CAA 0 issue "x"'},
     None, "pending", "caa_drift", 1, False),
    ("caa-lookup-fails", record("a.c.com"), verify("a.c.com"), {"domain": "a.c.com", "allowed": False, "reason": "dns_error", "message": "sf"},
     None, "issued", "caa_dns_error", 1, False),
    ("not-reloaded", record("a.c.com"), None, None,
     {"domain": "a.c.com", "reason": "served_mismatch", "message": "serves 0b", "remediation": "reload", "served_serial": "b"},
     "issued", "served_mismatch", 1, False),
    ("another-server-answers", record("a.c.com"), None, None,
     {"domain": "a.c.com", "reason": "served_wrong_certificate", "message": "other", "remediation": "x", "served_serial": "c"},
     "pending", "served_wrong_certificate", 1, False),
    ("last-tenth", record("a.c.com", "2026-09-10T00:00:00Z", "2026-12-09T00:00:00Z"), verify("a.c.com"), {"domain": "a.c.com", "allowed": True},
     None, "issued", "not_due", 1, True),
    ("never-issued-not-routed", dict(record("a.c.com", None, None, None), ssl_status="unknown", reason="dns_not_ready"),
     verify("a.c.com", "mismatch"), None, None, "unknown", "dns_not_ready", 0, False),
]


@pytest.mark.parametrize("case", REPORT, ids=[r[0] for r in REPORT])
def test_report_rows(case):
    _id, rec, ver, caa, served, status, reason, alerts, expiring = case
    rows = _status.report_rows([rec], "edge-1", [ver] if ver else None, [caa] if caa else None, [served] if served else None, NOW7)
    row = rows[0]
    assert (row["ssl_status"], row["reason"], len(row["alerts"]), row["expiring"], row["node"]) == (status, reason, alerts, expiring, "edge-1")
    assert row["serial"] == rec["serial"], "the certificate on record is kept in the row"


@pytest.mark.parametrize("not_before, not_after, expected", [
    ("2026-09-02T00:00:00Z", "2026-12-01T12:00:00Z", "expires in 12 hour(s)"),
    ("2026-09-10T00:00:00Z", "2026-12-09T00:00:00Z", "expires in 8 day(s)"),
    ("2026-09-01T00:00:00Z", "2026-11-30T00:00:00Z", "expired at 2026-11-30T00:00:00Z"),
    ("2026-11-01T00:00:00Z", "2027-01-30T00:00:00Z", None),
    (None, "2026-12-02T00:00:00Z", None),
])
def test_expiry_guard(not_before, not_after, expected):
    alert = _status.expiry_alert({"not_before": not_before, "not_after": not_after}, NOW7)
    assert (alert is None) if expected is None else (expected in alert)


def pending(**extra):
    entry = {"domain": "click.example.org", "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_not_ready",
             "message": "m", "remediation": "click.example.org. CNAME edge.linkcert.example."}
    entry.update(extra)
    return entry


def watch(**extra):
    found = {"since": "2026-12-04T10:00:00Z", "attempts": 3, "last_check": "2026-12-04T10:03:00Z", "next_check": "2026-12-04T10:08:00Z",
             "stopped": None}
    found.update(extra)
    return found


FIX = "click.example.org  SSL Unknown  dns_not_ready: publish click.example.org. CNAME edge.linkcert.example."
STOPPED = dict(next_check=None, stopped="2027-01-03T10:00:00Z", attempts=151)
# case, entry → the table line
WATCHED = [
    ("no-watch", pending(), FIX),
    ("watch-none", pending(watch=None), FIX),
    ("watching", pending(watch=watch()), FIX + "; next check 2026-12-04 10:08 UTC (3 checks since 2026-12-04 10:00 UTC)"),
    ("one-check", pending(watch=watch(attempts=1, next_check="2026-12-04T10:01:00Z")),
     FIX + "; next check 2026-12-04 10:01 UTC (1 check since 2026-12-04 10:00 UTC)"),
    ("next-day-offset-and-fraction", pending(watch=watch(next_check="2026-12-05T01:30:00.123456+02:00", attempts=40)),
     FIX + "; next check 2026-12-04 23:30 UTC (40 checks since 2026-12-04 10:00 UTC)"),
    ("stopped", pending(reason="watch_stopped", watch=watch(**STOPPED)),
     FIX.replace("dns_not_ready", "watch_stopped") + "; not checked on its own since 2027-01-03 10:00 UTC (after 151 checks): verify it again"),
    ("stopped-message", pending(reason="watch_stopped", remediation=None, message="No longer checked on its own.", watch=watch(**STOPPED)),
     "click.example.org  SSL Unknown  watch_stopped: No longer checked on its own.; not checked on its own since 2027-01-03 10:00 UTC "
     "(after 151 checks): verify it again"),
    ("stopped-unreadable", pending(watch=watch(next_check=None, stopped="soon", attempts="many")),
     FIX + "; not checked on its own: verify it again"),
    ("pending-ca-error", pending(ssl_status="pending", label="SSL Pending", reason="acme_connection", remediation=None, watch=watch()),
     "click.example.org  SSL Pending  acme_connection; next check 2026-12-04 10:08 UTC (3 checks since 2026-12-04 10:00 UTC)"),
    ("issued-ignores-a-stale-watch", pending(ssl_status="issued", label="SSL Issued", not_after="2027-02-21T00:00:00Z", watch=watch()),
     "click.example.org  SSL Issued   expires 2027-02-21"),
    ("node-and-alert-stay-last", pending(watch=watch(), node="edge-1", expiring=True, not_before="2020-01-01T00:00:00Z",
                                         not_after="2020-03-01T00:00:00Z"),
     FIX + "; next check 2026-12-04 10:08 UTC (3 checks since 2026-12-04 10:00 UTC)"
     "  ALERT: the certificate expired at 2020-03-01T00:00:00Z and was not renewed  [edge-1]"),
    # What the watcher wrote is a file on disk: whatever is unreadable is left out, never a crash.
    ("next-check-unreadable", pending(watch=watch(next_check="2026-13-40T99:00:00Z")), FIX),
    ("next-check-null-not-stopped", pending(watch=watch(next_check=None)), FIX),
    ("next-check-not-a-string", pending(watch=watch(next_check=1765000000)), FIX),
    ("next-check-none-in-utc", pending(watch=watch(next_check="9999-12-31T23:59:00-01:00")), FIX),
    ("stopped-none-in-utc", pending(watch=watch(next_check=None, stopped="0001-01-01T00:00:00+01:00")),
     FIX + "; not checked on its own (after 3 checks): verify it again"),
    ("attempts-bool", pending(watch=watch(attempts=True)), FIX + "; next check 2026-12-04 10:08 UTC (checked since 2026-12-04 10:00 UTC)"),
    ("attempts-negative", pending(watch=watch(attempts=-2)), FIX + "; next check 2026-12-04 10:08 UTC (checked since 2026-12-04 10:00 UTC)"),
    ("attempts-string", pending(watch=watch(attempts="3")), FIX + "; next check 2026-12-04 10:08 UTC (checked since 2026-12-04 10:00 UTC)"),
    ("attempts-float", pending(watch=watch(attempts=3.0)), FIX + "; next check 2026-12-04 10:08 UTC (checked since 2026-12-04 10:00 UTC)"),
    ("zero-attempts", pending(watch=watch(attempts=0)), FIX + "; next check 2026-12-04 10:08 UTC (0 checks since 2026-12-04 10:00 UTC)"),
    ("since-unreadable", pending(watch=watch(since="yesterday")), FIX + "; next check 2026-12-04 10:08 UTC (3 checks)"),
    ("nothing-but-next", pending(watch={"next_check": "2026-12-04T10:08:00Z"}), FIX + "; next check 2026-12-04 10:08 UTC"),
    ("empty-watch", pending(watch={}), FIX),
    ("watch-not-a-dict", pending(watch="2026-12-04T10:08:00Z"), FIX),
    ("watch-a-list", pending(watch=[watch()]), FIX),
]


@pytest.mark.parametrize("case", WATCHED, ids=[w[0] for w in WATCHED])
def test_table_says_when_the_pending_watcher_checks_next(case):
    _id, entry, line = case
    lines = _status.table([entry])
    assert lines[1] == line
    assert lines[1].split()[:3] == ["click.example.org", "SSL", entry["label"].split()[1]], "domain and label still lead the line"
