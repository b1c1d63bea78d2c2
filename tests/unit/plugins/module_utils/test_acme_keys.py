# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Keys, CSRs and JWKs: round trips, algorithm choice, CSR content, error messages."""

from __future__ import annotations

import datetime
import hashlib
import json
import typing as t

import josepy
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_keys as keys
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

_CACHE: t.Dict[str, t.Any] = {}


def cached_key(key_type: str) -> t.Any:
    """RSA 4096 generation is slow; generate each type once per session."""
    if key_type not in _CACHE:
        _CACHE[key_type] = keys.generate_key(key_type)
    return _CACHE[key_type]


def self_signed(key: t.Any, name: str = "links.customer.com") -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def b64url(data: bytes) -> str:
    return josepy.b64.b64encode(data).decode("ascii")


def int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@pytest.mark.parametrize("key_type", keys.KEY_TYPES)
def test_key_round_trip(key_type: str) -> None:
    key = cached_key(key_type)
    assert keys.key_type_of(key) == key_type
    pem = keys.key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = keys.load_key_pem(pem, "/etc/x/privkey.pem")
    assert keys.key_type_of(loaded) == key_type
    assert keys.key_to_pem(loaded) == pem


@pytest.mark.parametrize("key_type, expected", [("ec256", (ec.EllipticCurvePrivateKey, 256)), ("ec384", (ec.EllipticCurvePrivateKey, 384)),
                                                ("rsa2048", (rsa.RSAPrivateKey, 2048)), ("rsa3072", (rsa.RSAPrivateKey, 3072))])
def test_generated_key_parameters(key_type: str, expected: t.Tuple[type, int]) -> None:
    key = cached_key(key_type)
    assert isinstance(key, expected[0])
    assert key.key_size == expected[1]
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.public_key().public_numbers().e == 65537


def test_unknown_key_type() -> None:
    with pytest.raises(LinkcertError) as info:
        keys.generate_key("dsa1024")
    assert info.value.reason == "invalid_input"


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP521R1()), ed25519.Ed25519PrivateKey.generate,
                                  lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), lambda: "not a key"],
                         ids=["p521", "ed25519", "rsa1024", "str"])
def test_key_type_of_unsupported(make: t.Callable[[], t.Any]) -> None:
    with pytest.raises(LinkcertError) as info:
        keys.key_type_of(make())
    assert info.value.reason == "key_unsupported"


GARBAGE = [
    b"garbage",
    b"",
    b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n",
    b"\x00\xff" * 40,
]


@pytest.mark.parametrize("data", GARBAGE)
def test_load_key_pem_garbage(data: bytes) -> None:
    with pytest.raises(LinkcertError) as info:
        keys.load_key_pem(data, "x")
    assert info.value.reason == "key_invalid"
    assert info.value.item == "x"
    assert "x" in str(info.value)
    if data.strip():
        assert data.decode("latin-1") not in str(info.value)
    assert "c2VjcmV0" not in str(info.value)


def test_load_key_pem_encrypted_and_unsupported() -> None:
    key = cached_key("ec256")
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(LinkcertError) as info:
        keys.load_key_pem(encrypted, "/k.pem")
    assert info.value.reason == "key_invalid"
    assert "encrypted" in info.value.msg
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption())
    with pytest.raises(LinkcertError) as info:
        keys.load_key_pem(ed, "/ed.pem")
    assert info.value.reason == "key_unsupported"
    assert info.value.item == "/ed.pem"


@pytest.mark.parametrize("key_type, alg, jwk_class", [("ec256", josepy.ES256, josepy.JWKEC), ("ec384", josepy.ES384, josepy.JWKEC),
                                                      ("rsa2048", josepy.RS256, josepy.JWKRSA), ("rsa4096", josepy.RS256, josepy.JWKRSA)])
def test_jwk_and_alg(key_type: str, alg: t.Any, jwk_class: type) -> None:
    jwk, chosen = keys.jwk_and_alg(cached_key(key_type))
    assert chosen is alg
    assert isinstance(jwk, jwk_class)
    # the JWK signs and verifies with the chosen algorithm
    signature = chosen.sign(jwk.key, b"payload")
    assert chosen.verify(jwk.public_key().key, b"payload", signature)


def rfc7638_members(key: t.Any) -> t.Dict[str, str]:
    """The required JWK members of RFC 7638 section 3.2, built independently of josepy."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        return {"crv": {256: "P-256", 384: "P-384"}[public.curve.key_size], "kty": "EC",
                "x": b64url(numbers.x.to_bytes(size, "big")), "y": b64url(numbers.y.to_bytes(size, "big"))}
    numbers = public.public_numbers()
    return {"e": int_b64(numbers.e), "kty": "RSA", "n": int_b64(numbers.n)}


@pytest.mark.parametrize("key_type", ["ec256", "ec384", "rsa2048"])
def test_thumbprint_and_key_authorization(key_type: str) -> None:
    key = cached_key(key_type)
    jwk, _alg = keys.jwk_and_alg(key)
    canonical = json.dumps(rfc7638_members(key), sort_keys=True, separators=(",", ":")).encode("ascii")
    expected = b64url(hashlib.sha256(canonical).digest())
    assert keys.thumbprint(jwk) == expected
    assert "=" not in expected
    assert keys.key_authorization("tok-EN_123", jwk) == "tok-EN_123." + expected


@pytest.mark.parametrize("names", [
    ["links.customer.com"],
    ["b.example", "a.example", "c.example"],
    ["x" * 60 + ".example", "short.example"],
])
@pytest.mark.parametrize("key_type", ["ec256", "rsa2048"])
def test_make_csr(names: t.List[str], key_type: str) -> None:
    key = cached_key(key_type)
    csr = x509.load_pem_x509_csr(keys.make_csr(key, names))
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == names
    assert len(list(san)) == len(names)
    cns = [attr.value for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cns == ([names[0]] if len(names[0]) <= 64 else [])
    assert csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_make_csr_long_first_name_has_no_cn() -> None:
    long_name = "a" * 63 + "." + "b" * 10 + ".example"
    csr = x509.load_pem_x509_csr(keys.make_csr(cached_key("ec256"), [long_name, "short.example"]))
    assert csr.is_signature_valid
    assert not csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    san_ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san_ext.value.get_values_for_type(x509.DNSName) == [long_name, "short.example"]
    assert san_ext.critical


def test_make_csr_needs_a_name() -> None:
    with pytest.raises(LinkcertError) as info:
        keys.make_csr(cached_key("ec256"), [])
    assert info.value.reason == "invalid_input"


@pytest.mark.parametrize("key_type", ["ec256", "rsa2048"])
def test_public_key_matches(key_type: str) -> None:
    key = cached_key(key_type)
    other = keys.generate_key(key_type)
    cert = self_signed(key)
    assert keys.public_key_matches(key, cert)
    assert not keys.public_key_matches(other, cert)
    assert keys.public_key_matches(key, cert + self_signed(other))  # a fullchain: the leaf counts
    assert not keys.public_key_matches(key, b"not a certificate")
