# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Run the read-only DNS checks for many domains at once.

A bounded thread pool resolves domains concurrently; the resolver's cache is
shared, so parents common to many domains are asked once.  One domain's DNS
failure is that domain's result, never the module's failure.
"""

from __future__ import annotations

import re
import threading
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils import _caa, _names, _resolver, _status, _verify
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._pool import map_bounded
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import (
    LookupFailed,
    RecursiveView,
    authoritative_views,
    make_resolver,
)

try:
    from publicsuffixlist import PublicSuffixList
    HAS_PSL = True
    PSL_IMPORT_ERROR: t.Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_PSL = False
    PSL_IMPORT_ERROR = exc

_PSL_LOCK = threading.Lock()
_PSL: t.List[t.Any] = []


def organizational_domain(name: str) -> str:
    """The organizational domain of ``name`` from the Public Suffix List shipped with publicsuffixlist."""
    with _PSL_LOCK:
        if not _PSL:
            _PSL.append(PublicSuffixList())
    return _PSL[0].privatesuffix(name) or name


_METHOD = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def caa_policy(ca_identities: t.Sequence[str], validation_method: str, account_uri: t.Optional[str]) -> _caa.Policy:
    """The CA's side of a CAA check, validated: InputError names a bad issuer domain or method."""
    identities = [_names.normalize_domain(i, what="ca_identities item") for i in ca_identities]
    if not identities:
        raise InputError("ca_identities must name at least one issuer domain", item="ca_identities")
    if not _METHOD.match(validation_method or ""):
        raise InputError("validation_method %r is not an ACME challenge type such as http-01" % validation_method, item=validation_method)
    return _caa.Policy(identities, validation_method, account_uri)


def run_caa(domains: t.Sequence[str], policy: _caa.Policy, resolver: RecursiveView, workers: int) -> t.List[t.Dict[str, t.Any]]:
    return map_bounded(lambda domain: _caa.check_domain(domain, resolver.lookup, policy), domains, workers)


def recheck(certificates: t.Sequence[t.Mapping[str, t.Any]], edge_cname: str, policy: _caa.Policy, resolver: RecursiveView,
            workers: int) -> t.List[t.Dict[str, t.Any]]:
    """Routing and CAA of issued certificates, asked again (the renewal runner's drift check).

    ``certificates`` are ``{domain, alt_names, cname}`` (``cname`` defaults to ``edge_cname``). Returns them
    as ``_status.acme_input`` does: a domain that no longer routes to the edge, whose CAA now forbids the
    CA, or whose lookups fail carries a ``hold``, so nothing is ordered for it and its certificate is kept.
    Only the tracking name's A/AAAA (and CNAME chain) and the CAA climb are asked: two or three queries
    per domain, with the parents and the edge's own name answered once from the shared cache.
    """
    def one(entry: t.Mapping[str, t.Any]) -> t.Tuple[t.Dict[str, t.Any], t.Optional[t.Dict[str, t.Any]]]:
        name = entry["domain"]
        target = _names.normalize_domain(entry.get("cname") or edge_cname, what="%s cname" % name)
        record = _verify.check_tracking(resolver, name, target)
        ready = record["status"] == _verify.VERIFIED
        verify = {"name": name, "kind": "tracking", "verified": ready, "ssl_ready": ready, "records": [record], "message": record["message"]}
        return verify, (_caa.check_domain(name, resolver.lookup, policy) if ready else None)

    found = map_bounded(one, certificates, workers)
    return _status.acme_input(list(certificates), [verify for verify, _caa_result in found],
                              [caa for _verify_result, caa in found if caa is not None])


class AuthOptions(t.NamedTuple):
    enabled: bool
    servers: t.Optional[t.List[t.Tuple[str, int]]]
    port: int
    timeout: float


def verify_one(spec: _verify.DomainSpec, resolver: RecursiveView, auth: AuthOptions) -> t.Dict[str, t.Any]:
    checks = _verify.checks_for(spec, organizational_domain)
    if not auth.enabled:
        return _verify.summarize(spec, [check(resolver) for check in checks])
    try:
        views = authoritative_views(resolver, spec.name, port=auth.port, timeout=auth.timeout, servers=auth.servers)
    except LookupFailed as exc:
        failed = [_verify.ERROR] * len(checks)
        records = [dict(check(resolver), status=status, remediation=None,
                        message="%s; the authoritative servers could not be asked." % exc) for check, status in zip(checks, failed)]
        return _verify.summarize(spec, records, servers=[])
    records = [_verify.merge_views([(view.label, check(view)) for view in views]) for check in checks]
    return _verify.summarize(spec, records, servers=[view.label for view in views])


def run_verify(specs: t.Sequence[_verify.DomainSpec], resolver: RecursiveView, auth: AuthOptions, workers: int) -> t.List[t.Dict[str, t.Any]]:
    return map_bounded(lambda spec: verify_one(spec, resolver, auth), specs, workers)


# ------------------------------------------------------ module plumbing

def dns_argument_spec() -> t.Dict[str, t.Any]:
    """Options shared by the DNS modules (documented in the ``dns`` doc fragment)."""
    return {
        "resolvers": {"type": "list", "elements": "str"},
        "timeout": {"type": "float", "default": 5.0},
        "retries": {"type": "int", "default": 2},
        "workers": {"type": "int", "default": 16},
    }


def missing_libraries() -> t.List[t.Tuple[str, t.Optional[BaseException]]]:
    """(pip name, import error) of each library the DNS modules need but cannot import."""
    wanted = [("dnspython", _resolver.HAS_DNSPYTHON, _resolver.DNSPYTHON_IMPORT_ERROR),
              ("idna", _names.HAS_IDNA, _names.IDNA_IMPORT_ERROR),
              ("publicsuffixlist", HAS_PSL, PSL_IMPORT_ERROR)]
    return [(name, error) for name, present, error in wanted if not present]


def resolver_from_params(params: t.Mapping[str, t.Any]) -> RecursiveView:
    """Validate the shared options and build the resolver (no query is sent)."""
    if not params["timeout"] > 0:
        raise InputError("timeout must be a positive number of seconds, got %r" % params["timeout"], item="timeout")
    if params["retries"] < 0 or params["retries"] > 10:
        raise InputError("retries must be between 0 and 10, got %r" % params["retries"], item="retries")
    if params["workers"] < 1 or params["workers"] > 256:
        raise InputError("workers must be between 1 and 256, got %r" % params["workers"], item="workers")
    return make_resolver(params["resolvers"], params["timeout"], params["retries"])
