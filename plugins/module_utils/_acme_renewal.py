# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""When to renew a certificate: the pure decision logic behind ``acme_http01_cert``.

Nothing here talks to the network.  The module reads the current certificate
(``cert_info``), asks the CA's directory what it offers (``directory_features``,
``check_profile``), fetches ACME Renewal Information when offered (RFC 9773;
``parse_ari`` and ``pick_in_window`` turn the response into one instant) and
finally calls ``decide``, which says whether to renew now, why, from when, and
which ARI CertID to send as ``replaces`` in the new order.

Without ARI a certificate is renewed when a third of its lifetime is left, or
half of it for certificates valid for less than ten days, so that short-lived
certificates are handled without a hard-coded number of days.
"""

from __future__ import annotations

import base64
import collections.abc
import datetime
import email.utils
import random
import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError

try:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc

UTC = datetime.timezone.utc

# Retry-After handling for renewalInfo (RFC 9773, section 4.3): absent or
# unreadable -> six hours; anything else clamped to [one minute, one day].
ARI_RETRY_DEFAULT = datetime.timedelta(hours=6)
ARI_RETRY_MIN = datetime.timedelta(minutes=1)
ARI_RETRY_MAX = datetime.timedelta(days=1)

# Below this lifetime a certificate is renewed at half-life instead of at two thirds.
SHORT_LIFETIME = datetime.timedelta(days=10)

# How far a certificate's notBefore may be ahead of this host's clock and the certificate still count as valid now.
# The CA stamps notBefore with its own clock, and not every CA backdates it (Pebble does not; Let's Encrypt backdates
# an hour), so a host whose clock is a few seconds or minutes behind the CA's would otherwise find every new certificate
# "not yet valid".  A larger gap is a clock to fix: ``decide`` then says so (reason ``not_yet_valid``).
CLOCK_SKEW_TOLERANCE = datetime.timedelta(minutes=5)

KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096", "other")

REASONS = ("no_certificate", "names_changed", "key_type_changed", "forced", "expired", "not_yet_valid",
           "ari_window", "lifetime_threshold", "days_threshold", "not_due")

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class CertInfo(t.NamedTuple):
    serial_hex: str
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    names: t.List[str]
    ari_cert_id: t.Optional[str]
    key_type: str


class AriWindow(t.NamedTuple):
    start: datetime.datetime
    end: datetime.datetime
    explanation_url: t.Optional[str]
    retry_after: datetime.datetime


class Decision(t.NamedTuple):
    due: bool
    reason: str
    renew_after: t.Optional[datetime.datetime]
    replaces: t.Optional[str]
    message: str


# ------------------------------------------------------------------ helpers

def _utc(value: datetime.datetime) -> datetime.datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime.datetime) -> str:
    """ISO 8601 in UTC to the second, as shown to people: ``2025-03-01T12:00:00Z``."""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _serial_value_bytes(serial: int) -> bytes:
    """The contents octets of the DER INTEGER: minimal big-endian two's complement."""
    magnitude = serial if serial >= 0 else -serial - 1
    return serial.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def _require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise LinkcertError("reading certificates needs the cryptography Python library, which is missing: %s" % CRYPTOGRAPHY_IMPORT_ERROR,
                            reason="missing_library", item="cryptography")


def _validity(cert: t.Any) -> t.Tuple[datetime.datetime, datetime.datetime]:
    # cryptography >= 42 has the aware *_utc properties; older releases only naive UTC ones.
    if hasattr(cert, "not_valid_before_utc"):
        return _utc(cert.not_valid_before_utc), _utc(cert.not_valid_after_utc)
    return _utc(cert.not_valid_before), _utc(cert.not_valid_after)  # pragma: no cover - old cryptography


def _key_type(cert: t.Any) -> str:
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):  # a key we cannot read is still a certificate we can replace
        return "other"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec256", "secp384r1": "ec384"}.get(key.curve.name, "other")
    if isinstance(key, rsa.RSAPublicKey):
        return {2048: "rsa2048", 3072: "rsa3072", 4096: "rsa4096"}.get(key.key_size, "other")
    return "other"


def _dns_names(cert: t.Any) -> t.List[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def _normal_names(names: t.Iterable[str]) -> t.Set[str]:
    return {name.strip().lower().rstrip(".") for name in names}


# ------------------------------------------------------------------ certificates

def ari_cert_id(cert: t.Any) -> t.Optional[str]:
    """The RFC 9773 CertID of a ``cryptography`` certificate, or None without an AKI keyIdentifier.

    base64url(AKI keyIdentifier) "." base64url(DER INTEGER contents of the serial), unpadded.
    """
    _require_cryptography()
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if not aki.key_identifier:
        return None
    return "%s.%s" % (_b64url(aki.key_identifier), _b64url(_serial_value_bytes(cert.serial_number)))


def cert_info(cert_pem: t.Union[bytes, str]) -> CertInfo:
    """What the renewal decision needs from the first certificate in a PEM file."""
    _require_cryptography()
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode("utf-8", "replace")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        not_before, not_after = _validity(cert)
        info = CertInfo(
            serial_hex="%x" % cert.serial_number,
            issuer=cert.issuer.rfc4514_string(),
            not_before=not_before,
            not_after=not_after,
            names=_dns_names(cert),
            ari_cert_id=ari_cert_id(cert),
            key_type=_key_type(cert),
        )
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise LinkcertError("the existing certificate cannot be read (%s); it will not be trusted for renewal decisions" % exc,
                            reason="cert_invalid") from None
    return info


def valid_at(info: CertInfo, now: datetime.datetime) -> bool:
    """Whether the certificate is valid at ``now`` (this host's clock), allowing ``CLOCK_SKEW_TOLERANCE`` before notBefore."""
    now = _utc(now)
    return info.not_before - CLOCK_SKEW_TOLERANCE <= now < info.not_after


# ------------------------------------------------------------------ thresholds

def lifetime_renew_after(info: CertInfo) -> datetime.datetime:
    """Renewal instant without ARI: a third of the lifetime before expiry, half of it under ten days.

    The lifetime is ``not_after - not_before``.
    """
    lifetime = info.not_after - info.not_before
    if lifetime < SHORT_LIFETIME:
        return info.not_after - lifetime / 2
    return info.not_after - lifetime / 3


def days_renew_after(info: CertInfo, days: int) -> datetime.datetime:
    """Renewal instant for a fixed ``renew_before`` of ``days`` days."""
    return info.not_after - datetime.timedelta(days=days)


# ------------------------------------------------------------------ ARI

def _parse_rfc3339(value: t.Any) -> t.Optional[datetime.datetime]:
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    leap = second == 60
    if leap:
        second = 59
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if offset in ("Z", "z"):
        zone = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        zone = datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))
    try:
        parsed = datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
    except ValueError:
        return None
    if leap:
        parsed += datetime.timedelta(seconds=1)
    return parsed.astimezone(UTC)


def _retry_delay(header: t.Optional[str], now: datetime.datetime) -> datetime.timedelta:
    if header is None or not str(header).strip():
        return ARI_RETRY_DEFAULT
    text = str(header).strip()
    delay: t.Optional[datetime.timedelta] = None
    if re.match(r"^[+-]?\d+$", text):
        seconds = int(text)
        if seconds > ARI_RETRY_MAX.total_seconds():
            return ARI_RETRY_MAX
        delay = datetime.timedelta(seconds=max(seconds, 0))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return ARI_RETRY_DEFAULT
        if when is None:  # pragma: no cover - Python < 3.10 returns None instead of raising
            return ARI_RETRY_DEFAULT
        delay = _utc(when) - now
    return min(max(delay, ARI_RETRY_MIN), ARI_RETRY_MAX)


def parse_ari(body: t.Mapping[str, t.Any], retry_after_header: t.Optional[str], now: datetime.datetime) -> t.Optional[AriWindow]:
    """A renewalInfo response as an ``AriWindow``, or None when the body is not usable.

    ``retry_after`` is when to ask again: ``now`` plus the Retry-After header
    (seconds or an HTTP date), six hours when it is absent or unreadable,
    clamped to between one minute and one day.
    """
    if not isinstance(body, collections.abc.Mapping):
        return None
    window = body.get("suggestedWindow")
    if not isinstance(window, collections.abc.Mapping):
        return None
    start = _parse_rfc3339(window.get("start"))
    end = _parse_rfc3339(window.get("end"))
    if start is None or end is None or end <= start:
        return None
    url = body.get("explanationURL")
    now = _utc(now)
    return AriWindow(start=start, end=end, explanation_url=url if isinstance(url, str) and url else None,
                     retry_after=now + _retry_delay(retry_after_header, now))


def pick_in_window(window: AriWindow, rng: random.Random) -> datetime.datetime:
    """A uniformly random instant in ``[start, end)``, to the microsecond."""
    start, end = _utc(window.start), _utc(window.end)
    span = (end - start) // datetime.timedelta(microseconds=1)
    if span <= 0:
        return start
    return start + datetime.timedelta(microseconds=rng.randrange(span))


# ------------------------------------------------------------------ directory

def directory_features(directory: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """What an ACME directory offers: ``{"ari": bool, "renewal_info_url": str|None, "profiles": {name: description}}``."""
    if not isinstance(directory, collections.abc.Mapping):
        directory = {}
    url = directory.get("renewalInfo")
    if not isinstance(url, str) or not url.strip():
        url = None
    meta = directory.get("meta")
    raw_profiles = meta.get("profiles") if isinstance(meta, collections.abc.Mapping) else None
    profiles: t.Dict[str, str] = {}
    if isinstance(raw_profiles, collections.abc.Mapping):
        for name, description in raw_profiles.items():
            if isinstance(name, str) and name:
                profiles[name] = description if isinstance(description, str) else ("" if description is None else str(description))
    return {"ari": url is not None, "renewal_info_url": url, "profiles": profiles}


def check_profile(profile: t.Optional[str], features: t.Mapping[str, t.Any]) -> t.Optional[str]:
    """The requested profile if the CA offers it; None when none was requested."""
    if profile is None:
        return None
    offered = features.get("profiles") or {}
    if not offered:
        raise LinkcertError("certificate profile %r was requested but this ACME server offers no profiles; leave the profile unset" % profile,
                            item=profile, reason="profiles_unsupported")
    if profile not in offered:
        raise LinkcertError("certificate profile %r is not offered by this ACME server; it offers: %s" % (profile, ", ".join(sorted(offered))),
                            item=profile, reason="profile_unknown", details={"profiles": sorted(offered)})
    return profile


# ------------------------------------------------------------------ decision

def _renew_before_days(renew_before: t.Union[str, int]) -> t.Optional[int]:
    """None for ``auto``, else the number of days (a whole number >= 1)."""
    if isinstance(renew_before, str):
        text = renew_before.strip().lower()
        if text == "auto":
            return None
        if text.isdigit():
            renew_before = int(text)
    if isinstance(renew_before, int) and not isinstance(renew_before, bool) and renew_before >= 1:
        return renew_before
    raise InputError("renew_before must be 'auto' or a whole number of days of at least 1, not %r" % (renew_before,), item=str(renew_before))


#: A time picked in the CA's ARI window is followed unless it leaves less than this share of the lifetime, or falls
#: past notAfter (Pebble 2.6 suggests a 2-day window around two thirds of any lifetime, a one-minute certificate's
#: too): then the lifetime rule decides, so no certificate expires waiting for a window.
ARI_LEAST_LEFT = 0.1


def window_says_when(window: AriWindow, info: CertInfo, now: datetime.datetime) -> bool:
    """Whether an ARI window tells when to renew this certificate. One as long as its whole lifetime does not (Pebble
    2.6's two days around two thirds of a one-minute certificate's life); a short window in the past (a revoked
    certificate) does: renew now."""
    return not (window.end > _utc(now) and window.end - window.start >= info.not_after - info.not_before)


def decide(info: t.Optional[CertInfo], wanted_names: t.Sequence[str], wanted_key_type: str, now: datetime.datetime,
           renew_before: t.Union[str, int], force: bool = False, ari_renew_at: t.Optional[datetime.datetime] = None,
           ari_offered: bool = False) -> Decision:
    """Whether to renew now, why, from when, and which CertID to send as ``replaces``."""
    days = _renew_before_days(renew_before)
    now = _utc(now)
    if info is None:
        return Decision(True, "no_certificate", None, None, "There is no certificate yet, so one will be issued.")

    def renew(reason: str, renew_after: t.Optional[datetime.datetime], message: str) -> Decision:
        replaces = info.ari_cert_id if ari_offered and reason != "names_changed" else None
        return Decision(True, reason, renew_after, replaces, message)

    subject = "The certificate for %s (serial %s)" % (", ".join(info.names) or "no DNS names", info.serial_hex)
    have, want = _normal_names(info.names), _normal_names(wanted_names)
    if have != want:
        changes = []
        if want - have:
            changes.append("adds " + ", ".join(sorted(want - have)))
        if have - want:
            changes.append("drops " + ", ".join(sorted(have - want)))
        return renew("names_changed", None, "%s does not cover the wanted names (the new one %s), so a new certificate will be issued." % (
            subject, " and ".join(changes)))
    if info.key_type != wanted_key_type.strip().lower():
        return renew("key_type_changed", None, "%s has a %s key but %s is wanted, so it will be renewed." % (subject, info.key_type, wanted_key_type))
    if force:
        return renew("forced", None, "%s will be renewed because renewal was forced." % subject)
    if now >= info.not_after:
        return renew("expired", None, "%s expired at %s, so it will be renewed now." % (subject, iso(info.not_after)))
    if now < info.not_before - CLOCK_SKEW_TOLERANCE:
        return Decision(False, "not_yet_valid", info.not_before, None,
                        "%s is not valid before %s but the clock here says %s: the host clock or the CA clock is off, so it is left alone." % (
                            subject, iso(info.not_before), iso(now)))

    ari_at = _utc(ari_renew_at) if ari_renew_at is not None else None
    ari_too_late = ari_at is not None and ari_at > info.not_after - (info.not_after - info.not_before) * ARI_LEAST_LEFT
    if days is None and ari_at is not None and not ari_too_late:
        renew_after, reason, rule = ari_at, "ari_window", "the CA's renewal window (ARI)"
    elif days is None:
        renew_after, reason, rule = lifetime_renew_after(info), "lifetime_threshold", (
            "half its lifetime" if info.not_after - info.not_before < SHORT_LIFETIME else "a third of its lifetime") + " left"
        if ari_too_late:
            rule += "; the CA's renewal window (ARI) would leave less than a tenth of the lifetime"
    else:
        renew_after, reason, rule = days_renew_after(info, days), "days_threshold", "renew_before of %d days" % days
        if renew_after <= info.not_before:
            rule += ", which is not shorter than its lifetime, so every run renews it"
    if now >= renew_after:
        return renew(reason, renew_after, "%s expires at %s and is due for renewal since %s (%s), so it will be renewed." % (
            subject, iso(info.not_after), iso(renew_after), rule))
    return Decision(False, "not_due", renew_after, None, "%s expires at %s and is not due for renewal before %s (%s)." % (
        subject, iso(info.not_after), iso(renew_after), rule))
