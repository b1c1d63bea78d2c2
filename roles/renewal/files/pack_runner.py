# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pack the renewal runner and the collection's module_utils into one executable zip (PEP 441).

Run on the controller by the renewal role: ``python pack_runner.py RUNNER MODULE_UTILS_DIR OUTPUT``.
One file to copy instead of a directory tree (one remote round trip instead of one per file). The
archive is deterministic (sorted entries, fixed timestamps), so an unchanged collection gives the
same bytes and the copy reports no change.
"""

from __future__ import annotations

import os
import sys
import zipfile

PACKAGE = "ansible_collections/mailops/linkcert/plugins/module_utils"
STAMP = (2020, 1, 1, 0, 0, 0)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=STAMP)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def pack(runner: str, module_utils: str, output: str) -> None:
    tmp = output + ".tmp"
    with zipfile.ZipFile(tmp, "w") as archive:
        with open(runner, "rb") as handle:
            _add(archive, "__main__.py", handle.read())
        parts = PACKAGE.split("/")
        for depth in range(1, len(parts)):  # regular packages: imports from a zip need no namespace support
            _add(archive, "/".join(parts[:depth]) + "/__init__.py", b"")
        _add(archive, PACKAGE + "/__init__.py", b"")
        for name in sorted(os.listdir(module_utils)):
            if name.endswith(".py") and name != "__init__.py":
                with open(os.path.join(module_utils, name), "rb") as handle:
                    _add(archive, "%s/%s" % (PACKAGE, name), handle.read())
    os.replace(tmp, output)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: pack_runner.py RUNNER MODULE_UTILS_DIR OUTPUT")
    pack(*sys.argv[1:])
