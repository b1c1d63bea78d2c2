#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: certificate_sync
short_description: Copy the certificates of the node that orders to the other nodes of a fleet
version_added: 0.1.0
description:
  - A fleet is a group of edge nodes serving the same domains behind one name. One node orders each certificate
    (M(mailops.linkcert.acme_http01_cert)); this module carries the result to the others.
  - With O(mode=export), reads the account key and, for every domain on record (or those of O(domains)), its state file and
    its certificate and key when installed; returns them as RV(bundle). The bundle holds private keys, so register it only in a task
    with C(no_log=true).
  - With O(mode=install), installs from O(bundle) every certificate that differs from the installed one, through the same
    versioned symbolic-link switch as an issuance (key and certificate change together, never a half-written file), writes
    the state files with this node's paths, and installs the account key (0600) so any node can take over ordering.
  - C(changed) means a certificate or the account key was installed. Rewriting a state file with the issuer's newer record
    is bookkeeping (listed in RV(states_updated)), as M(mailops.linkcert.acme_http01_cert) treats its own state files.
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.state
requirements:
  - cryptography
options:
  mode:
    description: C(export) on the node that orders, C(install) on the others.
    type: str
    choices: [export, install]
    required: true
  cert_root:
    description: Where certificates are installed (C(linkcert_cert_root)).
    type: path
    required: true
  state_root:
    description: Where the per-domain state files are (C(linkcert_state_root)).
    type: path
    required: true
  account_key:
    description: The account key file; defaults to C(STATE_ROOT/account.key).
    type: path
  domains:
    description: With O(mode=export), the domains to export; all installed certificates when omitted.
    type: list
    elements: str
  bundle:
    description: With O(mode=install), the RV(bundle) an export returned.
    type: dict
"""

EXAMPLES = r"""
- name: Read the certificates on the node that orders
  mailops.linkcert.certificate_sync:
    mode: export
    cert_root: /etc/linkcert/live
    state_root: /var/lib/linkcert/state
  register: fleet
  delegate_to: "{{ groups['linkcert_edges'] | first }}"
  run_once: true
  no_log: true

- name: Install them on every other node
  mailops.linkcert.certificate_sync:
    mode: install
    cert_root: /etc/linkcert/live
    state_root: /var/lib/linkcert/state
    bundle: "{{ fleet.bundle }}"
  when: inventory_hostname != groups['linkcert_edges'] | first
"""

RETURN = r"""
bundle:
  description: The account key and certificates (with private keys and state); only with O(mode=export).
  returned: when O(mode=export)
  type: dict
domains:
  description: The domains exported, or those whose certificate was installed (or would be, in check mode).
  returned: always
  type: list
  elements: str
states_updated:
  description: The domains whose state file changed.
  returned: when O(mode=install)
  type: list
  elements: str
account_key_changed:
  description: Whether the account key was installed or replaced.
  returned: when O(mode=install)
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_sync
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": ["export", "install"]},
            "cert_root": {"type": "path", "required": True},
            "state_root": {"type": "path", "required": True},
            "account_key": {"type": "path", "no_log": False},
            "domains": {"type": "list", "elements": "str"},
            "bundle": {"type": "dict", "no_log": True},
        },
        required_if=[("mode", "install", ("bundle",))],
        supports_check_mode=True,
    )
    p = module.params
    account = p["account_key"] or os.path.join(p["state_root"], "account.key")
    try:
        if p["mode"] == "export":
            bundle = _acme_sync.export_bundle(p["cert_root"], p["state_root"], account, p["domains"])
            module.exit_json(changed=False, bundle=bundle, domains=[c["domain"] for c in bundle["certificates"]])
        if not isinstance(p["bundle"].get("certificates", []), list):
            raise InputError("bundle.certificates must be a list, as mode=export returns it")
        result = _acme_sync.install_bundle(p["bundle"], p["cert_root"], p["state_root"], account, module.check_mode)
    except LinkcertError as exc:
        exc.fail(module)
    except OSError as exc:
        module.fail_json(msg="certificate_sync: %s" % exc)
    # State files are the issuer's records (bookkeeping, rewritten silently as acme_http01_cert does);
    # a change is a certificate or the account key installed.
    changed = bool(result["installed"] or result["account_key_changed"])
    module.exit_json(changed=changed, domains=result["installed"], states_updated=result["states_updated"],
                     account_key_changed=result["account_key_changed"])


if __name__ == "__main__":
    main()
