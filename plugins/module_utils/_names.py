# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Validation and normalisation of customer-supplied domain names.

This is the one place where a name typed by a customer becomes a name the
collection uses: lower case, no trailing dot, IDN labels as A-labels (IDNA
2008 with UTS 46 mapping), every label LDH, at most 63 octets per label and
253 octets in all.  Anything else is rejected with a message naming it,
before any DNS query, CA request or file write.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

try:
    import idna
    HAS_IDNA = True
    IDNA_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_IDNA = False
    IDNA_IMPORT_ERROR = exc

MAX_NAME = 253
MAX_LABEL = 63
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Record names and targets (DKIM selectors, service labels) may use '_'.
_LDH_UNDERSCORE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# Characters that are never part of a host name in any spelling; naming them
# in the error helps the person who pasted a URL or a zone-file line.
_FORBIDDEN = re.compile(r"[\s/\\:;{}()<>\"'`$|&@#%?*=,+!~^\[\]]")


def _describe(raw: str) -> str:
    return repr(raw)


def _to_ascii_label(label: str, raw: str, what: str) -> str:
    if label.isascii():
        return label.lower()
    if not HAS_IDNA:
        raise InputError("cannot convert internationalised %s %s: the idna Python library is missing" % (what, _describe(raw)), item=raw)
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InputError("%s %s is not a valid internationalised domain name: %s" % (what, _describe(raw), exc), item=raw) from None


def _check_ace_label(label: str, raw: str, what: str) -> None:
    """An A-label (``xn--``) must decode to a valid U-label."""
    if not label.startswith("xn--"):
        if len(label) >= 4 and label[2:4] == "--":
            raise InputError("%s %s has a label %r with '--' in positions 3-4, which is reserved" % (what, _describe(raw), label), item=raw)
        return
    if not HAS_IDNA:
        return
    try:
        idna.decode(label)
    except idna.IDNAError as exc:
        raise InputError("%s %s has an invalid A-label %r: %s" % (what, _describe(raw), label, exc), item=raw) from None


def normalize_domain(raw: t.Any, *, allow_wildcard: bool = False, what: str = "domain name", allow_underscore: bool = False) -> str:
    """Return the normalised form of a customer-supplied host name.

    Raises InputError naming the bad item for anything that is not a host name.
    ``allow_wildcard`` accepts a leading ``*.`` label (kept in the result);
    ``allow_underscore`` accepts ``_`` in labels (record names such as
    ``s1._domainkey.example.com`` and their targets, never certificate names).
    """
    if not isinstance(raw, str):
        raise InputError("%s must be a string, got %s %r" % (what, type(raw).__name__, raw), item=str(raw))
    name = raw.strip()
    if name != raw:
        raise InputError("%s %s has leading or trailing white space" % (what, _describe(raw)), item=raw)
    if not name:
        raise InputError("%s is empty" % what, item=raw)
    _reject_ip(name[:-1] if name.endswith(".") else name, raw, what)
    bad = _FORBIDDEN.search(name[2:] if name.startswith("*.") else name)
    if bad:
        raise InputError("%s %s contains the character %r, which is not allowed in a host name" % (what, _describe(raw), bad.group(0)), item=raw)
    if name.endswith("."):
        name = name[:-1]
    if not name or name.startswith("."):
        raise InputError("%s %s has an empty label" % (what, _describe(raw)), item=raw)
    wildcard = False
    if name.startswith("*."):
        if not allow_wildcard:
            raise InputError("%s %s is a wildcard, which is not allowed here (HTTP-01 cannot validate wildcards)" % (what, _describe(raw)), item=raw)
        wildcard = True
        name = name[2:]
    labels = [_to_ascii_label(label, raw, what) for label in name.split(".")]
    for label in labels:
        _check_label(label, raw, what, allow_underscore)
    if len(labels) < 2:
        raise InputError("%s %s is a single label; a fully qualified name such as links.example.com is needed" % (what, _describe(raw)), item=raw)
    if labels[-1].isdigit():
        raise InputError("%s %s has an all-numeric top-level label" % (what, _describe(raw)), item=raw)
    result = ".".join(labels)
    if len(result) > MAX_NAME - (2 if wildcard else 0):
        raise InputError("%s %s is %d octets long; the limit is %d" % (what, _describe(raw), len(result), MAX_NAME), item=raw)
    return ("*." + result) if wildcard else result


def _reject_ip(name: str, raw: str, what: str) -> None:
    candidate = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return
    raise InputError("%s %s is an IP address; a host name is needed" % (what, _describe(raw)), item=raw)


def _check_label(label: str, raw: str, what: str, allow_underscore: bool = False) -> None:
    if not label:
        raise InputError("%s %s has an empty label" % (what, _describe(raw)), item=raw)
    if len(label) > MAX_LABEL:
        raise InputError("%s %s has a label of %d octets; the limit is %d" % (what, _describe(raw), len(label), MAX_LABEL), item=raw)
    if not (_LDH_UNDERSCORE if allow_underscore else _LDH).match(label):
        if label.startswith("-") or label.endswith("-"):
            raise InputError("%s %s has a label %r that starts or ends with a hyphen" % (what, _describe(raw), label), item=raw)
        raise InputError("%s %s has a label %r with characters outside letters, digits and hyphens" % (what, _describe(raw), label), item=raw)
    _check_ace_label(label, raw, what)


def normalize_domains(raws: t.Iterable[t.Any], *, allow_wildcard: bool = False, what: str = "domain name") -> t.List[str]:
    """Normalise a list of names, failing on the first bad one (by index)."""
    result = []
    for index, raw in enumerate(raws):
        try:
            result.append(normalize_domain(raw, allow_wildcard=allow_wildcard, what=what))
        except InputError as exc:
            raise InputError("item %d: %s" % (index + 1, exc.msg), item=exc.item) from None
    return result


def parent_names(name: str) -> t.List[str]:
    """``a.b.example.com`` → ``[a.b.example.com, b.example.com, example.com, com]`` (no root)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def is_subdomain_or_equal(name: str, parent: str) -> bool:
    """True if ``name`` equals ``parent`` or lies below it (both normalised)."""
    return name == parent or name.endswith("." + parent)
