#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: acme_account_key
short_description: Make sure the ACME account key exists and return its thumbprint
version_added: 0.1.0
description:
  - Creates the account key M(mailops.linkcert.acme_http01_cert) signs with (EC P-256, mode 0600, written to a temporary
    name and renamed) when it is missing, and returns its RFC 7638 JWK thumbprint.
  - Every HTTP-01 answer is C(TOKEN.THUMBPRINT), so a web server that knows the thumbprint can answer any challenge without
    token files (stateless mode). The challenge_webroot role uses this for fleets of edge nodes behind one name, so the
    challenge succeeds whichever node the CA reaches.
  - The key itself is never returned. In check mode a missing key is not created and RV(thumbprint) is null.
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.state
requirements:
  - cryptography
  - josepy
options:
  path:
    description: The account key file (C(STATE_ROOT/account.key) is what M(mailops.linkcert.acme_http01_cert) uses by default).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Read the fleet's account thumbprint on the node that orders
  mailops.linkcert.acme_account_key:
    path: /var/lib/linkcert/state/account.key
  register: account
  run_once: true

- name: Answer every challenge statelessly
  ansible.builtin.debug:
    msg: 'return 200 "$token.{{ account.thumbprint }}";'
"""

RETURN = r"""
thumbprint:
  description: Base64url (no padding) SHA-256 JWK thumbprint of the account key; null in check mode when the key is missing.
  returned: always
  type: str
  sample: NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_sync
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError


def main():
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True, "no_log": False}}, supports_check_mode=True)
    try:
        key, created = _acme_sync.account_key(module.params["path"], create=not module.check_mode)
        thumbprint = _acme_sync.thumbprint_of(key) if key is not None else None
    except LinkcertError as exc:
        exc.fail(module)
    except OSError as exc:
        module.fail_json(msg="cannot create the account key %s: %s" % (module.params["path"], exc))
    changed = created or (module.check_mode and key is None)
    module.exit_json(changed=changed, thumbprint=thumbprint)


if __name__ == "__main__":
    main()
