# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SPF, DMARC and DKIM record parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.mailops.linkcert.plugins.module_utils import _mailrecords as mr

INC = "spf.esp.example"

SPF_INCLUDE = [
    ("v=spf1 include:spf.esp.example ~all", None),
    ("v=spf1 +include:SPF.ESP.EXAMPLE. -all", None),
    ("v=spf1 redirect=spf.esp.example", None),
    ("v=spf1 include:other.example ~all", "has no include:spf.esp.example"),
    ("v=spf1 ~include:spf.esp.example -all", "qualifier '~'"),
    ("v=spf1 -all include:spf.esp.example", "after 'all'"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "has no include"),
]


@pytest.mark.parametrize("text,problem", SPF_INCLUDE)
def test_spf_include(text, problem):
    found = mr.spf_include_problem(mr.parse_spf(text), INC)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("text", [
    "v=spf1 include: -all", "v=spf1 bogus:x", "v=spf1 all:x", "v=spf1 ?redirect=x", "v=spf1 redirect=a redirect=b", "v=spf1 include:a:b:c %%",
])
def test_spf_syntax_errors(text):
    with pytest.raises(mr.RecordSyntaxError):
        mr.parse_spf(text)


@pytest.mark.parametrize("text,is_spf", [
    ("v=spf1", True), ("V=SPF1 -all", True), ("v=spf10 -all", False), ("v=spf1-all", False), ("google-site-verification=x", False),
])
def test_is_spf(text, is_spf):
    assert mr.is_spf(text) is is_spf


def test_spf_lookup_count():
    terms = mr.parse_spf("v=spf1 a mx include:a.example include:b.example ip4:192.0.2.1 exists:x.example ptr redirect=c.example")
    assert mr.spf_lookup_count(terms) == 7


@pytest.mark.parametrize("before,after", [
    (None, "v=spf1 include:spf.esp.example ~all"),
    ("v=spf1 mx -all", "v=spf1 mx include:spf.esp.example -all"),
    ("v=spf1 mx", "v=spf1 mx include:spf.esp.example ~all"),
    ("v=spf1 mx redirect=x.example", "v=spf1 mx include:spf.esp.example redirect=x.example"),
    ("v=spf1 ~include:spf.esp.example -all", "v=spf1 include:spf.esp.example -all"),
])
def test_spf_with_include(before, after):
    assert mr.spf_with_include(before, INC) == after
    mr.parse_spf(after)


def test_merge_spf():
    merged = mr.merge_spf(["v=spf1 mx -all", "v=spf1 include:other.example ~all"], INC)
    assert merged == "v=spf1 mx include:other.example include:spf.esp.example ~all"
    assert mr.spf_include_problem(mr.parse_spf(merged), INC) is None


@given(st.text(alphabet="abc:=/.+-~? 0123456789", max_size=40))
def test_spf_parser_total(tail):
    text = "v=spf1 " + tail
    try:
        terms = mr.parse_spf(text)
    except mr.RecordSyntaxError:
        return
    assert all(term.name == term.name.lower() for term in terms)
    fixed = mr.spf_with_include(text, INC)
    assert mr.spf_include_problem(mr.parse_spf(fixed), INC) is None


@pytest.mark.parametrize("text,sub,policy", [
    ("v=DMARC1; p=reject", False, "reject"),
    ("v=DMARC1;p=quarantine;sp=none", True, "none"),
    ("v=DMARC1; p=Quarantine; rua=mailto:d@example.com", True, "quarantine"),
])
def test_dmarc_policy(text, sub, policy):
    assert mr.is_dmarc(text)
    assert mr.dmarc_policy(text, sub) == policy


@pytest.mark.parametrize("text", ["v=DMARC1; rua=mailto:x@example.com", "v=DMARC1; p=block", "v=DMARC1; p=none; p=reject", "v=DMARC1; garbage"])
def test_dmarc_invalid(text):
    with pytest.raises(mr.RecordSyntaxError):
        mr.dmarc_policy(text, False)


@pytest.mark.parametrize("text,ok", [("v=DMARC1; p=none", True), ("v=dmarc1; p=none", False), ("p=none; v=DMARC1", False), ("v=spf1", False)])
def test_is_dmarc(text, ok):
    assert mr.is_dmarc(text) is ok


def test_dmarc_with_policy_keeps_tags():
    assert mr.dmarc_with_policy("v=DMARC1; p=none; rua=mailto:r@example.com", "quarantine") == "v=DMARC1; p=quarantine; rua=mailto:r@example.com"
    assert mr.dmarc_with_policy(None, "reject") == "v=DMARC1; p=reject"


def test_dkim_key():
    assert mr.dkim_public_key("v=DKIM1; k=rsa; p=MIIB AQAB") == "MIIBAQAB"
    assert mr.dkim_public_key("p=") == ""
    with pytest.raises(mr.RecordSyntaxError):
        mr.dkim_public_key("v=DKIM1; k=rsa")
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\nAQAB\n-----END PUBLIC KEY-----\n"
    assert mr.normalize_dkim_key(pem) == "MIIBAQAB"


def test_txt_rdata_splits_long_strings():
    text = "v=DKIM1; p=" + "A" * 400
    rdata = mr.txt_rdata(text)
    parts = rdata.split('" "')
    assert len(parts) == 2 and rdata.startswith('"') and rdata.endswith('"')
    assert mr.txt_rdata('a"b') == '"a\\"b"'
