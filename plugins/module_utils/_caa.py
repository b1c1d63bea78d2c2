# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""CAA processing as a CA performs it (RFC 8659, with RFC 8657 parameters).

Pure logic: ``relevant_rrset`` climbs through a lookup function it is given,
``evaluate`` decides on a record set, ``check_domain`` puts both together and
words the result (reason code, message and the record to publish).
"""

from __future__ import annotations

import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._names import parent_names

# Property tags this checker (like Let's Encrypt) understands; a critical
# record with any other tag forbids issuance (RFC 8659 section 4.1).
KNOWN_TAGS = frozenset(("issue", "issuewild", "iodef"))
CRITICAL = 128
# Let's Encrypt also treats flag bit value 1 as critical, because many zones
# set it by mistake; we predict what the CA does.
CA_CRITICAL_ALIAS = 1

_LABEL = r"[A-Za-z0-9](?:-*[A-Za-z0-9])*"
_ISSUER = re.compile(r"^%s(?:\.%s)*$" % (_LABEL, _LABEL))
_PARAM_TAG = re.compile(r"^%s$" % _LABEL)
_PARAM_VALUE = re.compile(r"^[\x21-\x3a\x3c-\x7e]*$")
_METHOD = re.compile(r"^[A-Za-z0-9-]+$")
_WSP = " \t"

# reason codes
NO_CAA = "no_caa"
NO_ISSUE_PROPERTY = "no_issue_property"
PERMITTED = "permitted"
CRITICAL_UNKNOWN = "critical_unknown_tag"
FORBIDDEN = "issuance_forbidden"
NOT_LISTED = "issuer_not_listed"
ACCOUNT_MISMATCH = "account_uri_mismatch"
ACCOUNT_UNKNOWN = "account_uri_unknown"
METHOD_NOT_ALLOWED = "validation_method_not_allowed"
MALFORMED = "malformed_record"
DNS_ERROR = "dns_error"


class CAARecord(t.NamedTuple):
    flags: int
    tag: str
    value: str

    @classmethod
    def from_rdata(cls, rdata: t.Any) -> "CAARecord":
        return cls(int(rdata.flags), rdata.tag.decode("ascii", "replace"), rdata.value.decode("utf-8", "replace"))

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {"flags": self.flags, "tag": self.tag, "value": self.value}


class IssuerValue(t.NamedTuple):
    issuer: t.Optional[str]            # None for ";" (no issuer: forbids)
    parameters: t.Dict[str, str]


def parse_issue_value(value: str) -> t.Optional[IssuerValue]:
    """Parse an ``issue``/``issuewild`` value (RFC 8659 section 4.2).

    Returns None when the value does not follow the grammar: such a record
    authorises nobody.  Parameter tags are case-sensitive; a tag given twice
    makes the value malformed (its meaning would be ambiguous).
    """
    head, sep, rest = value.partition(";")
    issuer_text = head.strip(_WSP)
    if issuer_text and not _ISSUER.match(issuer_text):
        return None
    parameters: t.Dict[str, str] = {}
    if sep:
        rest = rest.strip(_WSP)
        if rest:
            for part in rest.split(";"):
                parsed = _parse_parameter(part)
                if parsed is None or parsed[0] in parameters:
                    return None
                parameters[parsed[0]] = parsed[1]
    return IssuerValue(issuer_text.lower() or None, parameters)


def _parse_parameter(part: str) -> t.Optional[t.Tuple[str, str]]:
    tag, eq, value = part.partition("=")
    tag = tag.strip(_WSP)
    value = value.strip(_WSP)
    if not eq or not _PARAM_TAG.match(tag) or not _PARAM_VALUE.match(value):
        return None
    return tag, value


class Decision(t.NamedTuple):
    allowed: bool
    reason: str
    detail: str


def _critical_unknown(records: t.Sequence[CAARecord]) -> t.Optional[CAARecord]:
    for record in records:
        if record.tag.lower() not in KNOWN_TAGS and record.flags & (CRITICAL | CA_CRITICAL_ALIAS):
            return record
    return None


def evaluate(records: t.Sequence[CAARecord], wildcard: bool, identities: t.Sequence[str],
             method: str, account_uri: t.Optional[str]) -> Decision:
    """Decide on the relevant record set for one name (RFC 8659 section 4.3 and RFC 8657)."""
    if not records:
        return Decision(True, NO_CAA, "no CAA records restrict issuance")
    critical = _critical_unknown(records)
    if critical is not None:
        return Decision(False, CRITICAL_UNKNOWN, "the record %s %s is marked critical (flags %d) but its tag is unknown to the CA"
                        % (critical.tag, _quote(critical.value), critical.flags))
    issue = [r for r in records if r.tag.lower() == "issue"]
    issuewild = [r for r in records if r.tag.lower() == "issuewild"]
    relevant = issuewild if wildcard and issuewild else issue
    if not relevant:
        return Decision(True, NO_ISSUE_PROPERTY, "the CAA records present hold no %s property, so they do not restrict issuance"
                        % ("issue or issuewild" if wildcard else "issue"))
    wanted = {identity.lower() for identity in identities}
    return _match(relevant, wanted, method, account_uri)


def _match(relevant: t.Sequence[CAARecord], wanted: t.Set[str], method: str, account_uri: t.Optional[str]) -> Decision:
    ours_malformed = []
    account_pins: t.List[str] = []
    method_limits: t.List[str] = []
    issuers: t.List[str] = []
    for record in relevant:
        parsed = parse_issue_value(record.value)
        if parsed is None:
            if record.value.partition(";")[0].strip(_WSP).lower() in wanted:
                ours_malformed.append(record)
            else:
                issuers.append("%s (malformed, matches nobody)" % _quote(record.value))
            continue
        if parsed.issuer is None:
            continue
        issuers.append(parsed.issuer)
        if parsed.issuer not in wanted:
            continue
        pinned = parsed.parameters.get("accounturi")
        if pinned is not None and pinned != account_uri:
            account_pins.append(pinned)
            continue
        methods = parsed.parameters.get("validationmethods")
        if methods is not None and not _method_allowed(methods, method):
            method_limits.append(methods)
            continue
        return Decision(True, PERMITTED, "%s %s authorises the CA" % (record.tag, _quote(record.value)))
    return _refusal(relevant, issuers, ours_malformed, account_pins, method_limits, method, account_uri)


def _refusal(relevant: t.Sequence[CAARecord], issuers: t.List[str], ours_malformed: t.List[CAARecord],
             account_pins: t.List[str], method_limits: t.List[str], method: str, account_uri: t.Optional[str]) -> Decision:
    tag = relevant[0].tag.lower()
    if account_pins:
        if account_uri is None:
            return Decision(False, ACCOUNT_UNKNOWN, "the CA is authorised only for the ACME account(s) %s; pass account_uri to check ours"
                            % ", ".join(account_pins))
        return Decision(False, ACCOUNT_MISMATCH, "the CA is authorised only for the ACME account(s) %s, not %s"
                        % (", ".join(account_pins), account_uri))
    if method_limits:
        return Decision(False, METHOD_NOT_ALLOWED, "the CA is authorised only for validation methods %s, not %s"
                        % (" / ".join(method_limits), method))
    if ours_malformed:
        return Decision(False, MALFORMED, "the record %s %s names the CA but does not follow RFC 8659 syntax, so it authorises nobody"
                        % (ours_malformed[0].tag, _quote(ours_malformed[0].value)))
    if not issuers:
        return Decision(False, FORBIDDEN, "the %s records forbid issuance by any CA" % tag)
    return Decision(False, NOT_LISTED, "the %s records authorise only %s" % (tag, ", ".join(sorted(set(issuers)))))


def _method_allowed(methods: str, method: str) -> bool:
    names = methods.split(",")
    if not all(_METHOD.match(name) for name in names):
        return False
    return method in names


def _quote(value: str) -> str:
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


class RelevantSet(t.NamedTuple):
    found_at: t.Optional[str]           # the name whose lookup returned the set
    owner: t.Optional[str]              # where the records really live (alias target) or found_at
    records: t.List[CAARecord]
    failure: t.Optional[t.Any]          # the failed Lookup that stopped the climb
    name_aliased: bool                  # the name itself is an alias (CNAME)
    checked: t.List[str]


def relevant_rrset(name: str, lookup: t.Callable[[str, str], t.Any]) -> RelevantSet:
    """Find the relevant CAA RRset of ``name`` (RFC 8659 section 3).

    CAA is asked at the name (a resolver follows its aliases), then at each
    parent up to the TLD; the first non-empty set wins.  A lookup that fails
    before a set is found stops the climb: the CA would refuse too.
    """
    checked: t.List[str] = []
    name_aliased = False
    for candidate in parent_names(name):
        result = lookup(candidate, "CAA")
        checked.append(candidate)
        if candidate == name:
            name_aliased = result.aliased
        if result.failed:
            return RelevantSet(None, None, [], result, name_aliased, checked)
        if result.rdata:
            records = [CAARecord.from_rdata(r) for r in result.rdata]
            return RelevantSet(candidate, result.canonical, records, None, name_aliased, checked)
    return RelevantSet(None, None, [], None, name_aliased, checked)


class Policy(t.NamedTuple):
    identities: t.List[str]
    method: str
    account_uri: t.Optional[str]


def check_domain(domain: str, lookup: t.Callable[[str, str], t.Any], policy: Policy) -> t.Dict[str, t.Any]:
    """CAA verdict for one normalised name (``*.`` prefix for a wildcard)."""
    wildcard = domain.startswith("*.")
    base = domain[2:] if wildcard else domain
    found = relevant_rrset(base, lookup)
    result: t.Dict[str, t.Any] = {
        "domain": domain, "found_at": found.found_at, "records": [r.as_dict() for r in found.records],
        "checked": found.checked, "remediation": None,
    }
    identity = policy.identities[0]
    if found.failure is not None:
        result.update(allowed=False, reason=DNS_ERROR,
                      message="%s may not issue for %s yet: %s, and a CA refuses to issue while a CAA lookup fails. "
                      "Fix the DNS service of %s or retry later." % (identity, domain, found.failure.describe_failure(), found.failure.name))
        return result
    decision = evaluate(found.records, wildcard, policy.identities, policy.method, policy.account_uri)
    result.update(allowed=decision.allowed, reason=decision.reason)
    if decision.allowed:
        where = " at %s" % found.found_at if found.found_at else ""
        result["message"] = "%s may issue for %s: %s%s." % (identity, domain, decision.detail, where)
        return result
    record, advice = _remediation(base, wildcard, found, decision, policy)
    result["remediation"] = record
    result["message"] = "%s may not issue for %s: %s (CAA at %s%s). %s" % (
        identity, domain, decision.detail, found.found_at,
        ", through the alias to %s" % found.owner if found.owner != found.found_at else "", advice)
    return result


def _remediation(base: str, wildcard: bool, found: RelevantSet, decision: Decision, policy: Policy) -> t.Tuple[t.Optional[str], str]:
    tag = "issuewild" if wildcard else "issue"
    value = policy.identities[0]
    if decision.reason in (ACCOUNT_MISMATCH, ACCOUNT_UNKNOWN):
        if policy.account_uri is None:
            return None, "Pass account_uri (the acme_http01_cert module returns it) to get the exact record to publish."
        value += "; accounturi=%s" % policy.account_uri
    elif decision.reason == METHOD_NOT_ALLOWED:
        value += "; validationmethods=%s" % policy.method
    record_text = "CAA 0 %s %s" % (tag, _quote(value))
    owner = found.owner or base
    if decision.reason == CRITICAL_UNKNOWN:
        if found.found_at != base and not found.name_aliased:
            return ("%s. %s" % (base, record_text),
                    "Publish this record at the name itself (its own set takes precedence), or remove the critical flag at %s." % owner)
        return None, "Remove the critical flag (or the record) at %s, or ask whoever controls it." % owner
    if owner != found.found_at:
        return ("%s. %s" % (owner, record_text),
                "The records come from the alias target %s: its owner must add this record." % owner)
    return "%s. %s" % (owner, record_text), "Add this record to the CAA set at %s (keep the records you need)." % owner
