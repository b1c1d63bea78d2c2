# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fleet's push: its configuration, the ssh command, and the ledger of nodes still to reach (ssh stood in for)."""

from __future__ import annotations

import json
import stat
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _fleet
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError

RAW = {"peers": [{"node": "edge-2", "address": "198.19.128.6"}, {"node": "edge-3", "address": "edge-3.esp.example", "port": 2222}],
       "identity": "/etc/linkcert/fleet/id_ed25519", "known_hosts": "/etc/linkcert/fleet/known_hosts"}


def test_the_configuration_and_the_ssh_command() -> None:
    fleet = _fleet.fleet_from(RAW)
    assert fleet is not None and [p.node for p in fleet.peers] == ["edge-2", "edge-3"]
    argv = _fleet.ssh_argv(fleet, fleet.peers[1])
    assert argv[0] == "ssh" and argv[-2:] == ["edge-3.esp.example", "linkcert-receive"]
    for option in ("IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/etc/linkcert/fleet/known_hosts"):
        assert argv[argv.index(option) - 1] == "-o", option
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"
    assert argv[argv.index("-i") + 1] == "/etc/linkcert/fleet/id_ed25519"
    assert _fleet.fleet_from(None) is None and _fleet.fleet_from({"peers": []}) is None


@pytest.mark.parametrize("change, item", [
    ({"peers": [{"node": "edge 2", "address": "198.19.128.6"}]}, "fleet.peers[1]"),
    ({"peers": [{"node": "edge-2", "address": "-oProxyCommand=sh"}]}, "fleet.peers[1]"),
    ({"peers": [{"node": "edge-2", "address": "x; rm -rf /"}]}, "fleet.peers[1]"),
    ({"peers": [{"node": "edge-2", "address": "198.19.128.6", "port": 0}]}, "fleet.peers[1]"),
    ({"peers": [{"node": "edge-2", "address": "198.19.128.6", "user": "root --"}]}, "fleet.peers[1]"),
    ({"peers": ["edge-2"]}, "fleet.peers[1]"),
    ({"identity": "relative/key"}, "fleet.identity"),
    ({"known_hosts": ""}, "fleet.known_hosts"),
])
def test_a_bad_entry_is_refused_naming_it(change: t.Dict[str, t.Any], item: str) -> None:
    with pytest.raises(InputError) as caught:
        _fleet.fleet_from(dict(RAW, **change))
    assert caught.value.item == item


class Ssh:
    """ssh stood in for: answers per node (by the address in argv), remembering what each was sent."""

    def __init__(self, answers: t.Dict[str, t.Tuple[int, str, str]]) -> None:
        self.answers, self.sent = answers, []

    def __call__(self, argv: t.List[str], payload: bytes) -> t.Tuple[int, str, str]:
        address = argv[-2]
        self.sent.append((address, json.loads(payload)))
        return self.answers[address]


OK = (0, json.dumps({"ok": True, "message": "1 certificate(s) installed of 1 received"}) + "\n", "")
DOWN = (255, "", "ssh: connect to host edge-3.esp.example port 2222: Connection refused\n")


def bundle_for(domains: t.List[str]) -> t.Dict[str, t.Any]:
    return {"account_key": None, "certificates": [{"domain": d, "state": {"ssl_status": "issued"}} for d in domains]}


def test_a_node_that_cannot_be_reached_is_remembered_and_tried_again(tmp_path: Path) -> None:
    fleet = _fleet.fleet_from(RAW)
    assert fleet is not None
    ssh = Ssh({"198.19.128.6": OK, "edge-3.esp.example": DOWN})
    results = _fleet.push(fleet, bundle_for, ["a.customer.test"], str(tmp_path), ssh)
    assert [(r["node"], r["ok"]) for r in results] == [("edge-2", True), ("edge-3", False)]
    assert "Connection refused" in results[1]["message"]
    assert _fleet.load_pending(str(tmp_path)) == {"edge-3": ["a.customer.test"]}
    assert stat.S_IMODE((tmp_path / _fleet.PENDING_FILE).stat().st_mode) == 0o600

    ssh.sent.clear()
    again = _fleet.push(fleet, bundle_for, ["b.customer.test"], str(tmp_path), ssh)  # edge-3 still down; edge-2 gets only the new one
    assert {r["node"]: r["domains"] for r in again} == {"edge-2": ["b.customer.test"], "edge-3": ["a.customer.test", "b.customer.test"]}
    assert _fleet.load_pending(str(tmp_path)) == {"edge-3": ["a.customer.test", "b.customer.test"]}

    ssh.answers["edge-3.esp.example"] = OK
    ssh.sent.clear()
    healed = _fleet.push(fleet, bundle_for, [], str(tmp_path), ssh)  # nothing new: only what is owed
    assert [(r["node"], r["domains"], r["ok"]) for r in healed] == [("edge-3", ["a.customer.test", "b.customer.test"], True)]
    assert [address for address, _bundle in ssh.sent] == ["edge-3.esp.example"]
    assert not (tmp_path / _fleet.PENDING_FILE).exists()


def test_an_answer_that_is_not_ok_is_a_failure_even_with_exit_0(tmp_path: Path) -> None:
    fleet = _fleet.fleet_from({"peers": RAW["peers"][:1], "identity": RAW["identity"], "known_hosts": RAW["known_hosts"]})
    assert fleet is not None
    refused = (0, json.dumps({"ok": False, "message": "the bundle was refused: bad name"}) + "\n", "")
    results = _fleet.push(fleet, bundle_for, ["a.customer.test"], str(tmp_path), Ssh({"198.19.128.6": refused}))
    assert results[0]["ok"] is False and results[0]["message"] == "the bundle was refused: bad name"
    silent = _fleet.push(fleet, bundle_for, [], str(tmp_path), Ssh({"198.19.128.6": (0, "", "")}))
    assert silent[0]["ok"] is False and silent[0]["message"] == "ssh exited with status 0"


def test_a_broken_ledger_is_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / _fleet.PENDING_FILE).write_text("{not json")
    assert _fleet.load_pending(str(tmp_path)) == {}
    (tmp_path / _fleet.PENDING_FILE).write_text(json.dumps({"edge 2": ["x"], "edge-3": "x", "edge-4": ["b", "a", "a"]}))
    assert _fleet.load_pending(str(tmp_path)) == {"edge-4": ["a", "b"]}


@pytest.mark.parametrize("bundle, problem", [
    ([], "must be a mapping"),
    ({"certificates": "x"}, "must be a mapping"),
    ({"certificates": [{"domain": "../../etc"}]}, "bundle.certificates[1].domain"),
    ({"certificates": ["links.customer.test"]}, "bundle.certificates[1].domain"),
])
def test_a_received_bundle_names_only_host_names(bundle: t.Any, problem: str) -> None:
    with pytest.raises(InputError) as caught:
        _fleet.bundle_domains(bundle)
    assert problem in caught.value.msg


def test_bundle_domains_are_normalised() -> None:
    assert _fleet.bundle_domains({"certificates": [{"domain": "Links.Customer.Test."}]}) == ["links.customer.test"]
