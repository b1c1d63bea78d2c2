# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The per-domain SSL status: SSL Issued / SSL Pending / SSL Unknown, with reason and fix.

Pure functions shared by the filter plugins and (later) the ACME module, so a
domain's status is worded the same wherever it is shown.
"""

from __future__ import annotations

import datetime
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_renewal import CLOCK_SKEW_TOLERANCE
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain

ISSUED = "issued"
PENDING = "pending"
UNKNOWN = "unknown"
LABELS = {ISSUED: "SSL Issued", PENDING: "SSL Pending", UNKNOWN: "SSL Unknown"}


def status_entry(domain: str, status: str, reason: str, message: str, remediation: t.Optional[str] = None,
                 **extra: t.Any) -> t.Dict[str, t.Any]:
    entry = {"domain": domain, "ssl_status": status, "label": LABELS[status], "reason": reason,
             "message": message, "remediation": remediation}
    entry.update(extra)
    return entry


_VERIFY_KEYS = ("name", "kind", "cname", "spf_include", "dkim", "dmarc", "return_path")


def verify_input(domains: t.Sequence[t.Mapping[str, t.Any]], edge_cname: t.Optional[str]) -> t.List[t.Dict[str, t.Any]]:
    """``linkcert_domains`` entries → ``sending_domain_verify`` domains.

    Every domain must route to the edge (``cname``: its own, else ``edge_cname``)
    unless it sets ``https: false`` (a sending domain we never serve).
    """
    result = []
    for entry in domains:
        item = {key: entry[key] for key in _VERIFY_KEYS if entry.get(key) not in (None, "", [])}
        if entry.get("https", True) and "cname" not in item and edge_cname:
            item["cname"] = edge_cname
        result.append(item)
    return result


# A domain that had a certificate and whose DNS or CAA has since changed: its DNS reason becomes a drift.
DRIFT = {"dns_not_ready": "dns_drift", "caa_blocked": "caa_drift"}


def acme_input(domains: t.Sequence[t.Mapping[str, t.Any]], verify_results: t.Sequence[t.Mapping[str, t.Any]],
               caa_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]]) -> t.List[t.Dict[str, t.Any]]:
    """The certificates to hand to acme_http01_cert: every domain served over HTTPS.

    Those that route to the edge and whose CAA allows issuance are ordered as due; the others carry a
    ``hold`` (their DNS or CAA finding), so nothing is ordered for them and an installed certificate is
    kept and reported (drift), never dropped.
    """
    caa = _index(caa_results, "domain")
    wanted = []
    for entry, result in zip(domains, verify_results):
        name = result["name"]
        if not any(r["check"] == "cname" for r in result.get("records", [])):
            continue  # not served over HTTPS by us
        item: t.Dict[str, t.Any] = {"domain": name, "alt_names": list(entry.get("alt_names") or []) if isinstance(entry, dict) else []}
        found = domain_status(name, result, caa.get(name))
        if found["ssl_status"] != PENDING:
            item["hold"] = {"reason": found["reason"], "explanation": found["message"], "remediation": found["remediation"]}
        wanted.append(item)
    return wanted


def held(reason: str, message: str, valid: bool) -> t.Tuple[str, str, str]:
    """Status, reason and message of a certificate held back by its DNS or CAA finding.

    A change the customer made (the name no longer routes to the edge, CAA now forbids our CA) is a
    drift and the domain turns pending long before expiry; a lookup that failed keeps a valid
    certificate issued (the next run asks again); an expired one is pending either way.
    """
    drift = DRIFT.get(reason)
    if drift:
        return PENDING, drift, "%s changed after the certificate was issued: %s" % ("CAA" if drift == "caa_drift" else "DNS", message)
    return (ISSUED if valid else PENDING), reason, message


def _index(results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]], key: str) -> t.Dict[str, t.Mapping[str, t.Any]]:
    return {str(r[key]): r for r in (results or [])}


def _dns_issues(verify: t.Optional[t.Mapping[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
    if not verify:
        return []
    return [{"check": r["check"], "name": r["name"], "status": r["status"], "remediation": r.get("remediation")}
            for r in verify.get("records", []) if r["status"] != "verified"]


def domain_status(name: str, verify: t.Optional[t.Mapping[str, t.Any]], caa: t.Optional[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    """Status of a domain that has no certificate yet, from its DNS and CAA results."""
    issues = _dns_issues(verify)
    extra = {"dns_verified": bool(verify and verify.get("verified")), "dns_issues": issues}
    if verify is None:
        return status_entry(name, UNKNOWN, "dns_not_checked", "The DNS records of %s were not checked." % name, **extra)
    routing = [r for r in verify.get("records", []) if r["check"] == "cname"]
    if not routing:
        return status_entry(name, UNKNOWN, "no_edge_route",
                            "%s has no cname to the edge configured, so it cannot be served over HTTPS by us." % name, **extra)
    if routing[0]["status"] == "error":
        return status_entry(name, UNKNOWN, "dns_error", routing[0]["message"], None, **extra)
    if not verify.get("ssl_ready"):
        return status_entry(name, UNKNOWN, "dns_not_ready", routing[0]["message"], routing[0].get("remediation"), **extra)
    if caa is None:
        return status_entry(name, UNKNOWN, "caa_not_checked", "CAA of %s was not checked." % name, **extra)
    if not caa.get("allowed"):
        reason = "caa_dns_error" if caa.get("reason") == "dns_error" else "caa_blocked"
        return status_entry(name, UNKNOWN, reason, caa["message"], caa.get("remediation"), caa_reason=caa.get("reason"), **extra)
    message = "DNS routes %s to the edge and CAA allows issuance; the certificate has not been issued yet." % name
    if issues:
        message += " %d other record(s) need attention." % len(issues)
    return status_entry(name, PENDING, "awaiting_issuance", message, None, **extra)


CERT_FIELDS = ("action", "held", "serial", "issuer", "not_before", "not_after", "renew_after", "privkey", "cert", "chain", "fullchain", "names")


def statuses(domains: t.Sequence[t.Any], verify_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]],
             caa_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]],
             acme_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None) -> t.List[t.Dict[str, t.Any]]:
    """One status per domain (names as the modules normalised them), in the given order.

    A domain the ACME module handled takes its status from there (with the DNS findings
    kept alongside); the others are worded from their DNS and CAA results.
    """
    by_name = _index(verify_results, "name")
    by_domain = _index(caa_results, "domain")
    by_cert = _index(acme_results, "domain")
    names = [d["name"] if isinstance(d, dict) else d for d in domains]
    ordered = [r["name"] for r in (verify_results or [])] or [str(n) for n in names]
    result = []
    for name in ordered:
        entry = domain_status(name, by_name.get(name), by_domain.get(name))
        cert = by_cert.get(name)
        if cert is not None and cert.get("held") and not cert.get("serial"):
            cert = None  # held and never issued: the DNS or CAA finding is the status
        if cert is not None:
            entry.update(status_entry(name, cert["ssl_status"], cert["reason"], cert["message"], cert.get("remediation"),
                                      dns_verified=entry["dns_verified"], dns_issues=entry["dns_issues"]))
            entry.update({key: cert.get(key) for key in CERT_FIELDS})
        result.append(entry)
    return with_alerts(result)


def _when(text: t.Any) -> t.Optional[datetime.datetime]:
    """An ISO 8601 time from a record, or None when it is missing or unreadable."""
    try:
        return parse_iso(str(text)) if text else None
    except ValueError:
        return None


def expiry_alert(entry: t.Mapping[str, t.Any], now: t.Optional[datetime.datetime] = None) -> t.Optional[str]:
    """The expiry guard: an alert when the installed certificate is in the last tenth of its lifetime (or expired).

    Renewal is due at a third (half for short lifetimes) of the lifetime left, or inside the CA's ARI
    window, so a certificate this close to its end is one that is not renewing. None otherwise.
    """
    not_before, not_after = _when(entry.get("not_before")), _when(entry.get("not_after"))
    if not_before is None or not_after is None or not_after <= not_before:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    left = not_after - now
    if left > (not_after - not_before) / 10:
        return None
    if left.total_seconds() <= 0:
        return "the certificate expired at %s and was not renewed" % entry["not_after"]
    hours = left.total_seconds() / 3600.0
    span = "%d day(s)" % int(hours // 24) if hours >= 48 else "%d hour(s)" % max(1, int(hours)) if hours >= 1 else "%d minute(s)" % max(1, int(hours * 60))
    return "the certificate expires in %s (%s), in the last tenth of its lifetime, and has not been renewed" % (span, entry["not_after"])


def with_alerts(entries: t.Sequence[t.Mapping[str, t.Any]], now: t.Optional[datetime.datetime] = None) -> t.List[t.Dict[str, t.Any]]:
    """The entries with ``alerts`` (a list of strings, the expiry guard's first), keeping alerts already there."""
    result = []
    for entry in entries:
        item = dict(entry)
        alerts = [a for a in (item.get("alerts") or []) if a]
        expiring = expiry_alert(item, now)
        if expiring and expiring not in alerts:
            alerts.insert(0, expiring)
        item["alerts"] = alerts
        item["expiring"] = bool(expiring)
        result.append(item)
    return result


SERVED_BROKEN = ("served_wrong_certificate", "served_expired", "not_served")


def report_rows(records: t.Sequence[t.Mapping[str, t.Any]], node: str, verify_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None,
                caa_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None,
                served_results: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None,
                now: t.Optional[datetime.datetime] = None) -> t.List[t.Dict[str, t.Any]]:
    """status.yml's rows for one edge: each recorded domain, checked again against DNS, CAA and what is served.

    ``records`` are the state files (``domain_status``). A domain with a certificate whose DNS or CAA has
    changed since is reported as the renewal run would hold it (``dns_drift`` / ``caa_drift``, or a lookup
    error); one whose edge serves another certificate than the one on disk gets the served check's reason
    (``served_mismatch`` and the others), SSL Pending when clients get no valid certificate for the name.
    Every row gets ``node`` and ``alerts`` (expiry guard first).
    """
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    by_name, by_caa, by_served = _index(verify_results, "name"), _index(caa_results, "domain"), _index(served_results, "domain")
    rows = []
    for record in records:
        row = dict(record, node=node)
        name = str(row.get("domain"))
        alerts: t.List[str] = []
        verify = by_name.get(name)
        if row.get("serial") and verify is not None:
            found = domain_status(name, verify, by_caa.get(name))
            if found["ssl_status"] != PENDING:
                not_before, not_after = _when(row.get("not_before")), _when(row.get("not_after"))
                valid = bool(not_before and not_after and not_before - CLOCK_SKEW_TOLERANCE <= moment < not_after)
                status, reason, message = held(found["reason"], found["message"], valid)
                row.update(status_entry(name, status, reason, message, found["remediation"]))
                alerts.append("%s: %s" % (reason, message))
        served = by_served.get(name)
        if served is not None and served.get("reason") != "served_ok":
            row.update(served_reason=served["reason"], served_serial=served.get("served_serial"))
            broken = served["reason"] in SERVED_BROKEN
            row.update(status_entry(name, PENDING if broken else row.get("ssl_status", UNKNOWN), served["reason"], served["message"],
                                    served.get("remediation")))
            alerts.append("%s: %s" % (served["reason"], served["message"]))
        elif served is not None:
            row["served_serial"] = served.get("served_serial")
        row["alerts"] = alerts
        rows.extend(with_alerts([row], moment))
    return rows


def table(entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """Aligned lines under a header: domain, label, detail (expiry and next renewal, or reason and the record to publish).

    A domain not issued yet that the pending watcher checks (its ``watch``) says when it is checked next and how often
    it was (``; next check 2026-12-04 10:08 UTC (3 checks since 2026-12-04 10:00 UTC)``), or that it is no longer
    checked on its own (``; not checked on its own since 2027-01-03 10:00 UTC (after 40 checks): verify it again``).
    Times are shown in UTC (the table has no clock); an unreadable one, or a count that is not a non-negative whole
    number, is left out.
    """

    def shown(value: t.Any) -> t.Optional[str]:
        try:
            when = _when(value)
        except OverflowError:  # a time that is none in UTC (year 1 or 9999 with an offset)
            return None
        return when.strftime("%Y-%m-%d %H:%M UTC") if when is not None else None

    def watched(watch: t.Any) -> str:
        if not isinstance(watch, t.Mapping):
            return ""
        attempts = watch.get("attempts")
        count = attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0 else None
        checks = None if count is None else "%d check%s" % (count, "" if count == 1 else "s")
        if watch.get("stopped"):
            stopped = shown(watch["stopped"])
            return "; not checked on its own%s%s: verify it again" % (
                " since %s" % stopped if stopped else "", " (after %s)" % checks if checks else "")
        next_check = shown(watch.get("next_check"))
        if next_check is None:
            return ""
        since = shown(watch.get("since"))
        so_far = " ".join(part for part in (checks or ("checked" if since else ""), "since %s" % since if since else "") if part)
        return "; next check %s%s" % (next_check, " (%s)" % so_far if so_far else "")

    if not entries:
        return ["(no domains)"]
    width = max([len(str(e["domain"])) for e in entries] + [len("DOMAIN")])
    lines = ["%s  %-11s  %s" % ("DOMAIN".ljust(width), "STATUS", "DETAIL")]
    for entry in entries:
        if entry.get("ssl_status") == ISSUED and entry.get("not_after"):
            detail = "expires %s" % str(entry["not_after"])[:10]
            if entry.get("renew_after"):
                detail += ", renews from %s" % str(entry["renew_after"])[:10]
            if entry.get("action") == "failed":
                detail += "; renewal failed (%s), still served" % entry.get("reason", "")
            elif entry.get("held"):
                detail += "; renewal held (%s)" % entry.get("reason", "")
                if entry.get("remediation"):
                    detail += ": publish %s" % " + ".join(str(entry["remediation"]).splitlines())
        else:
            detail = entry.get("reason", "")
            if entry.get("remediation"):
                detail += ": publish %s" % " + ".join(str(entry["remediation"]).splitlines())
            elif entry.get("ssl_status") == UNKNOWN and entry.get("message"):
                detail += ": %s" % entry["message"]
            elif entry.get("dns_issues"):
                detail += " (%d other DNS record(s) to fix)" % len(entry["dns_issues"])
        if entry.get("ssl_status") != ISSUED:
            detail += watched(entry.get("watch"))
        if entry.get("expiring"):
            detail += "  ALERT: %s" % expiry_alert(entry)
        node = ("  [%s]" % entry["node"]) if entry.get("node") else ""
        lines.append("%s  %-11s  %s%s" % (str(entry["domain"]).ljust(width), entry.get("label", ""), detail, node))
    return lines


def with_records(entries: t.Sequence[t.Mapping[str, t.Any]], records: t.Sequence[t.Mapping[str, t.Any]],
                 names: t.Optional[t.Sequence[str]] = None) -> t.List[t.Dict[str, t.Any]]:
    """This run's status entries with what their records on the edge add (the pending watcher's ``watch``), and, for
    each of ``names`` this run did not check (a pending domain whose next check has not come), its record as it is.

    In the order of ``names`` (normalised domains) when given, else of ``entries``."""
    by_entry, by_record = _index(entries, "domain"), _index(records, "domain")
    order = list(names) if names is not None else [str(e["domain"]) for e in entries]
    result = []
    for name in order:
        entry, found = by_entry.get(name), by_record.get(name)
        if entry is not None:
            item = dict(entry)
            if found is not None and found.get("watch") is not None:
                item["watch"] = found["watch"]
                if found["watch"].get("stopped") and found.get("reason") == "watch_stopped":  # the watcher gave up: say so
                    item.update({key: found.get(key) for key in ("ssl_status", "label", "reason", "message")})
            result.append(item)
        elif found is not None:
            result.append(dict(found))
    return with_alerts(result)


def without_domains(domains: t.Sequence[t.Mapping[str, t.Any]], names: t.Iterable[str]) -> t.List[t.Mapping[str, t.Any]]:
    """``linkcert_domains`` entries except those whose name (normalised) is one of ``names``."""
    skip = {normalize_domain(name, what="names item") for name in names}
    return [entry for entry in domains if normalize_domain(entry.get("name"), what="domain name") not in skip]
