# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""The one exception type that carries a failure to the module boundary."""

from __future__ import annotations

import typing as t


def short_error(exc: BaseException, limit: int = 300) -> str:
    """An exception as one bounded line for messages (its class name when it cannot say more, or its str() fails)."""
    try:
        text = str(exc).strip()
    # Some libraries' __str__ read attributes that may be missing: any failure there is worded by the class name.
    except Exception:  # pylint: disable=broad-exception-caught
        text = ""
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class LinkcertError(Exception):
    """A failure the user must see, with the item it concerns.

    Raised anywhere in the collection's utilities; each module's ``main()``
    ends with one ``except LinkcertError as e: e.fail(module)``.
    """

    def __init__(self, message: str, *, item: t.Optional[str] = None, reason: str = "error",
                 details: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super().__init__(message)
        self.msg = message
        self.item = item
        self.reason = reason
        self.details = details or {}

    def fail(self, module: t.Any, **extra: t.Any) -> None:
        """Fail the Ansible module with this error's message and details."""
        result: t.Dict[str, t.Any] = dict(extra)
        result.update(self.details)
        result["reason"] = self.reason
        if self.item is not None:
            result["item"] = self.item
        module.fail_json(msg=self.msg, **result)


class InputError(LinkcertError):
    """Bad input, found before any side effect."""

    def __init__(self, message: str, *, item: t.Optional[str] = None) -> None:
        super().__init__(message, item=item, reason="invalid_input")
