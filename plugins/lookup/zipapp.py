# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: zipapp
author: linkcert maintainers (@mailops)
version_added: 0.2.0
short_description: A Python script and the collection's module_utils as one executable zip (base64)
description:
  - Builds, in memory on the controller, a PEP 441 zip application whose C(__main__.py) is the given script and which holds
    the collection's C(plugins/module_utils), importable as C(ansible_collections.mailops.linkcert.plugins.module_utils).
  - The archive is deterministic (sorted entries, fixed timestamps), so an unchanged collection gives the same bytes and
    installing it again reports no change.
  - Returns the archive base64-encoded, for O(mailops.linkcert.edge_files#module:files[].content_b64).
options:
  _terms:
    description: The script, looked up like a role's C(files/) (an absolute path also works).
    required: true
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Install the renewal runner
  mailops.linkcert.edge_files:
    files:
      - path: /usr/local/lib/linkcert/linkcert-renew.pyz
        content_b64: "{{ lookup('mailops.linkcert.zipapp', 'linkcert-renew.py') }}"
        mode: "0644"
"""

RETURN = r"""
_raw:
  description: One base64 string per script.
  type: list
  elements: str
"""

import base64
import io
import os
import zipfile

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

PACKAGE = "ansible_collections/mailops/linkcert/plugins/module_utils"
MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
STAMP = (2020, 1, 1, 0, 0, 0)


def _add(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=STAMP)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def pack(script, module_utils=MODULE_UTILS):
    """The zip application's bytes: ``script`` as ``__main__.py`` and every module_utils file as a regular package."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with open(script, "rb") as handle:
            _add(archive, "__main__.py", handle.read())
        parts = PACKAGE.split("/")
        for depth in range(1, len(parts) + 1):  # regular packages: imports from a zip need no namespace support
            _add(archive, "/".join(parts[:depth]) + "/__init__.py", b"")
        for name in sorted(os.listdir(module_utils)):
            if name.endswith(".py") and name != "__init__.py":
                with open(os.path.join(module_utils, name), "rb") as handle:
                    _add(archive, "%s/%s" % (PACKAGE, name), handle.read())
    return buffer.getvalue()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        found = []
        for term in terms:
            path = self.find_file_in_search_path(variables, "files", term)
            if not path:
                raise AnsibleLookupError("zipapp: cannot find the script %r" % (term,))
            try:
                found.append(base64.b64encode(pack(path)).decode("ascii"))
            except OSError as exc:
                raise AnsibleLookupError("zipapp: cannot pack %s: %s" % (path, exc))
        return found
