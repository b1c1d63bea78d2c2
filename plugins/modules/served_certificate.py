#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: served_certificate
short_description: Check which certificate an edge really serves for each domain
version_added: 0.2.0
description:
  - Opens a TLS session with SNI to the edge for each domain and compares the certificate it presents with the serial on
    disk (from the domain's state file), so a certificate that was renewed on disk but never loaded (nginx not reloaded),
    or a domain answered by another server block, is caught before a customer sees it.
  - The chain is not verified on purpose (what matters is which certificate is served); only the leaf is read.
  - Read-only; run it from the controller (C(delegate_to) localhost) to see the edge as clients see it.
author:
  - linkcert maintainers (@mailops)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - It only reads; check mode changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing) in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
options:
  address:
    description: The edge's address or host name to connect to.
    type: str
    required: true
  port:
    description: The HTTPS port.
    type: int
    default: 443
  node:
    description: The edge's name in messages (for example its inventory name). Defaults to O(address).
    type: str
  certificates:
    description: The domains to check, with the serial on disk.
    type: list
    elements: dict
    required: true
    suboptions:
      domain:
        description: The name sent as SNI. Validated and normalised like every domain name.
        type: str
        required: true
      serial:
        description: The serial (hexadecimal) of the certificate on disk; when omitted, only what is served is reported.
        type: str
  timeout:
    description: Seconds for each connection and handshake.
    type: float
    default: 5
  workers:
    description: Handshakes at the same time.
    type: int
    default: 16
requirements:
  - cryptography
seealso:
  - module: mailops.linkcert.domain_status
"""

EXAMPLES = r"""
- name: Compare what each edge serves with the certificates on disk
  mailops.linkcert.served_certificate:
    address: "{{ ansible_host | default(inventory_hostname) }}"
    node: "{{ inventory_hostname }}"
    certificates: "{{ status.domains | selectattr('serial') | list }}"
  delegate_to: localhost
  register: served
"""

RETURN = r"""
results:
  description: One entry per domain, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    domain:
      description: The normalised name.
      type: str
    node:
      description: O(node).
      type: str
    expected_serial:
      description: The serial on disk, normalised (lower-case hexadecimal without leading zeros), or null.
      type: str
    served_serial:
      description: The serial of the certificate the edge presents, or null when none is.
      type: str
    served_names:
      description: The DNS names of the served certificate.
      type: list
      elements: str
    served_not_after:
      description: When the served certificate expires (ISO 8601 UTC), or null.
      type: str
    matches:
      description: Whether the served certificate is the one on disk.
      type: bool
    reason:
      description:
        - C(served_ok); C(served_mismatch) (another serial is served for the name, typically nginx not reloaded);
          C(served_wrong_certificate) (the served certificate does not cover the name, another server block answers);
          C(served_expired); C(not_served) (no TLS session).
      type: str
    message:
      description: What was found.
      type: str
    remediation:
      description: What to do, or null.
      type: str
mismatches:
  description: How many domains are not served with the certificate on disk.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_renewal, _served
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError


def main():
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "required": True},
            "port": {"type": "int", "default": 443},
            "node": {"type": "str"},
            "certificates": {"type": "list", "elements": "dict", "required": True, "options": {
                "domain": {"type": "str", "required": True},
                "serial": {"type": "str"},
            }},
            "timeout": {"type": "float", "default": 5.0},
            "workers": {"type": "int", "default": 16},
        },
        supports_check_mode=True,
    )
    if not _acme_renewal.HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(_acme_renewal.CRYPTOGRAPHY_IMPORT_ERROR))
    params = module.params
    try:
        if not 0 < params["port"] < 65536:
            raise InputError("port must be in [1, 65535], got %r" % params["port"], item="port")
        if not 0 < params["timeout"] <= 120 or not 1 <= params["workers"] <= 128:
            raise InputError("timeout must be in (0, 120] and workers in [1, 128]", item="timeout")
        wanted = _served.targets(params["certificates"])
        results = _served.check(params["address"], params["port"], params["node"] or params["address"], wanted,
                                params["timeout"], params["workers"])
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=False, results=results, mismatches=sum(1 for r in results if r["reason"] != _served.OK))


if __name__ == "__main__":
    main()
