# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What an edge serves against what is on disk: the verdicts, from certificates made here (no network)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.mailops.linkcert.plugins.module_utils import _served
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)


def der(names, serial=0x1234ABCD, days_left=60):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - datetime.timedelta(days=30)).not_valid_after(NOW + datetime.timedelta(days=days_left)))
    if names:
        cert = cert.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return cert.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# case, on disk, served names, served serial, days left, reason, matches
CASES = [
    ("same", "1234abcd", ["links.c.com"], 0x1234ABCD, 60, _served.OK, True),
    ("same-leading-zero-and-colons", "00:12:34:AB:CD", ["links.c.com"], 0x1234ABCD, 60, _served.OK, True),
    ("not-reloaded", "99", ["links.c.com"], 0x1234ABCD, 60, _served.MISMATCH, False),
    ("wildcard-covers", "1234abcd", ["*.c.com"], 0x1234ABCD, 60, _served.OK, True),
    ("wildcard-one-label-only", "1234abcd", ["*.com"], 0x1234ABCD, 60, _served.WRONG_NAME, False),
    ("default-server-answers", "1234abcd", ["edge.provider.example"], 0x77, 60, _served.WRONG_NAME, False),
    ("expired", "1234abcd", ["links.c.com"], 0x1234ABCD, -1, _served.EXPIRED, False),
    ("nothing-on-disk", None, ["links.c.com"], 0x1234ABCD, 60, _served.OK, False),
]


@pytest.mark.parametrize("case, serial, names, served, days_left, reason, matches", CASES, ids=[c[0] for c in CASES])
def test_verdicts(case, serial, names, served, days_left, reason, matches):
    target = _served.targets([{"domain": "Links.C.com.", "serial": serial}])[0]
    result = _served.compare(target, der(names, served, days_left), None, "edge-1", NOW)
    assert (result["reason"], result["matches"]) == (reason, matches), result
    assert result["domain"] == "links.c.com" and result["node"] == "edge-1" and result["served_serial"] == "%x" % served
    assert "edge-1" in result["message"]
    assert (result["remediation"] is None) == (reason == _served.OK)


def test_no_session_is_not_served():
    result = _served.compare(_served.Target("links.c.com", "1"), None, "connection refused", "edge-1", NOW)
    assert (result["reason"], result["served_serial"], result["matches"]) == (_served.NOT_SERVED, None, False)
    assert "connection refused" in result["message"]


@pytest.mark.parametrize("entry, fragment", [
    ({"domain": "../etc", "serial": "1"}, "certificates[1].domain"),
    ({"domain": "a.c.com", "serial": "xyz"}, "not a hexadecimal serial"),
    ({"domain": "a.c.com", "serial": ""}, "not a hexadecimal serial"),
])
def test_bad_input_is_named(entry, fragment):
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        _served.targets([entry])


def test_a_closed_port_is_a_result_not_an_exception():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = _served.check("127.0.0.1", port, "edge-1", _served.targets([{"domain": "a.c.com", "serial": "1"}]), 2.0, 2, NOW)
    assert results[0]["reason"] == _served.NOT_SERVED
