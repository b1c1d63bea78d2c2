#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: edge_files
short_description: Write a set of configuration files and directories in one step, validate them, or put the old ones back
version_added: 0.2.0
description:
  - Brings a list of files, directories and absent paths to the wanted state in one task (one remote round trip), which is
    what keeps the roles' cost flat however many files and domains a host has.
  - Every entry is checked before anything is touched (absolute clean path, state, content, octal mode, existing owner and
    group); a bad entry fails the task naming C(files[N].field), with nothing written.
  - Only what differs is changed. Files are written to a temporary name in the same directory, synced and renamed over the
    target, so a reader never sees half a file.
  - When something changed, O(validate) runs once (for example C(nginx -t)). If it fails, or a write fails half-way, every
    change of this task is undone in reverse order (files restored with their old content, mode and owner, new ones
    removed), and the task fails with the validator's own output. The services never see the rejected set.
  - File contents are never returned or logged. With C(--diff), text files not marked O(files[].secret) show their changes.
author:
  - linkcert maintainers (@mailops)
attributes:
  check_mode:
    support: full
    description: Reports what would change; writes nothing and runs no validator.
  diff_mode:
    support: full
    description: Shows the changes of text files not marked O(files[].secret).
options:
  files:
    description: The wanted files, directories and absent paths, applied in this order (list a directory before its files).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path, without C(.) or C(..) components, C(//) or a trailing C(/).
        type: str
        required: true
      state:
        description:
          - V(file) writes O(files[].content) or O(files[].content_b64); its directory must exist or be listed before it.
          - V(directory) creates the directory (and missing parents, mode 0755).
          - V(absent) removes a file or symlink; a directory is never removed.
        type: str
        choices: [file, directory, absent]
        default: file
      content:
        description: The file's text (UTF-8).
        type: str
      content_b64:
        description: The file's bytes, base64-encoded (for binary files such as a zip application).
        type: str
      mode:
        description:
          - Permissions as an octal string, for example V('0644'). A YAML number is refused (0644 unquoted would be read as
            decimal 644).
          - When omitted, an existing file keeps its mode; a new file gets 0644 and a new directory 0755.
        type: raw
      owner:
        description: User name or numeric id. When omitted, a new file belongs to the user the task runs as.
        type: str
      group:
        description: Group name or numeric id.
        type: str
      secret:
        description: Never show this file in a diff (private configuration such as credentials).
        type: bool
        default: false
  validate:
    description:
      - Command (argument list, no shell) run once after the changes, only when something changed and not in check mode.
      - A non-zero exit undoes every change of this task.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Serve the ACME challenge webroot, removing the default site, checked by nginx before it is reloaded
  mailops.linkcert.edge_files:
    files:
      - path: /var/lib/linkcert/webroot/.well-known/acme-challenge
        state: directory
        mode: "0755"
      - path: /etc/nginx/sites-enabled/default
        state: absent
      - path: /etc/nginx/conf.d/linkcert-challenge.conf
        content: "{{ lookup('ansible.builtin.template', 'linkcert-challenge.conf.j2') }}"
        owner: root
        group: root
        mode: "0644"
    validate: [nginx, -t]
  notify: Reload nginx
"""

RETURN = r"""
files:
  description: One entry per file, in the order given, with what changed (V(created), V(content), V(mode), V(owner), V(removed)).
  returned: always
  type: list
  elements: dict
  sample:
    - {path: /etc/nginx/conf.d/linkcert-challenge.conf, state: file, changed: true, changes: [content]}
validated:
  description: Whether O(validate) ran (and passed).
  returned: always
  type: bool
restored:
  description: On a failed validation, whether every previous file was put back.
  returned: when O(validate) failed
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._files import Batch, diffs, parse_entries, plan, report, STATES


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list", "elements": "dict", "required": True,
                "options": {
                    "path": {"type": "str", "required": True},
                    "state": {"type": "str", "choices": list(STATES), "default": "file"},
                    "content": {"type": "str", "no_log": True},
                    "content_b64": {"type": "str", "no_log": True},
                    "mode": {"type": "raw"},
                    "owner": {"type": "str"},
                    "group": {"type": "str"},
                    "secret": {"type": "bool", "default": False},
                },
            },
            "validate": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    try:
        changes = plan(parse_entries(module.params["files"]))
        batch = Batch(changes)
        result = {"changed": bool(batch.changes), "files": report(changes), "validated": False}
        if module._diff:
            result["diff"] = diffs(changes)
        if batch.changes and not module.check_mode:
            batch.apply()
            if module.params["validate"]:
                batch.validate(module.params["validate"], lambda argv: module.run_command(argv, expand_user_and_vars=False, handle_exceptions=False))
                result["validated"] = True
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
