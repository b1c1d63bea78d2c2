# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The DNS records a tracking or sending domain must publish, checked one by one.

Each check asks a ``View`` (the recursive resolvers, or one authoritative
server) and returns a record result: what was expected, what was found, a
status (``verified``, ``missing``, ``mismatch``, ``error``), a message and the
exact record to publish.
"""

from __future__ import annotations

import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils import _mailrecords as mr
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import NXDOMAIN, OK, Lookup, View

VERIFIED = "verified"
MISSING = "missing"
MISMATCH = "mismatch"
ERROR = "error"
_WORST_FIRST = (ERROR, MISSING, MISMATCH, VERIFIED)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


class DkimSpec(t.NamedTuple):
    selector: str
    cname: t.Optional[str]
    key: t.Optional[str]


class DomainSpec(t.NamedTuple):
    name: str
    kind: str
    cname: t.Optional[str]
    spf_include: t.Optional[str]
    dkim: t.List[DkimSpec]
    dmarc: t.Optional[str]
    return_path: t.Optional[t.Tuple[str, str]]


# ------------------------------------------------------------------ input

def parse_specs(raw_domains: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[DomainSpec]:
    """Validate and normalise the ``domains`` option, naming the first bad item."""
    specs: t.List[DomainSpec] = []
    seen: t.Dict[str, int] = {}
    for index, raw in enumerate(raw_domains, start=1):
        where = "domains[%d]" % index
        spec = _parse_spec(raw, where)
        if spec.name in seen:
            raise InputError("%s: %s is listed twice (also as domains[%d])" % (where, spec.name, seen[spec.name]), item=spec.name)
        seen[spec.name] = index
        specs.append(spec)
    return specs


def _target(value: t.Optional[str], what: str) -> t.Optional[str]:
    if value is None:
        return None
    return normalize_domain(value, what=what, allow_underscore=True)


def _parse_spec(raw: t.Mapping[str, t.Any], where: str) -> DomainSpec:
    name = normalize_domain(raw.get("name"), what="%s.name" % where)
    cname = _target(raw.get("cname"), "%s.cname" % where)
    spf_include = _target(raw.get("spf_include"), "%s.spf_include" % where)
    dkim = [_parse_dkim(item, name, "%s.dkim[%d]" % (where, i)) for i, item in enumerate(raw.get("dkim") or [], start=1)]
    return_path = None
    if raw.get("return_path"):
        rp = raw["return_path"]
        return_path = (normalize_domain(rp.get("name"), what="%s.return_path.name" % where, allow_underscore=True),
                       normalize_domain(rp.get("cname"), what="%s.return_path.cname" % where, allow_underscore=True))
    kind = raw.get("kind") or ("tracking" if cname and not (spf_include or dkim or raw.get("dmarc") or return_path) else "sending")
    if kind == "tracking" and not cname:
        raise InputError("%s: tracking domain %s needs cname (the edge host name it must point to)" % (where, name), item=name)
    if not (cname or spf_include or dkim or raw.get("dmarc") or return_path):
        raise InputError("%s: %s has nothing to verify; give cname, spf_include, dkim, dmarc or return_path" % (where, name), item=name)
    return DomainSpec(name, kind, cname, spf_include, dkim, raw.get("dmarc"), return_path)


def _parse_dkim(item: t.Mapping[str, t.Any], name: str, where: str) -> DkimSpec:
    selector = item.get("selector")
    if not isinstance(selector, str) or not _SELECTOR.match(selector) or ".." in selector:
        raise InputError("%s.selector %r is not a DKIM selector (letters, digits, '-', '_' and '.')" % (where, selector), item=str(selector))
    normalize_domain("%s._domainkey.%s" % (selector, name), what="%s record name" % where, allow_underscore=True)
    if item.get("cname") and item.get("key"):
        raise InputError("%s: give either cname or key for selector %s, not both" % (where, selector), item=selector)
    key = None
    if item.get("key"):
        key = mr.normalize_dkim_key(item["key"])
        if not _BASE64.match(key):
            raise InputError("%s.key for selector %s is not a base64 public key" % (where, selector), item=selector)
    return DkimSpec(selector.lower(), _target(item.get("cname"), "%s.cname" % where), key)


# ----------------------------------------------------------------- results

def _result(check: str, name: str, expected: t.Any, found: t.Any, status: str, message: str,
            remediation: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    return {"check": check, "name": name, "expected": expected, "found": found, "status": status,
            "message": message, "remediation": remediation if status != VERIFIED else None}


def _failure(check: str, name: str, expected: t.Any, lookup: Lookup) -> t.Dict[str, t.Any]:
    return _result(check, name, expected, None, ERROR, lookup.describe_failure() + "; the record could not be checked.")


def _cname_record(name: str, target: str) -> str:
    return "%s. CNAME %s." % (name, target)


def _chain_text(lookup: Lookup) -> str:
    return " -> ".join(lookup.chain)


# -------------------------------------------------------------- tracking

def check_tracking(view: View, name: str, target: str) -> t.Dict[str, t.Any]:
    """The name must CNAME (maybe via a chain) to ``target``, or resolve to exactly its addresses."""
    fix = _cname_record(name, target)
    a = view.lookup(name, "A")
    if a.failed:
        return _failure("cname", name, target, a)
    if target in a.chain[1:]:
        if a.status == NXDOMAIN or (not a.rdata and not view.lookup(a.canonical, "AAAA").rdata):
            return _result("cname", name, target, _chain_text(a), ERROR,
                           "%s points at %s, but %s has no address: the provider's edge name is broken, not the customer's record."
                           % (name, target, a.canonical))
        return _result("cname", name, target, _chain_text(a), VERIFIED, "%s routes to %s (%s)." % (name, target, _chain_text(a)))
    if a.aliased:
        return _result("cname", name, target, _chain_text(a), MISMATCH,
                       "%s is an alias of %s instead of %s." % (name, a.chain[1], target), fix)
    aaaa = view.lookup(name, "AAAA")
    found_addresses = sorted(set(a.addresses() + (aaaa.addresses() if aaaa.status == OK else [])))
    wanted = _addresses(view, target)
    if not found_addresses:
        if a.status == NXDOMAIN:
            return _result("cname", name, target, None, MISSING, "%s has no CNAME and does not exist." % name, fix)
        if wanted:
            return _result("cname", name, target, None, MISSING,
                           "%s has no CNAME and no address. It holds other records (such as SPF), so a CNAME is not allowed there: "
                           "publish %s's addresses (or an ALIAS/flattened record to %s)." % (name, target, target),
                           _address_records(name, wanted))
        return _result("cname", name, target, None, MISSING, "%s has no CNAME and no address." % name, fix)
    if wanted and set(found_addresses) == set(wanted):
        return _result("cname", name, target, found_addresses, VERIFIED,
                       "%s resolves to exactly the addresses of %s (a flattened CNAME or ALIAS record)." % (name, target))
    if wanted and view.lookup(name, "TXT").rdata:
        return _result("cname", name, target, found_addresses, MISMATCH,
                       "%s resolves to %s, not to %s (%s). It holds other records (such as SPF), so it cannot be a CNAME: "
                       "give it %s's addresses (or an ALIAS/flattened record to %s); if a proxying CDN is in front, make it DNS-only."
                       % (name, ", ".join(found_addresses), target, ", ".join(wanted), target, target), _address_records(name, wanted))
    return _result("cname", name, target, found_addresses, MISMATCH,
                   "%s resolves to %s, not to %s (%s). The likely cause is a proxying CDN in front of the name "
                   "(for example Cloudflare's 'Proxied' mode): make the record DNS-only, as a CNAME to %s."
                   % (name, ", ".join(found_addresses), target, ", ".join(wanted) or "no address", target), fix)


def _address_records(name: str, addresses: t.Sequence[str]) -> str:
    return "\n".join("%s. %s %s" % (name, "AAAA" if ":" in address else "A", address) for address in addresses)


def _addresses(view: View, name: str) -> t.List[str]:
    found: t.List[str] = []
    for rdtype in ("A", "AAAA"):
        lookup = view.lookup(name, rdtype)
        if lookup.status == OK:
            found.extend(lookup.addresses())
    return sorted(set(found))


# ------------------------------------------------------------------- SPF

def check_spf(view: View, name: str, include: str) -> t.Dict[str, t.Any]:
    expected = "v=spf1 include:%s ~all" % include
    lookup = view.lookup(name, "TXT")
    if lookup.failed:
        return _failure("spf", name, expected, lookup)
    records = [text for text in lookup.texts() if mr.is_spf(text)]
    if not records:
        return _result("spf", name, expected, None, MISSING, "%s publishes no SPF record." % name,
                       "%s. TXT %s" % (name, mr.txt_rdata(expected)))
    if len(records) > 1:
        merged = mr.merge_spf(records, include)
        return _result("spf", name, expected, records, MISMATCH,
                       "%s publishes %d SPF records; receivers treat that as a permanent error. Replace them with one." % (name, len(records)),
                       "%s. TXT %s" % (name, mr.txt_rdata(merged)))
    return _check_one_spf(name, include, records[0], expected)


def _check_one_spf(name: str, include: str, text: str, expected: str) -> t.Dict[str, t.Any]:
    fixed = "%s. TXT %s" % (name, mr.txt_rdata(mr.spf_with_include(text, include)))
    try:
        terms = mr.parse_spf(text)
    except mr.RecordSyntaxError as exc:
        return _result("spf", name, expected, text, MISMATCH, "The SPF record of %s is invalid: %s." % (name, exc), fixed)
    problem = mr.spf_include_problem(terms, include)
    if problem:
        return _result("spf", name, expected, text, MISMATCH, "The SPF record of %s does not authorise us: %s." % (name, problem), fixed)
    count = mr.spf_lookup_count(terms)
    if count > mr.SPF_MAX_LOOKUPS:
        return _result("spf", name, expected, text, MISMATCH,
                       "The SPF record of %s needs %d DNS lookups before nesting; the limit is %d. Flatten or remove includes."
                       % (name, count, mr.SPF_MAX_LOOKUPS))
    return _result("spf", name, expected, text, VERIFIED, "The SPF record of %s includes %s." % (name, include))


# ------------------------------------------------------------------ DKIM

def check_dkim(view: View, name: str, spec: DkimSpec) -> t.Dict[str, t.Any]:
    record_name = "%s._domainkey.%s" % (spec.selector, name)
    lookup = view.lookup(record_name, "TXT")
    check = "dkim"
    if lookup.failed:
        return _failure(check, record_name, spec.cname or spec.key, lookup)
    if spec.cname:
        return _dkim_cname(record_name, spec.cname, lookup)
    texts = lookup.texts()
    fix = "%s. TXT %s" % (record_name, mr.txt_rdata("v=DKIM1; p=%s" % spec.key)) if spec.key else None
    if not texts:
        return _result(check, record_name, spec.key, None, MISSING, "No DKIM key is published at %s." % record_name, fix)
    if len(texts) > 1:
        return _result(check, record_name, spec.key, texts, MISMATCH,
                       "%s publishes %d TXT records; a DKIM selector must hold exactly one key." % (record_name, len(texts)), fix)
    try:
        key = mr.dkim_public_key(texts[0])
    except mr.RecordSyntaxError as exc:
        return _result(check, record_name, spec.key, texts[0], MISMATCH, "The DKIM record at %s is invalid: %s." % (record_name, exc), fix)
    if not key:
        return _result(check, record_name, spec.key, texts[0], MISMATCH, "The DKIM key at %s is revoked (empty p=)." % record_name, fix)
    if spec.key and key != spec.key:
        return _result(check, record_name, spec.key, texts[0], MISMATCH,
                       "The DKIM key at %s differs from the expected key." % record_name, fix)
    return _result(check, record_name, spec.key, texts[0], VERIFIED, "The DKIM key at %s is published." % record_name)


def _dkim_cname(record_name: str, target: str, lookup: Lookup) -> t.Dict[str, t.Any]:
    fix = _cname_record(record_name, target)
    if target in lookup.chain[1:]:
        if not lookup.texts():
            return _result("dkim", record_name, target, _chain_text(lookup), ERROR,
                           "%s points at %s, but no key is published there: the provider's side is broken." % (record_name, target))
        return _result("dkim", record_name, target, _chain_text(lookup), VERIFIED, "%s points at %s." % (record_name, target))
    if lookup.aliased:
        return _result("dkim", record_name, target, _chain_text(lookup), MISMATCH,
                       "%s is an alias of %s instead of %s." % (record_name, lookup.chain[1], target), fix)
    if lookup.texts():
        return _result("dkim", record_name, target, lookup.texts(), MISMATCH,
                       "%s publishes a key directly instead of a CNAME to %s, so key rotation will break signing." % (record_name, target), fix)
    return _result("dkim", record_name, target, None, MISSING, "%s does not exist." % record_name, fix)


# ----------------------------------------------------------------- DMARC

def check_dmarc(view: View, name: str, wanted: str, organizational: t.Callable[[str], str]) -> t.Dict[str, t.Any]:
    """``_dmarc`` at the name, else at its organizational domain (RFC 7489 6.6.3)."""
    expected = "v=DMARC1; p=%s" % wanted
    record_name = "_dmarc.%s" % name
    lookup = view.lookup(record_name, "TXT")
    if lookup.failed:
        return _failure("dmarc", record_name, expected, lookup)
    records = [text for text in lookup.texts() if mr.is_dmarc(text)]
    where = record_name
    org = organizational(name)
    if not records and org != name:
        where = "_dmarc.%s" % org
        lookup = view.lookup(where, "TXT")
        if lookup.failed:
            return _failure("dmarc", where, expected, lookup)
        records = [text for text in lookup.texts() if mr.is_dmarc(text)]
    fix_record = "%s. TXT %s" % (record_name, mr.txt_rdata(mr.dmarc_with_policy(records[0] if len(records) == 1 else None, wanted)))
    if not records:
        return _result("dmarc", record_name, expected, None, MISSING,
                       "No DMARC record at %s%s." % (record_name, " or %s" % where if where != record_name else ""), fix_record)
    if len(records) > 1:
        return _result("dmarc", where, expected, records, MISMATCH,
                       "%s publishes %d DMARC records, so receivers apply none. Keep one." % (where, len(records)), fix_record)
    try:
        policy = mr.dmarc_policy(records[0], for_subdomain=(where != record_name))
    except mr.RecordSyntaxError as exc:
        return _result("dmarc", where, expected, records[0], MISMATCH, "The DMARC record at %s is invalid: %s." % (where, exc), fix_record)
    if not mr.policy_at_least(policy, wanted):
        return _result("dmarc", where, expected, records[0], MISMATCH,
                       "The DMARC policy for %s is %s (from %s); at least %s is required." % (name, policy, where, wanted), fix_record)
    return _result("dmarc", where, expected, records[0], VERIFIED, "The DMARC policy for %s is %s (from %s)." % (name, policy, where))


# ----------------------------------------------------------- return path

def check_return_path(view: View, record_name: str, target: str) -> t.Dict[str, t.Any]:
    fix = _cname_record(record_name, target)
    lookup = view.lookup(record_name, "CNAME")
    if lookup.failed:
        return _failure("return_path", record_name, target, lookup)
    found = [r.target.to_text(omit_final_dot=True).lower() for r in lookup.rdata]
    if not found:
        return _result("return_path", record_name, target, None, MISSING, "%s has no CNAME." % record_name, fix)
    if found[0] != target:
        return _result("return_path", record_name, target, found[0], MISMATCH,
                       "%s is an alias of %s instead of %s." % (record_name, found[0], target), fix)
    return _result("return_path", record_name, target, found[0], VERIFIED, "%s points at %s." % (record_name, target))


# ---------------------------------------------------------------- domain

def checks_for(spec: DomainSpec, organizational: t.Callable[[str], str]) -> t.List[t.Callable[[View], t.Dict[str, t.Any]]]:
    """The checks one domain needs, in a stable order."""
    checks: t.List[t.Callable[[View], t.Dict[str, t.Any]]] = []
    if spec.cname:
        checks.append(lambda view: check_tracking(view, spec.name, t.cast(str, spec.cname)))
    if spec.spf_include:
        checks.append(lambda view: check_spf(view, spec.name, t.cast(str, spec.spf_include)))
    for dkim in spec.dkim:
        checks.append(lambda view, dkim=dkim: check_dkim(view, spec.name, dkim))
    if spec.dmarc:
        checks.append(lambda view: check_dmarc(view, spec.name, t.cast(str, spec.dmarc), organizational))
    if spec.return_path:
        rp_name, rp_target = spec.return_path
        checks.append(lambda view: check_return_path(view, rp_name, rp_target))
    return checks


def merge_views(per_view: t.Sequence[t.Tuple[str, t.Dict[str, t.Any]]]) -> t.Dict[str, t.Any]:
    """One record result out of the same check asked of several authoritative servers."""
    servers = [{"server": label, "status": r["status"], "found": r["found"]} for label, r in per_view]
    distinct = {(r["status"], repr(r["found"])) for _label, r in per_view}
    first = dict(per_view[0][1])
    if len(distinct) == 1:
        first["servers"] = servers
        return first
    worst = min((r for _label, r in per_view), key=lambda r: _WORST_FIRST.index(r["status"]))
    merged = dict(worst)
    if merged["status"] == VERIFIED:  # pragma: no cover - distinct statuses imply a non-verified one
        merged["status"] = MISMATCH
    merged["message"] = ("The authoritative servers disagree, so the change has not reached all of them yet: %s. %s"
                         % ("; ".join("%s: %s" % (s["server"], s["status"]) for s in servers), worst["message"]))
    merged["servers"] = servers
    return merged


def summarize(spec: DomainSpec, records: t.List[t.Dict[str, t.Any]], servers: t.Optional[t.List[str]] = None) -> t.Dict[str, t.Any]:
    bad = [r for r in records if r["status"] != VERIFIED]
    if bad:
        message = "%d of %d records of %s need attention: %s." % (
            len(bad), len(records), spec.name, "; ".join("%s %s is %s" % (r["check"], r["name"], r["status"]) for r in bad))
    else:
        message = "All %d records of %s are verified." % (len(records), spec.name)
    routing = [r for r in records if r["check"] == "cname"]
    result: t.Dict[str, t.Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "verified": not bad,
        "ssl_ready": bool(routing) and routing[0]["status"] == VERIFIED,
        "records": records,
        "message": message,
    }
    if servers is not None:
        result["authoritative_servers"] = servers
    return result
