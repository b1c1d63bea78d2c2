# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""One certificate per fleet: the account key and the certificates of the node that orders, copied to the others.

A fleet is a group of edge nodes serving the same domains behind one name. One node (the issuer) orders;
:func:`export_bundle` reads its account key and every installed certificate with its state; the play
carries that bundle (never logged) to the other nodes, where :func:`install_bundle` installs what differs
through the same versioned symlink switch as a fresh issuance, and records the state with local paths.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_keys as keys
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import CertStore, atomic_write
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain

#: State fields that describe the node's own copy, never taken from the issuer.
LOCAL_FIELDS = ("privkey", "cert", "chain", "fullchain", "failures", "last_attempt")


def account_key(path: str, create: bool) -> t.Tuple[t.Optional[t.Any], bool]:
    """The ACME account key at ``path``, created (EC P-256, 0600) when missing and ``create``; (key, created)."""
    target = Path(path)
    if target.exists():
        return keys.load_key_pem(target.read_bytes(), item=str(target)), False
    if not create:
        return None, False
    key = keys.generate_key("ec256")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(target, keys.key_to_pem(key), mode=0o600)
    return key, True


def thumbprint_of(key: t.Any) -> str:
    """The RFC 7638 thumbprint of the account key: what follows the token in every HTTP-01 answer."""
    jwk, _alg = keys.jwk_and_alg(key)
    return keys.thumbprint(jwk)


def export_bundle(cert_root: str, state_root: str, account_path: str, domains: t.Optional[t.Sequence[str]] = None) -> t.Dict[str, t.Any]:
    """The account key, and every domain on record (or those of ``domains``): its state, and its files when installed."""
    store, states = CertStore(cert_root), StateStore(state_root)
    if domains is not None:
        wanted = [normalize_domain(d, what="domains[%d]" % i) for i, d in enumerate(domains, start=1)]
    else:
        wanted = sorted(set(store.domains()) | set(states.domains()))
    certificates = []
    for domain in wanted:
        state = {key: val for key, val in states.load(domain).items() if key not in LOCAL_FIELDS}
        files = store.read(domain)
        if files is None and not state:
            continue
        entry: t.Dict[str, t.Any] = {"domain": domain, "state": state}
        if files is not None:
            entry.update({name: files[name].decode("ascii") for name in ("privkey", "cert", "chain")})
        certificates.append(entry)
    account = Path(account_path)
    return {"account_key": account.read_text() if account.exists() else None, "certificates": certificates}


def _entry(raw: t.Any, index: int) -> t.Dict[str, t.Any]:
    if not isinstance(raw, dict):
        raise InputError("bundle.certificates[%d] must be a mapping" % index)
    domain = normalize_domain(raw.get("domain"), what="bundle.certificates[%d].domain" % index)
    present = [field for field in ("privkey", "cert", "chain") if raw.get(field) is not None]
    for field in ("privkey", "cert", "chain"):
        if present and not isinstance(raw.get(field), str):
            raise InputError("bundle.certificates[%d].%s must be PEM text" % (index, field), item=domain)
    if not present and not isinstance(raw.get("state"), dict):
        raise InputError("bundle.certificates[%d] has neither certificate files nor a state" % index, item=domain)
    return dict(raw, domain=domain)


def install_bundle(bundle: t.Mapping[str, t.Any], cert_root: str, state_root: str, account_path: str,
                   check_mode: bool) -> t.Dict[str, t.Any]:
    """Install what differs from ``bundle``; returns the domains installed, the state files rewritten, and
    whether the account key changed. State files are the issuer's records with this node's paths; rewriting
    them is bookkeeping, as in acme_http01_cert, and the caller need not count it as a change."""
    entries = [_entry(raw, i) for i, raw in enumerate(bundle.get("certificates") or [], start=1)]
    store, states = CertStore(cert_root), StateStore(state_root)
    installed: t.List[str] = []
    states_updated: t.List[str] = []
    for entry in entries:
        domain = entry["domain"]
        local = states.load(domain)
        state = dict(entry.get("state") or {}, domain=domain)
        if entry.get("cert") is not None:
            current = store.read(domain)
            wanted = {name: entry[name].encode("ascii") for name in ("privkey", "cert", "chain")}
            if current is None or any(current[name] != wanted[name] for name in wanted):
                installed.append(domain)
                if not check_mode:
                    store.install(domain, wanted["privkey"], wanted["cert"], wanted["chain"])
            state.update(store.paths(domain))
        else:
            state.update({key: local[key] for key in ("privkey", "cert", "chain", "fullchain") if key in local})
        state.update({key: local[key] for key in ("failures", "last_attempt") if key in local})
        if state != local:
            states_updated.append(domain)
            if not check_mode:
                with states.lock(domain, timeout=30.0):
                    states.save(domain, state)
    account_changed = False
    pem = bundle.get("account_key")
    if pem:
        target = Path(account_path)
        account_changed = not target.exists() or target.read_text() != pem
        if account_changed and not check_mode:
            keys.load_key_pem(pem.encode("ascii"), item="bundle.account_key")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(target, pem.encode("ascii"), mode=0o600)
    return {"installed": installed, "states_updated": states_updated, "account_key_changed": account_changed}
