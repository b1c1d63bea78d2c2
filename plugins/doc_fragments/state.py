# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Attributes shared by the modules that keep linkcert's files (state, keys, certificates)."""

from __future__ import annotations


class ModuleDocFragment:
    """Check mode predicts without writing; no diff; a second run changes nothing."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - In check mode nothing is written; the result says what would change.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
"""
