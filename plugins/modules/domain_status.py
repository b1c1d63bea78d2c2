#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_status
short_description: Record, or read, each domain's SSL status in its state file
version_added: 0.1.0
description:
  - Merges status fields (C(ssl_status), C(label), C(reason), C(message), C(remediation), C(dns_verified), C(dns_issues))
    into C(STATE_ROOT/DOMAIN.json), the file M(mailops.linkcert.acme_http01_cert) keeps for each domain, so a domain that
    never reached the CA (DNS or CAA not ready) has its status and remediation on record too.
  - Other fields of the file are kept. A file is rewritten (atomically, under the domain's lock) only when a field changes.
  - Without O(statuses), only reads. Either way it returns every domain's state found in O(state_root), so a play can
    serve every certificate on record, including those of domains this run did not touch.
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.state
options:
  state_root:
    description: The state directory (C(linkcert_state_root)).
    type: path
    required: true
  statuses:
    description:
      - Status entries, as returned by the P(mailops.linkcert.ssl_status#filter) filter.
      - When omitted, the module only reads.
    type: list
    elements: dict
"""

EXAMPLES = r"""
- name: Record every domain's status
  mailops.linkcert.domain_status:
    state_root: /var/lib/linkcert/state
    statuses: "{{ linkcert_domains | mailops.linkcert.ssl_status(dns.results, caa.results, certs.results) }}"

- name: Read every domain's status on this host
  mailops.linkcert.domain_status:
    state_root: /var/lib/linkcert/state
  register: status
"""

RETURN = r"""
updated:
  description: The domains whose state file changed.
  returned: always
  type: list
  elements: str
domains:
  description: Every domain's state (the content of its state file, without the failure history), sorted by domain.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain
from ansible_collections.mailops.linkcert.plugins.module_utils._status import LABELS

FIELDS = ("ssl_status", "label", "reason", "message", "remediation", "dns_verified", "dns_issues")


def _entries(statuses):
    entries = []
    for index, raw in enumerate(statuses, start=1):
        domain = normalize_domain(raw.get("domain"), what="statuses[%d].domain" % index)
        if raw.get("ssl_status") not in LABELS:
            raise InputError("statuses[%d].ssl_status must be one of %s" % (index, ", ".join(LABELS)), item=domain)
        entries.append((domain, {key: raw.get(key) for key in FIELDS}))
    return entries


def _read_all(state_root):
    store = StateStore(state_root)
    found = []
    for domain in store.domains():
        state = store.load(domain)
        if state:
            state["failed_recently"] = len(state.pop("failures", None) or [])
            state.pop("ari", None)
            found.append(state)
    return found


def main():
    module = AnsibleModule(
        argument_spec={"state_root": {"type": "path", "required": True}, "statuses": {"type": "list", "elements": "dict"}},
        supports_check_mode=True,
    )
    updated = []
    if module.params["statuses"] is None:
        module.exit_json(changed=False, updated=[], domains=_read_all(module.params["state_root"]))
    try:
        entries = _entries(module.params["statuses"])
        store = StateStore(module.params["state_root"])
        for domain, fields in entries:
            current = store.load(domain)
            wanted = dict(current, domain=domain, **fields)
            if wanted == current:
                continue
            updated.append(domain)
            if not module.check_mode:
                with store.lock(domain, timeout=30.0):
                    latest = store.load(domain)
                    store.save(domain, dict(latest, domain=domain, **fields))
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=bool(updated), updated=updated, domains=_read_all(module.params["state_root"]))


if __name__ == "__main__":
    main()
