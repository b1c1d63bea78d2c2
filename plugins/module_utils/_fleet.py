# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""A fleet's timer path: what the node that orders issued or renewed reaches every other node without a playbook run.

The issuer's renewal runner (its timers) pushes a bundle (``_acme_sync.export_bundle``: the certificates it
changed, their keys and records) to every other node over SSH, with its own key
(``STATE_ROOT/../fleet/id_ed25519`` by default) and a known_hosts file of the nodes' host keys, both installed by
the renewal role. Each node's ``authorized_keys`` entry for that key is restricted to one forced command, the
runner's ``--receive``, which installs what differs (the same versioned switch as an issuance), serves it by
the traffic contract and reloads nginx. A node that cannot be reached is remembered in
``STATE_ROOT/.fleet-pending.json`` with its domains, and every later run tries it again, so a renewed
certificate always reaches every node.
"""

from __future__ import annotations

import json
import os
import re
import typing as t

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain

PENDING_FILE = ".fleet-pending.json"
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^(?:[A-Za-z0-9.-]+|\[?[0-9A-Fa-f:.]+\]?)$")

RunInput = t.Callable[[t.List[str], bytes], t.Tuple[int, str, str]]


class Peer(t.NamedTuple):
    node: str
    address: str
    port: int = 22
    user: str = "root"


class Fleet(t.NamedTuple):
    peers: t.List[Peer]
    identity: str
    known_hosts: str
    timeout: float = 60.0


def fleet_from(raw: t.Optional[t.Mapping[str, t.Any]]) -> t.Optional[Fleet]:
    """The push configuration of renew.json (None: this node pushes to nobody); InputError names a bad entry."""
    if not raw or not raw.get("peers"):
        return None
    peers = []
    for index, entry in enumerate(raw["peers"], start=1):
        where = "fleet.peers[%d]" % index
        if not isinstance(entry, dict):
            raise InputError("%s must be a mapping with node and address" % where, item=where)
        node, address = str(entry.get("node") or ""), str(entry.get("address") or "")
        if not _NODE.match(node):
            raise InputError("%s.node %r is not an inventory host name" % (where, node), item=where)
        if not _ADDRESS.match(address) or address.startswith("-"):
            raise InputError("%s.address %r is not a host name or an IP address" % (where, address), item=where)
        try:
            port = int(entry.get("port", 22))
        except (TypeError, ValueError):
            port = 0
        if not 0 < port < 65536:
            raise InputError("%s.port must be a port number" % where, item=where)
        user = str(entry.get("user") or "root")
        if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user):
            raise InputError("%s.user %r is not a user name" % (where, user), item=where)
        peers.append(Peer(node, address.strip("[]"), port, user))
    for key in ("identity", "known_hosts"):
        if not os.path.isabs(str(raw.get(key) or "")):
            raise InputError("fleet.%s must be an absolute path" % key, item="fleet.%s" % key)
    return Fleet(peers, str(raw["identity"]), str(raw["known_hosts"]), float(raw.get("timeout", 60.0)))


def ssh_argv(fleet: Fleet, peer: Peer) -> t.List[str]:
    """The push's ssh command: this key only, the known host keys only (never trust on first use), no prompt."""
    return ["ssh", "-F", "/dev/null", "-i", fleet.identity, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % fleet.known_hosts, "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10", "-p", str(peer.port), "-l", peer.user, peer.address,
            # The node's authorized_keys entry forces the receiving command; this word only names it in its logs.
            "linkcert-receive"]


def load_pending(state_root: str) -> t.Dict[str, t.List[str]]:
    """{node: [domains]} still to push; an unreadable file is an empty ledger (the next change pushes again)."""
    try:
        with open(os.path.join(state_root, PENDING_FILE), encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return {}
    found: t.Dict[str, t.List[str]] = {}
    for node, domains in (raw.items() if isinstance(raw, dict) else []):
        if _NODE.match(str(node)) and isinstance(domains, list):
            found[str(node)] = sorted({str(d) for d in domains})
    return found


def save_pending(state_root: str, pending: t.Mapping[str, t.Sequence[str]]) -> None:
    path = os.path.join(state_root, PENDING_FILE)
    kept = {node: sorted(set(domains)) for node, domains in pending.items() if domains}
    if not kept:
        if os.path.exists(path):
            os.unlink(path)
        return
    atomic_write(path, (json.dumps(kept, sort_keys=True) + "\n").encode("utf-8"), 0o600)


def push(fleet: Fleet, bundle_for: t.Callable[[t.List[str]], t.Dict[str, t.Any]], changed: t.Sequence[str], state_root: str,
         run: RunInput) -> t.List[t.Dict[str, t.Any]]:
    """Push the ``changed`` domains (and whatever earlier runs could not deliver) to every peer.

    ``bundle_for(domains)`` builds the bundle; ``run(argv, stdin)`` runs ssh. Returns one result per peer
    ``{node, ok, domains, message}``; the pending ledger is updated either way."""
    pending = load_pending(state_root)
    results = []
    for peer in fleet.peers:
        domains = sorted(set(changed) | set(pending.get(peer.node, [])))
        if not domains:
            continue
        try:
            payload = json.dumps(bundle_for(domains)).encode("utf-8")
            rc, out, err = run(ssh_argv(fleet, peer), payload)
        except (OSError, LinkcertError) as exc:
            rc, out, err = -1, "", getattr(exc, "msg", str(exc))
        answer = _answer(out)
        ok = rc == 0 and answer.get("ok") is True
        said = (err or out).strip().splitlines()
        message = str(answer.get("message") or (said[-1] if said else "ssh exited with status %d" % rc))
        results.append({"node": peer.node, "ok": ok, "domains": domains, "message": message})
        if ok:
            pending.pop(peer.node, None)
        else:
            pending[peer.node] = domains
    save_pending(state_root, pending)
    return results


def _answer(out: str) -> t.Dict[str, t.Any]:
    """The receiving side's JSON answer (its last line), or {}."""
    for line in reversed((out or "").strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return {}


def bundle_domains(bundle: t.Mapping[str, t.Any]) -> t.List[str]:
    """The domains a received bundle names, validated (InputError names the bad one)."""
    if not isinstance(bundle, dict) or not isinstance(bundle.get("certificates", []), list):
        raise InputError("the bundle must be a mapping with a certificates list, as the issuer's runner sends it")
    return [normalize_domain((entry or {}).get("domain") if isinstance(entry, dict) else None, what="bundle.certificates[%d].domain" % i)
            for i, entry in enumerate(bundle.get("certificates") or [], start=1)]
