# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Private keys, CSRs and JWKs for ACME.

Certificate keys and ACME account keys are EC P-256/P-384 or RSA 2048/3072/4096
with e=65537; nothing else is generated or accepted.  Keys are stored as
unencrypted PKCS#8 PEM (the files are root-only, nginx's master process reads
them as root).  Error messages name the file or item concerned and never echo
key material.
"""

from __future__ import annotations

import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError

try:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc

try:
    import josepy
    HAS_JOSEPY = True
    JOSEPY_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_JOSEPY = False
    JOSEPY_IMPORT_ERROR = exc

KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")

# Names longer than this cannot be a subject CN (X.520 ub-common-name); the SAN carries them anyway.
MAX_CN_LENGTH = 64
RSA_PUBLIC_EXPONENT = 65537

PrivateKey = t.Union["ec.EllipticCurvePrivateKey", "rsa.RSAPrivateKey"]

_EC_CURVES = {"ec256": "secp256r1", "ec384": "secp384r1"}
_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}


def _need_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise LinkcertError("the cryptography Python library is missing: %s" % CRYPTOGRAPHY_IMPORT_ERROR, reason="missing_library", item="cryptography")


def _need_josepy() -> None:
    if not HAS_JOSEPY:
        raise LinkcertError("the josepy Python library is missing: %s" % JOSEPY_IMPORT_ERROR, reason="missing_library", item="josepy")


def generate_key(key_type: str) -> PrivateKey:
    """Return a new private key of ``key_type`` (one of KEY_TYPES)."""
    _need_cryptography()
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=_RSA_BITS[key_type])
    raise LinkcertError("unknown key type %r; expected one of %s" % (key_type, ", ".join(KEY_TYPES)), item=str(key_type), reason="invalid_input")


def key_type_of(key: t.Any) -> str:
    """Return the KEY_TYPES name of ``key`` (private or public); LinkcertError(reason="key_unsupported") otherwise."""
    _need_cryptography()
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        for name, curve in _EC_CURVES.items():
            if key.curve.name == curve:
                return name
        raise LinkcertError("EC keys on curve %s are not supported; use P-256 or P-384" % key.curve.name, reason="key_unsupported")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
        if public.public_numbers().e != RSA_PUBLIC_EXPONENT:
            raise LinkcertError("RSA keys with public exponent %d are not supported; use 65537" % public.public_numbers().e, reason="key_unsupported")
        for name, bits in _RSA_BITS.items():
            if key.key_size == bits:
                return name
        raise LinkcertError("RSA keys of %d bits are not supported; use 2048, 3072 or 4096" % key.key_size, reason="key_unsupported")
    raise LinkcertError("keys of type %s are not supported; use one of %s" % (type(key).__name__, ", ".join(KEY_TYPES)), reason="key_unsupported")


def key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key``."""
    _need_cryptography()
    return key.private_bytes(encoding=serialization.Encoding.PEM, format=serialization.PrivateFormat.PKCS8,
                             encryption_algorithm=serialization.NoEncryption())


def load_key_pem(data: bytes, item: str) -> PrivateKey:
    """Load an unencrypted PEM private key read from ``item`` (a file name or label).

    Raises LinkcertError(reason="key_invalid") for anything unreadable and
    reason="key_unsupported" for a readable key of a type not in KEY_TYPES.
    The message names ``item`` and never includes ``data``.
    """
    _need_cryptography()
    if isinstance(data, str):
        data = data.encode("utf-8", errors="replace")
    if not isinstance(data, (bytes, bytearray)) or not data.strip():
        raise LinkcertError("%s is empty or not a PEM private key" % item, item=item, reason="key_invalid")
    try:
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except TypeError:
        # Raised by cryptography when the key is encrypted and no password was given.
        raise LinkcertError("%s holds an encrypted private key; only unencrypted keys are supported" % item, item=item, reason="key_invalid") from None
    except (ValueError, UnsupportedAlgorithm):
        raise LinkcertError("%s does not hold a readable PEM private key" % item, item=item, reason="key_invalid") from None
    try:
        key_type_of(key)
    except LinkcertError as err:
        raise LinkcertError("%s: %s" % (item, err.msg), item=item, reason=err.reason) from None
    return t.cast(PrivateKey, key)


def make_csr(key: PrivateKey, names: t.Sequence[str]) -> bytes:
    """PEM CSR signed with SHA-256: a SAN dNSName per name (order kept), CN = first name if it fits."""
    _need_cryptography()
    names = list(names)
    if not names:
        raise LinkcertError("a certificate request needs at least one name", reason="invalid_input")
    if len(names[0]) <= MAX_CN_LENGTH:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    else:
        subject = x509.Name([])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    # RFC 5280 4.2.1.6: the SAN is critical when the subject is empty.
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=len(subject) == 0)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def jwk_and_alg(key: PrivateKey) -> t.Tuple[josepy.JWK, josepy.JWASignature]:
    """The josepy JWK of ``key`` and the JWS algorithm that goes with it (ES256, ES384 or RS256)."""
    _need_cryptography()
    _need_josepy()
    key_type = key_type_of(key)
    if key_type == "ec256":
        return josepy.JWKEC(key=key), josepy.ES256
    if key_type == "ec384":
        return josepy.JWKEC(key=key), josepy.ES384
    return josepy.JWKRSA(key=key), josepy.RS256


def thumbprint(jwk: josepy.JWK) -> str:
    """Base64url (no padding) of the RFC 7638 SHA-256 thumbprint of ``jwk``."""
    _need_cryptography()
    _need_josepy()
    return josepy.b64.b64encode(jwk.thumbprint(hash_function=hashes.SHA256)).decode("ascii")


def key_authorization(token: str, jwk: josepy.JWK) -> str:
    """The HTTP-01 key authorization (RFC 8555 8.1): token "." thumbprint."""
    return "%s.%s" % (token, thumbprint(jwk))


def _spki(public_key: t.Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_matches(key: PrivateKey, cert_pem: bytes) -> bool:
    """Whether the first certificate in ``cert_pem`` carries the public key of ``key``.

    An unreadable certificate does not match (returns False).
    """
    _need_cryptography()
    try:
        cert = x509.load_pem_x509_certificate(bytes(cert_pem))
        cert_public = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return _spki(cert_public) == _spki(key.public_key())
