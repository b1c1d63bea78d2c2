# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet sync: the issuer's account key and certificates, exported and installed on another node."""

from __future__ import annotations

import json
import stat
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_sync as sync
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import CertStore
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

DOMAINS = ("links.customer.com", "click.customer.net")


def pems(n: int) -> t.Tuple[bytes, bytes, bytes]:
    return (b"-----BEGIN PRIVATE KEY-----\nkey%d\n-----END PRIVATE KEY-----\n" % n,
            b"-----BEGIN CERTIFICATE-----\ncert%d\n-----END CERTIFICATE-----\n" % n,
            b"-----BEGIN CERTIFICATE-----\nchain%d\n-----END CERTIFICATE-----\n" % n)


class Node:
    def __init__(self, base: Path) -> None:
        self.cert_root, self.state_root = str(base / "live"), str(base / "state")
        self.account = str(base / "state" / "account.key")
        self.store, self.states = CertStore(self.cert_root), StateStore(self.state_root)

    def issue(self, domain: str, n: int) -> None:
        self.store.install(domain, *pems(n))
        self.states.save(domain, dict(self.store.paths(domain), domain=domain, ssl_status="issued", serial="%02x" % n,
                                      failures=[{"at": "2026-11-30T00:00:00Z", "reason": "x"}]))

    def export(self, domains: t.Optional[t.Sequence[str]] = None) -> t.Dict[str, t.Any]:
        return sync.export_bundle(self.cert_root, self.state_root, self.account, domains)

    def install(self, bundle: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Dict[str, t.Any]:
        return sync.install_bundle(bundle, self.cert_root, self.state_root, self.account, check_mode)


@pytest.fixture
def issuer(tmp_path: Path) -> Node:
    node = Node(tmp_path / "issuer")
    sync.account_key(node.account, create=True)
    for n, domain in enumerate(DOMAINS, start=1):
        node.issue(domain, n)
    return node


def test_account_key_is_created_once_0600_with_a_stable_thumbprint(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "account.key")
    assert sync.account_key(path, create=False) == (None, False)
    key, created = sync.account_key(path, create=True)
    assert created and stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    again, created_again = sync.account_key(path, create=True)
    assert not created_again
    assert sync.thumbprint_of(key) == sync.thumbprint_of(again)
    assert len(sync.thumbprint_of(key)) == 43


def test_export_then_install_copies_keys_certificates_and_state_with_local_paths(issuer: Node, tmp_path: Path) -> None:
    bundle = issuer.export()
    assert sorted(c["domain"] for c in bundle["certificates"]) == sorted(DOMAINS)
    assert all("failures" not in c["state"] and "privkey" not in c["state"] for c in bundle["certificates"])
    follower = Node(tmp_path / "follower")
    result = follower.install(bundle)
    assert sorted(result["installed"]) == sorted(DOMAINS) and result["account_key_changed"]
    for domain in DOMAINS:
        assert follower.store.read(domain) == issuer.store.read(domain)
        state = follower.states.load(domain)
        assert state["serial"] == issuer.states.load(domain)["serial"] and state["ssl_status"] == "issued"
        assert state["privkey"] == follower.store.paths(domain)["privkey"] and "failures" not in state
        assert stat.S_IMODE(Path(follower.store.paths(domain)["privkey"]).stat().st_mode) == 0o600
    assert Path(follower.account).read_bytes() == Path(issuer.account).read_bytes()
    assert stat.S_IMODE(Path(follower.account).stat().st_mode) == 0o600
    # Nothing differs any more: a second install changes nothing.
    assert follower.install(bundle) == {"installed": [], "states_updated": [], "account_key_changed": False}


def test_only_what_changed_is_installed(issuer: Node, tmp_path: Path) -> None:
    follower = Node(tmp_path / "follower")
    follower.install(issuer.export())
    issuer.issue(DOMAINS[0], 7)  # the issuer renewed one certificate
    result = follower.install(issuer.export())
    assert result["installed"] == [DOMAINS[0]] and result["states_updated"] == [DOMAINS[0]]
    assert follower.store.read(DOMAINS[0]) == issuer.store.read(DOMAINS[0])


def test_check_mode_reports_and_writes_nothing(issuer: Node, tmp_path: Path) -> None:
    follower = Node(tmp_path / "follower")
    result = follower.install(issuer.export(), check_mode=True)
    assert sorted(result["installed"]) == sorted(DOMAINS) and result["account_key_changed"]
    assert not Path(follower.cert_root).exists() and not Path(follower.account).exists()


def test_export_of_named_domains_skips_what_is_not_installed(issuer: Node) -> None:
    bundle = issuer.export([DOMAINS[1], "pending.customer.org"])
    assert [c["domain"] for c in bundle["certificates"]] == [DOMAINS[1]]
    assert json.loads(json.dumps(bundle)) == bundle  # plain JSON: it travels through the controller


@pytest.mark.parametrize("entry, message", [
    ({"domain": "../etc", "privkey": "k", "cert": "c", "chain": "x"}, "bundle.certificates[1].domain '../etc' contains the character '/'"),
    ({"domain": "links.customer.com", "cert": "c", "chain": "x"}, "bundle.certificates[1].privkey must be PEM text"),
    ("links.customer.com", "bundle.certificates[1] must be a mapping"),
])
def test_a_bad_bundle_is_refused_before_anything_is_written(tmp_path: Path, entry: t.Any, message: str) -> None:
    follower = Node(tmp_path / "follower")
    with pytest.raises(InputError) as exc:
        follower.install({"certificates": [entry]})
    assert message in str(exc.value)
    assert not Path(follower.cert_root).exists()


def test_records_without_a_certificate_travel_too_and_newer_records_replace_older(issuer: Node, tmp_path: Path) -> None:
    issuer.states.save("blocked.customer.org", {"domain": "blocked.customer.org", "ssl_status": "unknown", "reason": "caa_blocked"})
    follower = Node(tmp_path / "follower")
    follower.install(issuer.export())
    assert follower.states.load("blocked.customer.org")["reason"] == "caa_blocked"
    assert follower.store.read("blocked.customer.org") is None
    issuer.states.save(DOMAINS[0], dict(issuer.states.load(DOMAINS[0]), message="not due"))
    result = follower.install(issuer.export())
    assert result == {"installed": [], "states_updated": [DOMAINS[0]], "account_key_changed": False}
    assert follower.states.load(DOMAINS[0])["message"] == "not due"


def test_an_entry_with_nothing_to_install_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has neither certificate files nor a state"):
        Node(tmp_path / "follower").install({"certificates": [{"domain": "links.customer.com"}]})
