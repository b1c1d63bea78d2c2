# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Name validation: one table of accepted spellings, one of rejected ones, and properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain, normalize_domains, parent_names

ACCEPTED = [
    ("links.customer.com", "links.customer.com"),
    ("Links.Customer.COM", "links.customer.com"),
    ("links.customer.com.", "links.customer.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example.", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("123.example", "123.example"),
    ("x" * 63 + ".example", "x" * 63 + ".example"),
]

REJECTED = [
    ("", "empty"),
    (" links.customer.com", "white space"),
    ("links.customer.com\n", "white space"),
    ("links..customer.com", "empty label"),
    (".customer.com", "empty label"),
    (".", "empty label"),
    ("../etc/passwd", "character"),
    ("links/customer.com", "character '/'"),
    ("a;b.example", "character ';'"),
    ("a{b}.example", "character '{'"),
    ('a"b.example', "character '\"'"),
    ("a b.example", "character ' '"),
    ("a$b.example", "character '$'"),
    ("a\\b.example", "character"),
    ("links.customer.com:443", "character ':'"),
    ("192.0.2.1", "IP address"),
    ("[2001:db8::1]", "IP address"),
    ("2001:db8::1", "IP address"),
    ("*.customer.com", "wildcard"),
    ("x" * 64 + ".example", "label of 64 octets"),
    (".".join(["a" * 60] * 5), "octets long"),
    ("-links.example", "hyphen"),
    ("links-.example", "hyphen"),
    ("li_nks.example", "characters outside"),
    ("localhost", "single label"),
    ("example.123", "all-numeric"),
    ("ab--cd.example", "reserved"),
    ("xn--zz.example", "invalid A-label"),
    ("a\u200d.example", "internationalised"),
    (None, "must be a string"),
    (42, "must be a string"),
]


@pytest.mark.parametrize("raw,expected", ACCEPTED)
def test_accepted(raw, expected):
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize("raw,fragment", REJECTED, ids=[repr(r[0])[:40] for r in REJECTED])
def test_rejected_with_message_naming_it(raw, fragment):
    with pytest.raises(InputError) as err:
        normalize_domain(raw)
    assert fragment in err.value.msg
    if isinstance(raw, str) and raw:
        assert repr(raw) in err.value.msg or str(raw) in err.value.msg


@pytest.mark.parametrize("raw,fragment", [
    ("\u2603.example.com", "is not a valid internationalised domain name: "),
    ("a\u200d.example.com", "is not a valid internationalised domain name: "),
    ("xn--zz.example.com", "has an invalid A-label 'xn--zz': "),
    ("ab--cd.example.com", "has a label 'ab--cd' with '--' in positions 3-4, which is reserved"),
])
def test_idna_errors_name_the_field_like_every_other_error(raw, fragment):
    # These messages once began with the value alone, so a module could not tell which option held it.
    with pytest.raises(InputError) as err:
        normalize_domain(raw, what="certificates[2].alt_names item")
    assert err.value.msg.startswith("certificates[2].alt_names item %r %s" % (raw, fragment)), err.value.msg
    with pytest.raises(InputError) as err:
        normalize_domains(["ok.example", raw])
    assert err.value.msg.startswith("item 2: domain name %r %s" % (raw, fragment)), err.value.msg
    assert err.value.item == raw


def test_wildcard_when_allowed():
    assert normalize_domain("*.Customer.com.", allow_wildcard=True) == "*.customer.com"
    with pytest.raises(InputError):
        normalize_domain("a.*.customer.com", allow_wildcard=True)


def test_underscore_only_for_record_names():
    assert normalize_domain("s1._domainkey.em.example.com", allow_underscore=True) == "s1._domainkey.em.example.com"
    with pytest.raises(InputError):
        normalize_domain("s1._domainkey.em.example.com")


def test_list_error_names_index():
    with pytest.raises(InputError) as err:
        normalize_domains(["ok.example", "bad name.example"])
    assert err.value.msg.startswith("item 2:") and err.value.item == "bad name.example"


def test_parent_names():
    assert parent_names("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com", "com"]


LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=70)


@given(st.lists(LABEL, min_size=1, max_size=6), st.booleans())
def test_property_result_is_canonical(labels, trailing_dot):
    raw = ".".join(labels) + ("." if trailing_dot else "")
    try:
        result = normalize_domain(raw)
    except InputError:
        return
    assert result == result.lower() and not result.endswith(".")
    assert len(result) <= 253
    assert all(0 < len(label) <= 63 and not label.startswith("-") and not label.endswith("-") for label in result.split("."))
    assert normalize_domain(result) == result
    assert normalize_domain(result.upper() + ".") == result


@given(st.text(max_size=80))
def test_property_anything_is_rejected_or_safe(raw):
    try:
        result = normalize_domain(raw)
    except InputError as exc:
        assert exc.msg
        return
    assert set(result) <= set(string.ascii_lowercase + string.digits + "-.")
    assert ".." not in result and "/" not in result
