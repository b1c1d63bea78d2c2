# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Renewal decisions: certificates built here, ARI responses and directories recorded by hand under data/ari."""

from __future__ import annotations

import base64
import datetime
import functools
import json
import pathlib
import random
import typing as t

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_renewal as ren
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

DATA = pathlib.Path(__file__).parent / "data" / "ari"
UTC = datetime.timezone.utc
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
MINUTE = datetime.timedelta(minutes=1)
US = datetime.timedelta(microseconds=1)
NB = datetime.datetime(2025, 3, 1, tzinfo=UTC)
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Linkcert Test"),
                     x509.NameAttribute(NameOID.COMMON_NAME, "Linkcert Test CA R1")])
RFC_AKI = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
RFC_SERIAL = 0x0087654321
BIG_SERIAL = 0xFA3B2C4D5E6F708192A3B4C5D6E7F8091A2B3C  # 19 octets, high bit of the first one set


# ------------------------------------------------------------------ building certificates

@functools.lru_cache(maxsize=None)
def private_key(kind: str) -> t.Any:
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


@functools.lru_cache(maxsize=None)
def ca() -> t.Tuple[t.Any, x509.Certificate]:
    key = private_key("ec256")
    cert = (x509.CertificateBuilder().subject_name(CA_NAME).issuer_name(CA_NAME).public_key(key.public_key())
            .serial_number(0x1001).not_valid_before(NB - 365 * DAY).not_valid_after(NB + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def leaf(serial: int = 0x87654321, days: float = 90, key: str = "ec256", names: t.Sequence[str] = ("links.customer.com",),
         aki: str = "ca", not_before: datetime.datetime = NB) -> x509.Certificate:
    """A leaf issued by the test CA. aki: "ca" (from the CA's SKI), "none", "no-keyid", or hex keyIdentifier bytes."""
    ca_key, ca_cert = ca()
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "nameless")]))
               .issuer_name(ca_cert.subject).public_key(private_key(key).public_key()).serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_before + datetime.timedelta(days=days)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
    if aki == "ca":
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    elif aki == "no-keyid":
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(None, [x509.DirectoryName(CA_NAME)], 0x1001), critical=False)
    elif aki != "none":
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(bytes.fromhex(aki), None, None), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------ an independent DER reader for the CertID vectors

def _tlv(data: bytes, pos: int) -> t.Tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at pos."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> t.List[t.Tuple[int, int, int]]:
    found = []
    while start < end:
        tag, begin, stop = _tlv(data, start)
        found.append((tag, begin, stop))
        start = stop
    return found


def certid_from_der(der: bytes) -> t.Optional[str]:
    """CertID per RFC 9773 read straight from the certificate's DER octets."""
    tag, begin, stop = _tlv(der, 0)
    tbs_tag, tbs_begin, tbs_stop = _children(der, begin, stop)[0]
    fields = _children(der, tbs_begin, tbs_stop)
    serial = next(der[b:e] for tag, b, e in fields if tag == 0x02)
    key_id = None
    for tag, b, e in fields:
        if tag != 0xA3:
            continue
        seq_tag, seq_b, seq_e = _tlv(der, b)
        for ext_tag, ext_b, ext_e in _children(der, seq_b, seq_e):
            parts = _children(der, ext_b, ext_e)
            oid_tag, oid_b, oid_e = parts[0]
            if der[oid_b:oid_e] != b"\x55\x1d\x23":  # 2.5.29.35 authorityKeyIdentifier
                continue
            value_tag, value_b, value_e = parts[-1]
            aki_tag, aki_b, aki_e = _tlv(der, value_b)
            key_id = next((der[kb:ke] for ktag, kb, ke in _children(der, aki_b, aki_e) if ktag == 0x80), None)
    if key_id is None:
        return None

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return b64(key_id) + "." + b64(serial)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ cert_info and CertID

CERTS = {
    # name: (leaf kwargs, expected key_type)
    "ec256-90d-highbit": (dict(serial=0x87654321, days=90, key="ec256", names=("Links.Customer.COM", "www.links.customer.com")), "ec256"),
    "ec384-6d": (dict(serial=0x7F1234, days=6, key="ec384", names=("short.customer.com",)), "ec384"),
    "rsa2048-64d-big-serial": (dict(serial=BIG_SERIAL, days=64, key="rsa2048", names=("b.customer.com", "a.customer.com")), "rsa2048"),
    "rsa3072-45d-no-aki": (dict(serial=0x01, days=45, key="rsa3072", aki="none"), "rsa3072"),
    "rsa4096-aki-without-keyid": (dict(serial=0x80, days=90, key="rsa4096", aki="no-keyid"), "rsa4096"),
    "ec521": (dict(serial=0xFF, key="ec521"), "other"),
    "ed25519": (dict(serial=0x7F, key="ed25519"), "other"),
    "no-san": (dict(serial=0x42, names=()), "ec256"),
}


@pytest.mark.parametrize("name", sorted(CERTS))
def test_cert_info_fields(name: str) -> None:
    kwargs, key_type = CERTS[name]
    cert = leaf(**kwargs)
    info = ren.cert_info(pem(cert))
    days = kwargs.get("days", 90)
    assert info.serial_hex == format(kwargs["serial"], "x")
    assert info.serial_hex == info.serial_hex.lower() and not info.serial_hex.startswith("0x")
    assert info.issuer == "CN=Linkcert Test CA R1,O=Linkcert Test,C=XX"
    assert info.not_before == NB and info.not_before.tzinfo is not None and info.not_before.utcoffset() == datetime.timedelta(0)
    assert info.not_after == NB + days * DAY and info.not_after.utcoffset() == datetime.timedelta(0)
    assert info.names == [n.lower() for n in kwargs.get("names", ("links.customer.com",))]
    assert info.key_type == key_type
    assert info.ari_cert_id == certid_from_der(der(cert))
    assert info.ari_cert_id == ren.ari_cert_id(cert)


@pytest.mark.parametrize("kwargs, serial_b64", [
    (dict(serial=0x87654321), "AIdlQyE"),                # high bit set: a leading 0x00
    (dict(serial=0x7F1234), "fxI0"),                     # high bit clear: no padding octet
    (dict(serial=0x80), "AIA"),
    (dict(serial=0x01), "AQ"),
    (dict(serial=BIG_SERIAL), None),
])
def test_ari_cert_id_matches_der(kwargs: t.Dict[str, t.Any], serial_b64: t.Optional[str]) -> None:
    cert = leaf(**kwargs)
    expected = certid_from_der(der(cert))
    assert expected is not None
    assert ren.ari_cert_id(cert) == expected
    assert "=" not in expected and "+" not in expected and "/" not in expected
    if serial_b64 is not None:
        assert expected.split(".")[1] == serial_b64
    if kwargs["serial"] == BIG_SERIAL:
        assert base64.urlsafe_b64decode(expected.split(".")[1] + "==")[0] == 0x00


def test_ari_cert_id_rfc9773_example() -> None:
    cert = leaf(serial=RFC_SERIAL, aki=RFC_AKI.hex())
    assert ren.ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert certid_from_der(der(cert)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert ren.cert_info(pem(cert)).ari_cert_id == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.mark.parametrize("aki", ["none", "no-keyid"])
def test_ari_cert_id_without_key_identifier(aki: str) -> None:
    cert = leaf(aki=aki)
    assert ren.ari_cert_id(cert) is None
    assert ren.cert_info(pem(cert)).ari_cert_id is None


def test_cert_info_takes_first_certificate_of_chain() -> None:
    first = leaf(serial=0x1234, names=("first.customer.com",))
    chain = pem(first) + pem(ca()[1]) + pem(leaf(serial=0x5678, names=("second.customer.com",)))
    info = ren.cert_info(chain)
    assert info.serial_hex == "1234" and info.names == ["first.customer.com"]
    assert ren.cert_info(chain.decode()).serial_hex == "1234"


GARBAGE = [
    b"",
    b"not a certificate",
    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
]


@pytest.mark.parametrize("data", GARBAGE + ["der"])
def test_cert_info_garbage(data: t.Any) -> None:
    if data == "der":
        data = der(leaf())
    with pytest.raises(LinkcertError) as err:
        ren.cert_info(data)
    assert err.value.reason == "cert_invalid"


# ------------------------------------------------------------------ thresholds

def info_for(days: float, not_before: datetime.datetime = NB, **kwargs: t.Any) -> ren.CertInfo:
    return ren.cert_info(pem(leaf(days=days, not_before=not_before, **kwargs)))


@pytest.mark.parametrize("days, remaining", [
    (90, 30 * DAY),
    (64, 21 * DAY + 8 * HOUR),
    (45, 15 * DAY),
    (30, 10 * DAY),
    (10, 3 * DAY + 8 * HOUR),       # ten days is not "under ten days": a third
    (9, 4 * DAY + 12 * HOUR),       # under ten days: half
    (6, 3 * DAY),
    (160 / 24, 80 * HOUR),          # Let's Encrypt's 160-hour short-lived certificates
])
def test_lifetime_renew_after(days: float, remaining: datetime.timedelta) -> None:
    info = info_for(days)
    assert ren.lifetime_renew_after(info) == info.not_after - remaining


def test_lifetime_renew_after_is_not_thirty_days() -> None:
    info = info_for(6)
    assert ren.lifetime_renew_after(info) > info.not_after - 30 * DAY
    assert ren.lifetime_renew_after(info) > info.not_before


@pytest.mark.parametrize("days, renew_before, expected", [
    (90, 30, NB + 60 * DAY),
    (90, 1, NB + 89 * DAY),
    (64, 20, NB + 44 * DAY),
    (6, 30, NB - 24 * DAY),
])
def test_days_renew_after(days: int, renew_before: int, expected: datetime.datetime) -> None:
    assert ren.days_renew_after(info_for(days), renew_before) == expected


# ------------------------------------------------------------------ decide

INFO = info_for(90, serial=0x87654321, names=("links.customer.com", "www.links.customer.com"))  # NB .. NB+90d, renew by lifetime at NB+60d
INFO_NO_AKI = info_for(90, serial=0x1, aki="none", names=("links.customer.com", "www.links.customer.com"))
NAMES = ["links.customer.com", "www.links.customer.com"]
ARI_AT = NB + 50 * DAY
NA = NB + 90 * DAY
CID = INFO.ari_cert_id

# (id, info, kwargs for decide, due, reason, renew_after, replaces)
DECIDE = [
    ("no-cert", None, dict(), True, "no_certificate", None, None),
    ("no-cert-ari", None, dict(ari_offered=True, force=True), True, "no_certificate", None, None),
    ("names-added", INFO, dict(names=NAMES + ["new.customer.com"], ari_offered=True), True, "names_changed", None, None),
    ("names-dropped", INFO, dict(names=NAMES[:1], ari_offered=True), True, "names_changed", None, None),
    ("names-same-set-other-order-case", INFO, dict(names=["WWW.links.customer.com.", "links.customer.com"], ari_offered=True),
     False, "not_due", NB + 60 * DAY, None),
    ("names-before-force", INFO, dict(names=["other.customer.com"], force=True, ari_offered=True), True, "names_changed", None, None),
    ("names-before-expired", INFO, dict(names=["other.customer.com"], now=NA + DAY), True, "names_changed", None, None),
    ("key-type", INFO, dict(key_type="rsa2048", ari_offered=True), True, "key_type_changed", None, CID),
    ("key-type-no-ari", INFO, dict(key_type="rsa2048"), True, "key_type_changed", None, None),
    ("key-type-before-force", INFO, dict(key_type="ec384", force=True), True, "key_type_changed", None, None),
    ("forced", INFO, dict(force=True, ari_offered=True), True, "forced", None, CID),
    ("forced-no-aki", INFO_NO_AKI, dict(force=True, ari_offered=True), True, "forced", None, None),
    ("forced-before-not-yet-valid", INFO, dict(force=True, now=NB - DAY), True, "forced", None, None),
    ("expired-at-not-after", INFO, dict(now=NA, ari_offered=True), True, "expired", None, CID),
    ("expired-after", INFO, dict(now=NA + DAY, renew_before=5), True, "expired", None, None),
    ("expired-before-ari", INFO, dict(now=NA, ari_renew_at=NA + DAY), True, "expired", None, None),
    # A window past expiry (Pebble 2.6's for a short certificate) is not waited for: the lifetime rule decides.
    ("just-before-expiry-ari-later", INFO, dict(now=NA - US, ari_renew_at=NA + DAY), True, "lifetime_threshold", NB + 60 * DAY, None),
    ("ari-leaving-under-a-tenth", INFO, dict(now=NB + 70 * DAY, ari_renew_at=NB + 82 * DAY, ari_offered=True),
     True, "lifetime_threshold", NB + 60 * DAY, CID),
    ("ari-leaving-a-tenth", INFO, dict(now=NB + 70 * DAY, ari_renew_at=NB + 81 * DAY, ari_offered=True), False, "not_due", NB + 81 * DAY, None),
    ("not-yet-valid", INFO, dict(now=NB - ren.CLOCK_SKEW_TOLERANCE - US, ari_offered=True), False, "not_yet_valid", NB, None),
    # A host clock a little behind the CA's (notBefore within the tolerance ahead of it) is not a clock problem:
    # the certificate is decided on as if valid, with its real renewal instant (not notBefore).
    ("not-before-within-skew-tolerance", INFO, dict(now=NB - US, ari_offered=True), False, "not_due", NB + 60 * DAY, None),
    ("not-before-at-skew-tolerance", INFO, dict(now=NB - ren.CLOCK_SKEW_TOLERANCE), False, "not_due", NB + 60 * DAY, None),
    ("not-yet-valid-ari-passed", INFO, dict(now=NB - HOUR, ari_renew_at=NB - DAY), False, "not_yet_valid", NB, None),
    ("valid-from-not-before", INFO, dict(now=NB), False, "not_due", NB + 60 * DAY, None),
    ("ari-at-instant", INFO, dict(now=ARI_AT, ari_renew_at=ARI_AT, ari_offered=True), True, "ari_window", ARI_AT, CID),
    ("ari-just-before", INFO, dict(now=ARI_AT - US, ari_renew_at=ARI_AT, ari_offered=True), False, "not_due", ARI_AT, None),
    ("ari-passed", INFO, dict(now=NB + 70 * DAY, ari_renew_at=ARI_AT, ari_offered=True), True, "ari_window", ARI_AT, CID),
    ("ari-later-than-lifetime", INFO, dict(now=NB + 65 * DAY, ari_renew_at=NB + 70 * DAY, ari_offered=True),
     False, "not_due", NB + 70 * DAY, None),
    ("ari-earlier-than-lifetime", INFO, dict(now=NB + 10 * DAY, ari_renew_at=NB + 5 * DAY, ari_offered=True), True, "ari_window", NB + 5 * DAY, CID),
    ("ari-ignored-with-days", INFO, dict(now=ARI_AT, ari_renew_at=ARI_AT, renew_before=30, ari_offered=True),
     False, "not_due", NB + 60 * DAY, None),
    ("lifetime-at-instant", INFO, dict(now=NB + 60 * DAY, ari_offered=True), True, "lifetime_threshold", NB + 60 * DAY, CID),
    ("lifetime-at-instant-no-ari", INFO, dict(now=NB + 60 * DAY), True, "lifetime_threshold", NB + 60 * DAY, None),
    ("lifetime-just-before", INFO, dict(now=NB + 60 * DAY - US), False, "not_due", NB + 60 * DAY, None),
    ("lifetime-just-before-expiry", INFO, dict(now=NA - US), True, "lifetime_threshold", NB + 60 * DAY, None),
    ("days-at-instant", INFO, dict(now=NA - 20 * DAY, renew_before=20, ari_offered=True), True, "days_threshold", NA - 20 * DAY, CID),
    ("days-just-before", INFO, dict(now=NA - 20 * DAY - US, renew_before=20), False, "not_due", NA - 20 * DAY, None),
    ("days-as-string", INFO, dict(now=NA - 20 * DAY, renew_before="20"), True, "days_threshold", NA - 20 * DAY, None),
    ("days-longer-than-lifetime", INFO, dict(now=NB, renew_before=120), True, "days_threshold", NA - 120 * DAY, None),
    ("auto-mixed-case", INFO, dict(now=NB + DAY, renew_before="Auto"), False, "not_due", NB + 60 * DAY, None),
]


@pytest.mark.parametrize("info, kwargs, due, reason, renew_after, replaces", [row[1:] for row in DECIDE], ids=[row[0] for row in DECIDE])
def test_decide(info: t.Optional[ren.CertInfo], kwargs: t.Dict[str, t.Any], due: bool, reason: str,
                renew_after: t.Optional[datetime.datetime], replaces: t.Optional[str]) -> None:
    decision = ren.decide(info, kwargs.get("names", NAMES), kwargs.get("key_type", "ec256"), kwargs.get("now", NB + 30 * DAY),
                          kwargs.get("renew_before", "auto"), force=kwargs.get("force", False), ari_renew_at=kwargs.get("ari_renew_at"),
                          ari_offered=kwargs.get("ari_offered", False))
    assert (decision.due, decision.reason, decision.renew_after, decision.replaces) == (due, reason, renew_after, replaces)
    assert decision.reason in ren.REASONS
    assert decision.message and "\n" not in decision.message and decision.message.endswith(".")
    if renew_after is not None:
        assert ren.iso(renew_after) in decision.message


def test_cid_is_present_for_replaces_rows() -> None:
    assert CID is not None and CID == ren.ari_cert_id(leaf(serial=0x87654321))


def test_decide_short_lived_certificate() -> None:
    info = info_for(6)
    assert ren.decide(info, info.names, "ec256", NB + 3 * DAY - US, "auto").due is False
    decision = ren.decide(info, info.names, "ec256", NB + 3 * DAY, "auto")
    assert (decision.due, decision.reason, decision.renew_after) == (True, "lifetime_threshold", NB + 3 * DAY)
    assert "half" in decision.message


def test_clock_skew_tolerance_is_minutes() -> None:
    # Enough for a host some seconds or minutes behind a CA that does not backdate notBefore; not enough to hide
    # a clock that is off by hours or days (the fault suite's clock cases run 30 s, 30 min and 2 days behind).
    assert datetime.timedelta(minutes=1) <= ren.CLOCK_SKEW_TOLERANCE <= datetime.timedelta(minutes=10)


@pytest.mark.parametrize("now, valid", [
    (NB - ren.CLOCK_SKEW_TOLERANCE - US, False),
    (NB - ren.CLOCK_SKEW_TOLERANCE, True),
    (NB - 30 * datetime.timedelta(seconds=1), True),  # a host 30 s behind the CA that just issued the certificate
    (NB, True),
    (NA - US, True),
    (NA, False),
    (NB - DAY, False),
])
def test_valid_at(now: datetime.datetime, valid: bool) -> None:
    assert ren.valid_at(INFO, now) is valid
    assert ren.valid_at(INFO, now.replace(tzinfo=None)) is valid  # a naive time is UTC
    # valid_at and decide draw the same line: a certificate valid at now is never "not yet valid".
    if now < NA:
        assert (ren.decide(INFO, NAMES, "ec256", now, "auto").reason == "not_yet_valid") is (not valid)


def test_decide_messages() -> None:
    skew = ren.decide(INFO, NAMES, "ec256", NB - DAY, "auto")
    assert "clock" in skew.message and "2025-03-01T00:00:00Z" in skew.message and "2025-02-28T00:00:00Z" in skew.message
    expired = ren.decide(INFO, NAMES, "ec256", NA, "auto")
    assert "2025-05-30T00:00:00Z" in expired.message
    changed = ren.decide(INFO, NAMES[:1] + ["new.customer.com"], "ec256", NB, "auto")
    assert "new.customer.com" in changed.message and "www.links.customer.com" in changed.message
    loop = ren.decide(INFO, NAMES, "ec256", NB, 120)
    assert "every run" in loop.message
    not_due = ren.decide(INFO, NAMES, "ec256", NB + DAY, "auto")
    assert "a third of its lifetime" in not_due.message and "2025-04-30T00:00:00Z" in not_due.message


@pytest.mark.parametrize("renew_before", [0, -1, "0", "soon", "", True, 1.5, None, "-3"])
def test_decide_rejects_bad_renew_before(renew_before: t.Any) -> None:
    with pytest.raises(InputError):
        ren.decide(INFO, NAMES, "ec256", NB, renew_before)
    with pytest.raises(InputError):
        ren.decide(None, NAMES, "ec256", NB, renew_before)


# ------------------------------------------------------------------ ARI responses

def load(name: str) -> t.Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


NOW = datetime.datetime(2025, 4, 30, 12, 0, tzinfo=UTC)
MAY1 = datetime.datetime(2025, 5, 1, tzinfo=UTC)
MAY3 = datetime.datetime(2025, 5, 3, tzinfo=UTC)


@pytest.mark.parametrize("name, start, end, url", [
    ("renewal_info_valid.json", MAY1, MAY3, "https://acme.example.com/docs/ari"),
    ("renewal_info_no_explanation.json", MAY1, MAY3, None),
    ("renewal_info_fractional_offset.json", MAY1 + datetime.timedelta(microseconds=123456), MAY3 + datetime.timedelta(milliseconds=500), None),
    ("renewal_info_revoked.json", datetime.datetime(2025, 3, 1, 10, tzinfo=UTC), datetime.datetime(2025, 3, 1, 10, 30, tzinfo=UTC),
     "https://acme.example.com/incidents/2025-03-01"),
])
def test_parse_ari_valid(name: str, start: datetime.datetime, end: datetime.datetime, url: t.Optional[str]) -> None:
    window = ren.parse_ari(load(name), "21600", NOW)
    assert window is not None
    assert (window.start, window.end, window.explanation_url, window.retry_after) == (start, end, url, NOW + 6 * HOUR)
    assert window.start.utcoffset() == datetime.timedelta(0) and window.end.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("name", [
    "renewal_info_end_before_start.json",
    "renewal_info_end_equals_start.json",
    "renewal_info_missing_end.json",
    "renewal_info_missing_window.json",
    "renewal_info_bad_timestamp.json",
    "renewal_info_no_timezone.json",
    "renewal_info_window_not_object.json",
])
def test_parse_ari_malformed(name: str) -> None:
    assert ren.parse_ari(load(name), "3600", NOW) is None


@pytest.mark.parametrize("body", [
    None, [], "suggestedWindow", {},
    {"suggestedWindow": {"start": 1746057600, "end": 1746230400}},
    {"suggestedWindow": {"start": "2025-05-01T00:00:00Z", "end": None}},
    {"suggestedWindow": {"start": "2025-02-30T00:00:00Z", "end": "2025-05-03T00:00:00Z"}},
    {"suggestedWindow": {"start": "2025-05-01T00:00:00+25:00", "end": "2025-05-03T00:00:00Z"}},
])
def test_parse_ari_malformed_inline(body: t.Any) -> None:
    assert ren.parse_ari(body, None, NOW) is None


def test_parse_ari_ignores_non_string_explanation() -> None:
    body = dict(load("renewal_info_valid.json"), explanationURL=42)
    window = ren.parse_ari(body, None, NOW)
    assert window is not None and window.explanation_url is None


@pytest.mark.parametrize("header, delay", [
    (None, 6 * HOUR),
    ("", 6 * HOUR),
    ("3600", HOUR),
    (" 7200 ", 2 * HOUR),
    ("60", MINUTE),
    ("30", MINUTE),
    ("0", MINUTE),
    ("-5", MINUTE),
    ("86400", DAY),
    ("86401", DAY),
    ("604800", DAY),
    ("9" * 40, DAY),
    ("Wed, 30 Apr 2025 14:00:00 GMT", 2 * HOUR),
    ("Wed, 30 Apr 2025 12:00:30 GMT", MINUTE),
    ("Tue, 29 Apr 2025 12:00:00 GMT", MINUTE),
    ("Fri, 01 Jan 2100 00:00:00 GMT", DAY),
    ("Wed, 30 Apr 2025 16:00:00 +0200", 2 * HOUR),
    ("soon", 6 * HOUR),
    ("1.5", 6 * HOUR),
    ("Wed, 31 Apr 2025 14:00:00 GMT", 6 * HOUR),
])
def test_parse_ari_retry_after(header: t.Optional[str], delay: datetime.timedelta) -> None:
    window = ren.parse_ari(load("renewal_info_valid.json"), header, NOW)
    assert window is not None
    assert window.retry_after == NOW + delay


# ------------------------------------------------------------------ picking a time in the window

WINDOW = ren.AriWindow(MAY1, MAY3, None, NOW + 6 * HOUR)


@pytest.mark.parametrize("seed", range(0, 400, 7))
def test_pick_in_window_stays_inside_and_is_deterministic(seed: int) -> None:
    first = ren.pick_in_window(WINDOW, random.Random(seed))
    assert WINDOW.start <= first < WINDOW.end
    assert ren.pick_in_window(WINDOW, random.Random(seed)) == first


def test_pick_in_window_spreads_over_window() -> None:
    rng = random.Random(20250501)
    picks = [ren.pick_in_window(WINDOW, rng) for _index in range(500)]
    span = WINDOW.end - WINDOW.start
    assert min(picks) < WINDOW.start + span / 10 and max(picks) > WINDOW.end - span / 10
    assert len(set(picks)) == len(picks)


@pytest.mark.parametrize("end", [MAY1, MAY1 + US])
def test_pick_in_degenerate_window(end: datetime.datetime) -> None:
    assert ren.pick_in_window(ren.AriWindow(MAY1, end, None, NOW), random.Random(1)) == MAY1


def test_pick_then_decide_renews_when_window_has_passed() -> None:
    window = ren.parse_ari(load("renewal_info_revoked.json"), None, NOW)
    assert window is not None
    at = ren.pick_in_window(window, random.Random(3))
    decision = ren.decide(INFO, NAMES, "ec256", NOW, "auto", ari_renew_at=at, ari_offered=True)
    assert (decision.due, decision.reason, decision.replaces) == (True, "ari_window", CID)


# ------------------------------------------------------------------ directories and profiles

LE = ren.directory_features(load("directory_letsencrypt.json"))
PEBBLE = ren.directory_features(load("directory_pebble_2_4.json"))


def test_directory_features_letsencrypt() -> None:
    assert LE == {
        "ari": True,
        "renewal_info_url": "https://acme-v02.api.letsencrypt.org/acme/renewal-info",
        "profiles": {
            "classic": "https://letsencrypt.org/docs/profiles#classic",
            "shortlived": "https://letsencrypt.org/docs/profiles#shortlived",
            "tlsserver": "https://letsencrypt.org/docs/profiles#tlsserver",
        },
    }


def test_directory_features_pebble() -> None:
    assert PEBBLE == {"ari": False, "renewal_info_url": None, "profiles": {}}


@pytest.mark.parametrize("directory, expected", [
    ({}, {"ari": False, "renewal_info_url": None, "profiles": {}}),
    ([], {"ari": False, "renewal_info_url": None, "profiles": {}}),
    ({"renewalInfo": ""}, {"ari": False, "renewal_info_url": None, "profiles": {}}),
    ({"renewalInfo": 7, "meta": []}, {"ari": False, "renewal_info_url": None, "profiles": {}}),
    ({"meta": {"profiles": ["classic"]}}, {"ari": False, "renewal_info_url": None, "profiles": {}}),
    ({"meta": {"profiles": {"classic": None, "x": 1}}}, {"ari": False, "renewal_info_url": None, "profiles": {"classic": "", "x": "1"}}),
])
def test_directory_features_odd_documents(directory: t.Any, expected: t.Dict[str, t.Any]) -> None:
    assert ren.directory_features(directory) == expected


@pytest.mark.parametrize("features, profile, expected", [
    (LE, None, None),
    (LE, "classic", "classic"),
    (LE, "shortlived", "shortlived"),
    (PEBBLE, None, None),
])
def test_check_profile_accepts(features: t.Dict[str, t.Any], profile: t.Optional[str], expected: t.Optional[str]) -> None:
    assert ren.check_profile(profile, features) == expected


@pytest.mark.parametrize("features, profile, reason", [
    (LE, "short-lived", "profile_unknown"),
    (LE, "Classic", "profile_unknown"),
    (LE, "", "profile_unknown"),
    (PEBBLE, "classic", "profiles_unsupported"),
    (PEBBLE, "shortlived", "profiles_unsupported"),
])
def test_check_profile_rejects(features: t.Dict[str, t.Any], profile: str, reason: str) -> None:
    with pytest.raises(LinkcertError) as err:
        ren.check_profile(profile, features)
    assert err.value.reason == reason and err.value.item == profile
    assert repr(profile) in err.value.msg
    if reason == "profile_unknown":
        assert "classic, shortlived, tlsserver" in err.value.msg


MINUTE_CERT = info_for(60 / 86400)  # NB .. NB + 60 s, as the lab's short certificates
# (id, certificate, window start, window end, now, says when)
WINDOW_SAYS = [
    ("pebble-26-minute-cert", MINUTE_CERT, NB + 40 * datetime.timedelta(seconds=1) - DAY, NB + 40 * datetime.timedelta(seconds=1) + DAY,
     NB + datetime.timedelta(seconds=5), False),
    ("as-long-as-the-lifetime", INFO, NB, NA, NB + DAY, False),
    ("two-days-of-ninety", INFO, NB + 59 * DAY, NB + 61 * DAY, NB + DAY, True),
    ("revoked-an-hour-ago", MINUTE_CERT, NB - HOUR, NB - HOUR + datetime.timedelta(seconds=1), NB + datetime.timedelta(seconds=5), True),
    ("wide-but-over", INFO, NB - DAY, NA + DAY, NA + 2 * DAY, True),  # in the past: renew now
]


@pytest.mark.parametrize("info, start, end, now, says", [row[1:] for row in WINDOW_SAYS], ids=[row[0] for row in WINDOW_SAYS])
def test_a_window_says_when_unless_it_spans_the_whole_lifetime(info, start, end, now, says):
    assert ren.window_says_when(ren.AriWindow(start, end, None, now + HOUR), info, now) is says
