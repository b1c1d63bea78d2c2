# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""HTTP-01 challenges: token files in the webroot, and a self-check done the way the CA does it.

The self-check fetches ``http://DOMAIN/.well-known/acme-challenge/TOKEN`` from the
addresses the domain resolves to, follows a bounded number of redirects (http or
https, as Let's Encrypt does, ignoring certificate errors on https targets, which
the CA ignores too), and compares the body with the key authorization.  A domain
that would fail validation is stopped here, before it costs the CA's
failed-validation budget.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import typing as t
import urllib.parse
from pathlib import Path

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import OK, View

CHALLENGE_DIR = (".well-known", "acme-challenge")
MAX_REDIRECTS = 10
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


class ChallengeFailed(LinkcertError):
    """The domain would fail HTTP-01 validation; nothing was sent to the CA."""


def token_path(webroot: t.Union[str, Path], token: str) -> Path:
    """WEBROOT/.well-known/acme-challenge/TOKEN, refusing any token that is not base64url."""
    if not _TOKEN.match(token):
        raise LinkcertError("the CA sent a challenge token that is not base64url: %r" % token[:80], reason="ca_protocol_error")
    return Path(webroot).joinpath(*CHALLENGE_DIR) / token


def publish(webroot: t.Union[str, Path], token: str, key_authorization: str) -> Path:
    """Write the key authorization where nginx serves it (world-readable, never executable)."""
    path = token_path(webroot, token)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(path, key_authorization.encode("ascii"), mode=0o644)
    return path


def withdraw(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Older than any live token: each certificate's deadline, which bounds its token's life, is at most an hour (``timeout``).
STALE_AFTER = 2 * 3600.0


def sweep(webroot: t.Union[str, Path], now: float, older_than: float = STALE_AFTER) -> t.List[str]:
    """Remove token files left by runs that were killed before they could withdraw them; return their names.

    Only regular files with a token's name and an mtime over ``older_than`` seconds before ``now`` are removed:
    nothing else in the webroot is touched, and no link is followed.
    """
    folder = Path(webroot).joinpath(*CHALLENGE_DIR)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            stale = _TOKEN.match(entry.name) and entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return sorted(removed)


class SelfCheck(t.NamedTuple):
    resolver: t.Optional[View]
    port: int
    timeout: float


def _addresses(check: SelfCheck, host: str) -> t.List[str]:
    if check.resolver is None:
        try:
            return sorted({info[4][0] for info in socket.getaddrinfo(host, check.port, proto=socket.IPPROTO_TCP)})
        except socket.gaierror as exc:
            raise ChallengeFailed("%s does not resolve (%s)" % (host, exc), item=host, reason="self_check_dns") from None
    found: t.List[str] = []
    for rdtype in ("AAAA", "A"):
        lookup = check.resolver.lookup(host, rdtype)
        if lookup.status == OK:
            found.extend(lookup.addresses())
    if not found:
        raise ChallengeFailed("%s has no address, so the CA cannot reach it" % host, item=host, reason="self_check_dns")
    return found


def _fetch(address: str, port: int, scheme: str, host: str, path: str, timeout: float) -> t.Tuple[int, t.Dict[str, str], bytes]:
    if scheme == "https":
        context = ssl.create_default_context()
        # The CA ignores certificate errors on an https redirect target; so must we, to predict it.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(address, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if port in (80, 443) else "%s:%d" % (host, port))
        conn.putheader("User-Agent", "linkcert-self-check")
        conn.putheader("Accept", "*/*")
        conn.endheaders()
        response = conn.getresponse()
        body = response.read(4096)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def self_check(check: SelfCheck, domain: str, token: str, key_authorization: str) -> None:
    """Raise ChallengeFailed unless every address of ``domain`` serves the key authorization."""
    for address in _addresses(check, domain):
        _check_one(check, domain, address, token, key_authorization)


def _check_one(check: SelfCheck, domain: str, address: str, token: str, key_authorization: str) -> None:
    url = "http://%s/.well-known/acme-challenge/%s" % (domain, token)
    scheme, host, port, path, target = "http", domain, check.port, "/.well-known/acme-challenge/" + token, address
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            status, headers, body = _fetch(target, port, scheme, host, path, check.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ChallengeFailed("%s (at %s) could not be fetched: %s. The CA would fail to validate: check that port %d reaches the edge's nginx."
                                  % (url, address, exc, port), item=domain, reason="self_check_unreachable") from None
        if status in (301, 302, 303, 307, 308) and headers.get("location"):
            scheme, host, port, path = _follow(headers["location"], scheme, host, port, path, domain, check)
            target = _addresses(check, host)[0] if host != domain else address
            continue
        if status != 200:
            raise ChallengeFailed("%s (at %s) answered HTTP %d instead of the challenge token. The CA would fail to validate: "
                                  "the name may route to another web server, or nginx does not serve the challenge webroot."
                                  % (url, address, status), item=domain, reason="self_check_http_%d" % status)
        if body.strip() != key_authorization.encode("ascii"):
            raise ChallengeFailed("%s (at %s) served something other than the key authorization: the name routes to a server "
                                  "that does not share this webroot." % (url, address), item=domain, reason="self_check_mismatch")
        return
    raise ChallengeFailed("%s redirects more than %d times; the CA gives up there too." % (url, MAX_REDIRECTS), item=domain,
                          reason="self_check_redirects")


def _follow(location: str, scheme: str, host: str, port: int, path: str, domain: str,
            check: SelfCheck) -> t.Tuple[str, str, int, str]:
    target = urllib.parse.urljoin("%s://%s:%d%s" % (scheme, host, port, path), location)
    parts = urllib.parse.urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChallengeFailed("the challenge URL of %s redirects to %s, which the CA does not follow" % (domain, location),
                              item=domain, reason="self_check_redirects")
    new_port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.port is None and parts.scheme == "http":
        new_port = check.port
    return parts.scheme, parts.hostname.lower(), new_port, (parts.path or "/") + ("?" + parts.query if parts.query else "")
