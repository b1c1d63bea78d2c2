# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Parsers for the mail-authentication records a sending domain publishes.

SPF (RFC 7208), DMARC (RFC 7489) and DKIM key records (RFC 6376).  Pure
functions on record text; the DNS side lives in ``_verify``.
"""

from __future__ import annotations

import re
import typing as t

SPF_MAX_LOOKUPS = 10
_SPF_LOOKUP_TERMS = frozenset(("include", "a", "mx", "ptr", "exists"))
_SPF_MECHANISMS = frozenset(("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"))
_SPF_TERM = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(?:([:=/])(.*))?$")
DMARC_POLICIES = ("none", "quarantine", "reject")


class RecordSyntaxError(ValueError):
    """The record does not follow its RFC's syntax."""


# --------------------------------------------------------------------- SPF

def is_spf(text: str) -> bool:
    """A TXT string is an SPF record if it starts with ``v=spf1`` then space or end (RFC 7208 4.5)."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


class SpfTerm(t.NamedTuple):
    qualifier: str        # '+', '-', '~', '?' ('' means '+')
    name: str             # lower-case mechanism or modifier name
    value: t.Optional[str]
    modifier: bool


def parse_spf(text: str) -> t.List[SpfTerm]:
    """Split an SPF record into terms; RecordSyntaxError on anything malformed."""
    if not is_spf(text):
        raise RecordSyntaxError("not an SPF record (must start with 'v=spf1')")
    terms = []
    for raw in text[6:].split():
        match = _SPF_TERM.match(raw)
        if not match:
            raise RecordSyntaxError("term %r is not valid SPF" % raw)
        qualifier, name, sep, value = match.groups()
        name = name.lower()
        if sep == "=":
            if qualifier:
                raise RecordSyntaxError("modifier %r cannot carry a qualifier" % raw)
            terms.append(SpfTerm("", name, value, True))
            continue
        if name not in _SPF_MECHANISMS:
            raise RecordSyntaxError("unknown mechanism %r" % raw)
        if name in ("include", "exists") and not (sep == ":" and value):
            raise RecordSyntaxError("%r needs a domain ('%s:example.com')" % (raw, name))
        if name == "all" and sep:
            raise RecordSyntaxError("'all' takes no argument (%r)" % raw)
        terms.append(SpfTerm(qualifier, name, value if sep == ":" else (sep + value if sep else None), False))
    _check_modifiers(terms)
    return terms


def _check_modifiers(terms: t.Sequence[SpfTerm]) -> None:
    for name in ("redirect", "exp"):
        if sum(1 for term in terms if term.modifier and term.name == name) > 1:
            raise RecordSyntaxError("modifier %r appears more than once" % name)


def spf_lookup_count(terms: t.Sequence[SpfTerm]) -> int:
    """DNS-querying terms at the top level (RFC 7208 4.6.4); nested includes count on top."""
    return sum(1 for term in terms if (not term.modifier and term.name in _SPF_LOOKUP_TERMS)
               or (term.modifier and term.name == "redirect"))


def _same_domain(a: t.Optional[str], b: str) -> bool:
    return a is not None and a.rstrip(".").lower() == b.rstrip(".").lower()


def spf_include_problem(terms: t.Sequence[SpfTerm], domain: str) -> t.Optional[str]:
    """None when ``include:domain`` authorises; otherwise what is wrong."""
    seen_all = False
    for term in terms:
        if term.modifier:
            continue
        if term.name == "all":
            seen_all = True
            continue
        if term.name == "include" and _same_domain(term.value, domain):
            if seen_all:
                return "include:%s comes after 'all', so it is never evaluated" % domain
            if term.qualifier not in ("", "+"):
                return "include:%s has the qualifier %r, so it does not authorise" % (domain, term.qualifier)
            return None
    redirect = [term.value for term in terms if term.modifier and term.name == "redirect"]
    if redirect and _same_domain(redirect[0], domain) and not seen_all:
        return None
    return "the record has no include:%s" % domain


def spf_with_include(text: t.Optional[str], domain: str) -> str:
    """The record to publish: ``text`` with ``include:domain`` added before 'all'/'redirect'."""
    if not text:
        return "v=spf1 include:%s ~all" % domain
    words = text.split()
    kept = [w for w in words[1:] if not w.lower().lstrip("+-~?").startswith("include:" + domain.lower())]
    position = len(kept)
    for index, word in enumerate(kept):
        bare = word.lower().lstrip("+-~?")
        if bare == "all" or bare.startswith("redirect="):
            position = index
            break
    kept.insert(position, "include:%s" % domain)
    if not any(w.lower().lstrip("+-~?") == "all" or w.lower().startswith("redirect=") for w in kept):
        kept.append("~all")
    return " ".join(["v=spf1"] + kept)


def merge_spf(texts: t.Sequence[str], domain: str) -> str:
    """One record out of several (a domain must publish exactly one)."""
    merged: t.List[str] = []
    ending = "~all"
    for text in texts:
        for word in text.split()[1:]:
            bare = word.lower().lstrip("+-~?")
            if bare == "all":
                ending = word
            elif word not in merged:
                merged.append(word)
    return spf_with_include("v=spf1 " + " ".join(merged + [ending]), domain)


# ------------------------------------------------------------------- DMARC

def is_dmarc(text: str) -> bool:
    """RFC 7489 6.6.3: records not starting with ``v=DMARC1`` are discarded."""
    head = text.split(";", 1)[0].strip()
    tag, _eq, value = head.partition("=")
    return tag.strip().lower() == "v" and value.strip() == "DMARC1"


def parse_tag_list(text: str) -> t.Dict[str, str]:
    """``tag=value; tag=value`` (RFC 6376 3.2, shared by DMARC); duplicates are errors."""
    tags: t.Dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        tag, eq, value = part.partition("=")
        tag = tag.strip().lower()
        if not eq or not re.match(r"^[a-z][a-z0-9_]*$", tag):
            raise RecordSyntaxError("%r is not a tag=value pair" % part.strip())
        if tag in tags:
            raise RecordSyntaxError("tag %r appears twice" % tag)
        tags[tag] = value.strip()
    return tags


def dmarc_policy(text: str, for_subdomain: bool) -> str:
    """The policy a DMARC record applies: ``sp`` for a subdomain when present, else ``p``."""
    tags = parse_tag_list(text)
    policy = tags.get("p", "").lower()
    if policy not in DMARC_POLICIES:
        raise RecordSyntaxError("p=%s is not one of none, quarantine, reject" % (tags.get("p") or "(missing)"))
    if for_subdomain and "sp" in tags:
        sub = tags["sp"].lower()
        if sub not in DMARC_POLICIES:
            raise RecordSyntaxError("sp=%s is not one of none, quarantine, reject" % tags["sp"])
        return sub
    return policy


def policy_at_least(found: str, wanted: str) -> bool:
    return DMARC_POLICIES.index(found) >= DMARC_POLICIES.index(wanted)


def dmarc_with_policy(text: t.Optional[str], wanted: str) -> str:
    """A DMARC record with at least the ``wanted`` policy, keeping the other tags of ``text``."""
    if not text:
        return "v=DMARC1; p=%s" % wanted
    try:
        tags = parse_tag_list(text)
    except RecordSyntaxError:
        return "v=DMARC1; p=%s" % wanted
    tags.pop("v", None)
    tags["p"] = wanted
    tags.pop("sp", None)
    return "; ".join(["v=DMARC1", "p=%s" % wanted] + ["%s=%s" % (k, v) for k, v in tags.items() if k != "p"])


# -------------------------------------------------------------------- DKIM

def normalize_dkim_key(key: str) -> str:
    """A public key as it appears after ``p=``: PEM armour and white space removed."""
    lines = [line for line in key.strip().splitlines() if not line.startswith("-----")]
    return re.sub(r"\s+", "", "".join(lines))


def dkim_public_key(text: str) -> str:
    """The ``p=`` value of a DKIM key record; RecordSyntaxError if there is none."""
    tags = parse_tag_list(text)
    if "v" in tags and tags["v"] != "DKIM1":
        raise RecordSyntaxError("v=%s is not DKIM1" % tags["v"])
    if "p" not in tags:
        raise RecordSyntaxError("the record has no p= tag")
    return re.sub(r"\s+", "", tags["p"])


# ----------------------------------------------------------- zone-file text

def txt_rdata(text: str) -> str:
    """TXT record data in zone-file form, split into 255-octet strings."""
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"%s"' % chunk.replace("\\", "\\\\").replace('"', '\\"') for chunk in chunks)
