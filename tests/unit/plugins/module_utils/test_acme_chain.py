# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Alternate chains: the Link headers read, the preferred chain chosen as certbot's --preferred-chain does."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_chain
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("headers, urls", [
    (['<https://ca.test/cert/1/1>;rel="alternate"'], ["https://ca.test/cert/1/1"]),
    (['<https://ca.test/cert/1/1>; rel="alternate", <https://ca.test/cert/1/2>; rel="alternate"'],
     ["https://ca.test/cert/1/1", "https://ca.test/cert/1/2"]),
    (['<https://ca.test/dir>;rel="index"', '<https://ca.test/cert/1/1>;rel=alternate'], ["https://ca.test/cert/1/1"]),
    (['<https://ca.test/cert/1/1>;rel="up alternate"'], ["https://ca.test/cert/1/1"]),
    (['<https://ca.test/dir>;rel="index"'], []),
    (['<https://ca.test/x>;rel="alternates"', ""], []),
    (['<https://ca.test/cert/1/1>;rel="alternate"', '<https://ca.test/cert/1/1>;rel="alternate"'], ["https://ca.test/cert/1/1"]),
])
def test_alternate_links(headers, urls):
    assert _acme_chain.alternate_urls(headers) == urls


def cert(subject, issuer, key, signer):
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=9))
            .sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def chains():
    leaf_key, inter_key, root_a, root_b = (ec.generate_private_key(ec.SECP256R1()) for number in range(4))
    leaf = cert("links.customer.test", "Intermediate", leaf_key, inter_key)
    return [leaf + cert("Intermediate", "Root A", inter_key, root_a), leaf + cert("Intermediate", "Root B", inter_key, root_b)]


@pytest.mark.parametrize("preferred, index, matched", [
    (None, 0, True), ("Root A", 0, True), ("Root B", 1, True), ("Root C", 0, False), ("Intermediate", 0, False),
])
def test_the_chain_chosen(chains, preferred, index, matched):
    assert _acme_chain.choose(chains, preferred) == (chains[index], matched)


def test_topmost_issuer(chains):
    assert [_acme_chain.topmost_issuer(c) for c in chains] == ["Root A", "Root B"]
    assert _acme_chain.topmost_issuer(b"no certificate") is None


@pytest.mark.parametrize("value, expected", [(None, None), ("", None), (" ISRG Root X1 ", "ISRG Root X1")])
def test_preferred_chain_accepted(value, expected):
    assert _acme_chain.check_preferred(value) == expected


@pytest.mark.parametrize("value", ["   ", "x" * 65, "Root\nX", 7, ["ISRG Root X1"]])
def test_preferred_chain_refused_by_name(value):
    with pytest.raises(InputError, match="preferred_chain must be an issuer's common name"):
        _acme_chain.check_preferred(value)
