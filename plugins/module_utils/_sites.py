# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The edge's traffic contract: what nginx answers for each customer name, rendered from the records on the edge.

A tracked link must work in every state of its domain, so the two ports follow the certificate:

=====================================================  ==========================  ============================
the name                                                port 80                     port 443
=====================================================  ==========================  ============================
valid certificate installed, SSL Issued, not held       redirect to HTTPS (or       its own certificate, proxied
                                                        proxied, http_redirect off)  to the tracking upstream
valid certificate installed, but held or not issued     proxied plain HTTP          its own certificate, proxied
anything else: pending, unknown, expired, removed,      proxied plain HTTP          refused with a TLS alert
never heard of                                                                      (``ssl_reject_handshake``)
=====================================================  ==========================  ============================

ACME challenges are answered on port 80 for every name (the challenge_webroot role's default server, which
also proxies plain HTTP and redirects the names listed in the names map written here).

:func:`render` turns the records (the state files, as :class:`StateStore` reads them) into two files: the TLS
servers (``conf``) and the map of names that redirect (``names_map``). :func:`apply` writes them as one batch
checked by ``nginx -t`` (everything put back if it fails), under the edge lock, so the role (``edge_sites``)
and the renewal runner never write them at once. The options the role applied are kept in
``STATE_ROOT/sites.json``: the runner renders with exactly those, so a renewal, a new issuance or an expiry
changes the files the same way a playbook run would.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore, parse_iso
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._files import Batch, Change, Entry, plan
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain

#: The options the role last applied, for the renewal runner (a dot file: never taken for a domain's state).
OPTIONS_FILE = ".sites.json"
DEFAULT_CONF = "/etc/nginx/conf.d/linkcert-sites.conf"
#: Included by the challenge_webroot role's ``map`` (``/etc/nginx/linkcert/*.map``).
DEFAULT_NAMES_MAP = "/etc/nginx/linkcert/https-names.map"
#: A certificate whose notBefore is up to this far in the host's future is served (the CA's clock may run ahead).
CLOCK_SKEW_TOLERANCE = datetime.timedelta(minutes=5)
#: Reasons that mean a certificate is held (DNS or CAA changed after issuance, or a lookup failed): served, no redirect.
HELD_REASONS = frozenset(("dns_drift", "caa_drift", "caa_dns_error", "dns_error"))
#: nginx 1.25.1 replaced ``listen ... http2`` with the ``http2`` directive.
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)

# Paths and upstreams go into nginx's configuration verbatim: only characters that need no quoting there.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+,-]*$")
_UPSTREAM = re.compile(r"^https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?(?:/[A-Za-z0-9._~/%-]*)?$")
_NGINX_VERSION = re.compile(r"nginx/(\d+)\.(\d+)\.(\d+)")

_CIPHERS = ":".join(("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                     "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))
# Mozilla's "intermediate" configuration (guidelines 5.7, https://ssl-config.mozilla.org/), as sslyze checks it in the
# molecule default scenario: TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20 (the DHE suites left out: no dhparam file
# to keep), the client's cipher order, and only the curves it lists (nginx's "auto" also offers X448 and P-521).
# No OCSP stapling: Let's Encrypt ended OCSP in 2025. The default server carries the same lines: OpenSSL settles
# parts of the handshake (the curves offered) from the context a connection starts in, the default server's, before
# SNI selects a customer's server.
_TLS = """\
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers %s;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:linkcert:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;
""" % _CIPHERS


class SiteOptions(t.NamedTuple):
    """How the edge serves its names (validated by :func:`options_from`)."""

    conf: str = DEFAULT_CONF
    names_map: str = DEFAULT_NAMES_MAP
    https_port: int = 443
    listen_ipv6: bool = True
    #: Where requests for a customer's name go (http://127.0.0.1:8080); empty: a built-in answer naming the host.
    tracking_upstream: str = ""
    #: Redirect plain HTTP to HTTPS for names with a valid certificate; off keeps plain HTTP proxied for every name.
    http_redirect: bool = True
    #: nginx's ``http2 on;`` directive (nginx >= 1.25.1) instead of the ``http2`` listen parameter.
    http2_directive: bool = False

    def to_json(self) -> t.Dict[str, t.Any]:
        return dict(self._asdict())


def _path_option(raw: t.Mapping[str, t.Any], key: str, default: str) -> str:
    value = raw.get(key) or default
    if not isinstance(value, str) or not _SAFE_PATH.match(value) or os.path.normpath(value) != value or value.endswith("/"):
        raise InputError("%s must be an absolute path of letters, digits and ._/@+,- only (it goes into nginx's configuration), got %r"
                         % (key, value), item=key)
    return value


def options_from(raw: t.Mapping[str, t.Any]) -> SiteOptions:
    """Validated options; InputError names the bad one (before anything is written)."""
    conf = _path_option(raw, "conf", DEFAULT_CONF)
    names_map = _path_option(raw, "names_map", DEFAULT_NAMES_MAP)
    if conf == names_map:
        raise InputError("conf and names_map must be two files, both are %s" % conf, item="names_map")
    try:
        port = int(raw.get("https_port", 443))
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise InputError("https_port must be a port number (1-65535), got %r" % (raw.get("https_port"),), item="https_port")
    upstream = str(raw.get("tracking_upstream") or "").strip()
    if upstream and not _UPSTREAM.match(upstream):
        raise InputError("tracking_upstream must be an http:// or https:// URL with a host, an optional port and path, such as "
                         "http://127.0.0.1:8080, got %r" % upstream, item="tracking_upstream")
    return SiteOptions(conf=conf, names_map=names_map, https_port=port, listen_ipv6=bool(raw.get("listen_ipv6", True)),
                       tracking_upstream=upstream, http_redirect=bool(raw.get("http_redirect", True)),
                       http2_directive=bool(raw.get("http2_directive", False)))


def http2_directive_for(version_output: str) -> bool:
    """Whether this nginx (``nginx -v``'s output) takes ``http2 on;`` rather than ``listen ... http2``."""
    found = _NGINX_VERSION.search(version_output or "")
    return bool(found) and tuple(int(part) for part in found.groups()) >= HTTP2_DIRECTIVE_SINCE


# ------------------------------------------------------------------ which names get what

class Site(t.NamedTuple):
    domain: str
    names: t.List[str]
    fullchain: str
    privkey: str
    redirect: bool


def _when(text: t.Any) -> t.Optional[datetime.datetime]:
    try:
        return parse_iso(str(text)) if text else None
    except ValueError:
        return None


def site_for(record: t.Mapping[str, t.Any], now: datetime.datetime, exists: t.Callable[[str], bool] = os.path.exists) -> t.Optional[Site]:
    """The TLS server a record gets, or None: only a certificate that is installed and valid now is served.

    It redirects plain HTTP too when the domain is SSL Issued and not held (its DNS or CAA changed, or a lookup
    failed): a held certificate stays served for the links that already use HTTPS, but no new click is sent there.
    """
    fullchain, privkey = record.get("fullchain"), record.get("privkey")
    not_before, not_after = _when(record.get("not_before")), _when(record.get("not_after"))
    if not (record.get("serial") and fullchain and privkey and not_before and not_after):
        return None
    if not not_before - CLOCK_SKEW_TOLERANCE <= now < not_after:
        return None
    for path in (fullchain, privkey):
        if not isinstance(path, str) or not _SAFE_PATH.match(path):
            raise LinkcertError("the record of %s names the file %r, which cannot go into nginx's configuration"
                                % (record.get("domain"), path), item=str(record.get("domain")), reason="invalid_record")
    if not (exists(fullchain) and exists(privkey)):
        return None  # removed from the edge
    domain = normalize_domain(record.get("domain"), what="record domain")
    names = [domain]
    for name in record.get("names") or []:
        name = normalize_domain(name, what="%s record names item" % domain)
        if name not in names:
            names.append(name)
    held = bool(record.get("held")) or record.get("reason") in HELD_REASONS
    return Site(domain, names, fullchain, privkey, record.get("ssl_status") == "issued" and not held)


def sites(records: t.Iterable[t.Mapping[str, t.Any]], now: datetime.datetime,
          exists: t.Callable[[str], bool] = os.path.exists) -> t.List[Site]:
    """The served sites of these records, by domain; a name claimed twice goes to the first domain (by name) only."""
    found: t.List[Site] = []
    claimed: t.Set[str] = set()
    for record in sorted(records, key=lambda r: str(r.get("domain"))):
        site = site_for(record, now, exists)
        if site is None:
            continue
        names = [name for name in site.names if name not in claimed]
        if not names:
            continue
        claimed.update(names)
        found.append(site._replace(names=names))
    return found


# ------------------------------------------------------------------ nginx's files

class Rendered(t.NamedTuple):
    conf: bytes
    names_map: bytes
    served: t.List[str]
    redirected: t.List[str]


def _listen(options: SiteOptions, default: bool) -> str:
    tail = (" default_server" if default else "")
    http2 = "" if options.http2_directive else " http2"
    lines = ["    listen %d ssl%s%s;" % (options.https_port, http2, tail)]
    if options.listen_ipv6:
        lines.append("    listen [::]:%d ssl%s%s;" % (options.https_port, http2, tail))
    if options.http2_directive:
        lines.append("    http2 on;")
    return "\n".join(lines) + "\n"


def _location(options: SiteOptions) -> str:
    if options.tracking_upstream:
        return ("    location / {\n"
                "        proxy_pass %s;\n"
                "        proxy_set_header Host $host;\n"
                "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                "        proxy_set_header X-Forwarded-Proto https;\n"
                "    }\n" % options.tracking_upstream)
    return ("    location / {\n"
            "        default_type text/plain;\n"
            "        return 200 \"linkcert edge: $host\\n\";\n"
            "    }\n")


def render(records: t.Iterable[t.Mapping[str, t.Any]], options: SiteOptions, now: datetime.datetime,
           exists: t.Callable[[str], bool] = os.path.exists) -> Rendered:
    """Both files for these records at ``now``."""
    served = sites(records, now, exists)
    conf = ["# Managed by linkcert (the edge_sites module and the renewal runner), from the records in its state root.\n"
            "# Port 443 of the traffic contract: a name with a valid certificate installed gets its own; every other\n"
            "# name (pending, unknown, expired, removed, never heard of) is refused with a TLS alert, so no\n"
            "# certificate of another customer is ever shown.\n"
            "server {\n" + _listen(options, default=True) + "    ssl_reject_handshake on;\n" + _TLS + "}\n"]
    for site in served:
        conf.append("\n# %s: %s\n" % (site.domain, "SSL Issued, plain HTTP redirected here" if site.redirect and options.http_redirect
                                      else "served, plain HTTP proxied (held or not issued)" if not site.redirect else "SSL Issued"))
        conf.append("server {\n" + _listen(options, default=False)
                    + "    server_name %s;\n\n" % " ".join(site.names)
                    + "    ssl_certificate %s;\n    ssl_certificate_key %s;\n" % (site.fullchain, site.privkey)
                    + _TLS + "\n" + _location(options) + "}\n")
    redirected = [site for site in served if site.redirect and options.http_redirect]
    lines = ["# Managed by linkcert: the names whose plain-HTTP requests are redirected to HTTPS (each has a valid\n"
             "# certificate installed and is SSL Issued). Every other name's plain HTTP is proxied to the tracking upstream.\n"]
    if not options.http_redirect:
        lines.append("# linkcert_http_redirect is off: plain HTTP is proxied for every name.\n")
    lines.extend("%s 1;\n" % name for site in redirected for name in site.names)
    return Rendered("".join(conf).encode("utf-8"), "".join(lines).encode("utf-8"), [site.domain for site in served],
                    [site.domain for site in redirected])


# ------------------------------------------------------------------ writing them

def load_options(state_root: str) -> t.Optional[SiteOptions]:
    """The options the role last applied (STATE_ROOT/.sites.json), or None when it never did."""
    try:
        with open(os.path.join(state_root, OPTIONS_FILE), encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LinkcertError("cannot read %s: %s" % (os.path.join(state_root, OPTIONS_FILE), exc), item=state_root,
                            reason="read_failed") from exc
    return options_from(raw if isinstance(raw, dict) else {})


class Applied(t.NamedTuple):
    changed: bool
    changes: t.List[Change]
    served: t.List[str]
    redirected: t.List[str]


RunCommand = t.Callable[[t.List[str]], t.Tuple[int, str, str]]


def apply(state_root: str, options: SiteOptions, validate: t.Optional[t.Sequence[str]], run: t.Optional[RunCommand],
          check_mode: bool = False, now: t.Optional[datetime.datetime] = None, save_options: bool = False) -> Applied:
    """Render from every record in ``state_root`` and bring nginx's two files (and, with ``save_options``, the options
    file) to that, in one batch: only what differs is written, ``validate`` (``nginx -t``) checks it, and if that or
    a write fails every file is put back (LinkcertError, reason ``validate_failed`` / ``write_failed``).

    Holds the edge lock, so the role and the runner never write at once. Nothing is written in check mode."""
    store = StateStore(state_root)
    moment = now or datetime.datetime.now(datetime.timezone.utc)

    # As root (on an edge) the files are root's; an unprivileged caller (a test) keeps whatever owner they have.
    owner = 0 if os.geteuid() == 0 else -1

    def build() -> t.Tuple[Rendered, t.List[Change]]:
        rendered = render((store.load(domain) for domain in store.domains()), options, moment)
        entries = [Entry(os.path.dirname(options.names_map), state="directory", mode=0o755, uid=owner, gid=owner),
                   Entry(options.conf, content=rendered.conf, mode=0o644, uid=owner, gid=owner),
                   Entry(options.names_map, content=rendered.names_map, mode=0o644, uid=owner, gid=owner)]
        if save_options:
            saved = (json.dumps(options.to_json(), sort_keys=True) + "\n").encode("utf-8")
            entries.append(Entry(os.path.join(state_root, OPTIONS_FILE), content=saved, mode=0o600, uid=owner, gid=owner))
        return rendered, plan(entries)

    if check_mode:
        rendered, changes = build()
        return Applied(any(change.what for change in changes), changes, rendered.served, rendered.redirected)
    with store.lock_edge(timeout=120.0):
        rendered, changes = build()
        batch = Batch(changes)
        if batch.changes:
            batch.apply()
            if validate:
                if run is None:
                    raise InputError("validate needs a way to run commands", item="validate")
                batch.validate(list(validate), run)
    return Applied(bool(batch.changes), changes, rendered.served, rendered.redirected)
