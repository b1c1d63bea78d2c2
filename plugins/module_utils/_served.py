# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Which certificate an edge really serves for a name: a TLS handshake with SNI, compared with the one on disk.

The handshake does not verify the chain (the point is to see what is served, whatever it is), so an
expired, self-signed or foreign certificate is still read and reported. Only the leaf is parsed.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_renewal as renewal
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._pool import map_bounded

OK = "served_ok"
MISMATCH = "served_mismatch"
WRONG_NAME = "served_wrong_certificate"
EXPIRED = "served_expired"
NOT_SERVED = "not_served"


class Target(t.NamedTuple):
    domain: str
    serial: t.Optional[str]  # lower-case hex, as in the state files; None when nothing is on disk


def targets(certificates: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[Target]:
    """Validate ``[{domain, serial}]``; InputError names the first bad item."""
    found = []
    for index, entry in enumerate(certificates, start=1):
        domain = normalize_domain(entry.get("domain"), what="certificates[%d].domain" % index)
        serial = entry.get("serial")
        if serial is not None:
            serial = str(serial).strip().lower().replace(":", "")
            if serial.startswith("0x"):
                serial = serial[2:]
            if not serial or any(c not in "0123456789abcdef" for c in serial):
                raise InputError("certificates[%d].serial %r is not a hexadecimal serial number" % (index, entry.get("serial")), item=domain)
            serial = serial.lstrip("0") or "0"
        found.append(Target(domain, serial))
    return found


def fetch(address: str, port: int, name: str, timeout: float) -> bytes:
    """The DER leaf the server at ADDRESS:PORT presents for SNI NAME (no chain verification)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise LinkcertError("no TLS session with %s:%d for %s: %s" % (address, port, name, exc), item=name, reason=NOT_SERVED) from None
    if not der:
        raise LinkcertError("%s:%d presented no certificate for %s" % (address, port, name), item=name, reason=NOT_SERVED)
    return der


def _covers(names: t.Sequence[str], domain: str) -> bool:
    """Whether a certificate for NAMES is valid for DOMAIN (RFC 6125: a wildcard stands for one whole left-most label)."""
    for name in (n.lower().rstrip(".") for n in names):
        if name == domain or (name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]):
            return True
    return False


def compare(target: Target, der: t.Optional[bytes], failure: t.Optional[str], node: str, now: datetime.datetime) -> t.Dict[str, t.Any]:
    """One result: what is served for the name, against what is on disk, with the reason and the fix."""
    result: t.Dict[str, t.Any] = {"domain": target.domain, "node": node, "expected_serial": target.serial, "served_serial": None,
                                  "served_names": [], "served_not_after": None, "matches": False}
    if der is None:
        result.update(reason=NOT_SERVED, message="%s serves no certificate for %s: %s." % (node, target.domain, failure),
                      remediation="Check that nginx runs on %s and listens for HTTPS." % node)
        return result
    try:
        info = renewal.cert_info(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))
    except LinkcertError as exc:
        result.update(reason=NOT_SERVED, message="%s serves something unreadable for %s: %s." % (node, target.domain, exc.msg),
                      remediation="Check the ssl_certificate of %s's server on %s." % (target.domain, node))
        return result
    covers = _covers(info.names, target.domain)
    result.update(served_serial=info.serial_hex, served_names=list(info.names), served_not_after=renewal.iso(info.not_after))
    if not covers:
        result.update(reason=WRONG_NAME, message="%s serves a certificate for %s when asked for %s (another server block answers: "
                      "the domain's server is missing or nginx was not reloaded after it was added)." % (
                          node, ", ".join(info.names) or "no name", target.domain),
                      remediation="Re-run onboarding for %s, or reload nginx on %s after nginx -t passes." % (target.domain, node))
    elif now >= info.not_after:
        result.update(reason=EXPIRED, message="%s serves an expired certificate for %s (serial %s, expired %s)." % (
            node, target.domain, info.serial_hex, renewal.iso(info.not_after)),
            remediation="Reload nginx on %s after nginx -t passes." % node)
    elif target.serial is not None and info.serial_hex != target.serial:
        result.update(reason=MISMATCH, message="%s serves serial %s for %s, but the certificate on disk is serial %s: nginx has not "
                      "been reloaded since it was installed." % (node, info.serial_hex, target.domain, target.serial),
                      remediation="Reload nginx on %s (nginx -t && systemctl reload nginx)." % node)
    else:
        result.update(matches=target.serial is not None, reason=OK, remediation=None,
                      message="%s serves the certificate on disk for %s (serial %s)." % (node, target.domain, info.serial_hex)
                      if target.serial is not None else "%s serves serial %s for %s; none is on disk to compare with." % (
                          node, info.serial_hex, target.domain))
    return result


def check(address: str, port: int, node: str, wanted: t.Sequence[Target], timeout: float, workers: int,
          now: t.Optional[datetime.datetime] = None) -> t.List[t.Dict[str, t.Any]]:
    """Every target's result, in the order given; a handshake failure is that name's result, never an exception."""
    moment = now or datetime.datetime.now(datetime.timezone.utc)

    def one(target: Target) -> t.Dict[str, t.Any]:
        try:
            der = fetch(address, port, target.domain, timeout)
        except LinkcertError as exc:
            return compare(target, None, exc.msg, node, moment)
        return compare(target, der, None, node, moment)

    return map_bounded(one, list(wanted), workers)
