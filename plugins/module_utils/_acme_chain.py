# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Alternate certificate chains (RFC 8555 7.4.2: ``Link: rel="alternate"`` on the certificate URL) and the
choice among them by ``preferred_chain``, with certbot's ``--preferred-chain`` meaning: the chain whose topmost
certificate was issued by a CA of that common name; the CA's default chain when none is."""

from __future__ import annotations

import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

try:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - reported by the module
    pass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


def check_preferred(value: t.Any) -> t.Optional[str]:
    """The option as given (an issuer common name), None when empty; a name no certificate could carry is refused."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InputError("preferred_chain must be an issuer's common name (1 to 64 printable characters, for example "
                         "'ISRG Root X1'), got %r" % (value,), item="preferred_chain")
    return value.strip()


def alternate_urls(link_headers: t.Sequence[str]) -> t.List[str]:
    """The ``rel="alternate"`` targets of Link header values (each value may hold several links)."""
    found: t.List[str] = []
    for header in link_headers:
        for part in re.finditer(r'<([^>]*)>((?:\s*;\s*[^;,]+)*)', header or ""):
            params = part.group(2)
            if re.search(r';\s*rel\s*=\s*"?([^";]*\s)?alternate(\s[^";]*)?"?\s*(;|$)', params + ";") and part.group(1) not in found:
                found.append(part.group(1))
    return found


def topmost_issuer(fullchain_pem: bytes) -> t.Optional[str]:
    """The issuer common name of the last certificate of a chain (its topmost), None when it has none."""
    blocks = _PEM.findall(fullchain_pem)
    if not blocks:
        return None
    try:
        top = x509.load_pem_x509_certificate(blocks[-1])
    except ValueError:
        return None
    names = top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def choose(chains: t.Sequence[bytes], preferred: t.Optional[str]) -> t.Tuple[bytes, bool]:
    """(the chain to install, whether it is the preferred one): the first chain, default first, whose topmost
    certificate's issuer is ``preferred``; else the CA's default (``chains[0]``)."""
    if preferred:
        for chain in chains:
            if topmost_issuer(chain) == preferred:
                return chain, True
    return chains[0], not preferred
