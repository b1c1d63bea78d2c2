# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""Crash-safe storage of installed certificates.

Every file is written to a temporary file in the same directory, synced and
renamed over its target, so a reader sees the old content or the new one,
never a truncated file.  Key and certificate of a domain are never replaced
one at a time: each install writes a complete new version directory

    ROOT/.versions/DOMAIN/<utc timestamp>-<random>/{privkey,cert,chain,fullchain}.pem

and then swaps the symlink ROOT/DOMAIN to it with one rename, so nginx always
loads a matching key/certificate pair from ROOT/DOMAIN/*.pem.

Installs of one domain are serialised with flock(2) on ROOT/.versions/.DOMAIN.lock
(released by the kernel however the holder ends).  The holder writes its process
id into the lock file and clears it when it is done, so an install that finds an
id there knows the previous one was killed half-way, and first removes what it
left: version directories that are not live and lack a file (or hold a temporary
one), and ROOT/.DOMAIN.tmp-* symbolic links.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import secrets
import shutil
import tempfile
import time
import typing as t
from pathlib import Path

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domain

PathLike = t.Union[str, "os.PathLike[str]"]

FILES = ("privkey", "cert", "chain", "fullchain")
FILE_MODES = {"privkey": 0o600, "cert": 0o644, "chain": 0o644, "fullchain": 0o644}
KEEP_VERSIONS = 3
VERSIONS_DIR = ".versions"
LEGACY_PREFIX = "legacy-"
ROOT_MODE = 0o755
VERSIONS_MODE = 0o700
VERSION_DIR_MODE = 0o755
INSTALL_LOCK_TIMEOUT = 60.0
_LOCK_POLL_INTERVAL = 0.05
TEMP_MARK = ".tmp-"
_TEMP_ATTEMPTS = 16


def check_domain(domain: t.Any) -> str:
    """Return ``domain`` if it is safe as one path component under a store root.

    Raises LinkcertError(reason="invalid_input") for anything that could
    name a path outside the root or a hidden/internal entry.
    """
    if (not isinstance(domain, str) or not domain or domain.startswith(".") or "/" in domain or "\x00" in domain
            or (os.altsep is not None and os.altsep in domain)):
        raise LinkcertError("refusing to use %r as a file name: it must be a host name without '/' and not start with '.'" % (domain,),
                            item=str(domain), reason="invalid_input")
    return domain


def os_error_text(exc: BaseException) -> str:
    """The OS error text with its symbolic errno, e.g. 'No space left on device (ENOSPC)'."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return "%s (%s)" % (exc.strerror or os.strerror(exc.errno), errno.errorcode.get(exc.errno, "errno %d" % exc.errno))
    return str(exc) or type(exc).__name__


def utc_stamp() -> str:
    """A UTC timestamp for file names that sorts in time order: 20250102T030405.123456Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so renames in it are durable (file systems that cannot do it are skipped)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _write_failed(path: PathLike, exc: BaseException) -> LinkcertError:
    return LinkcertError("cannot write %s: %s" % (os.fspath(path), os_error_text(exc)), item=os.fspath(path), reason="write_failed",
                         details={"errno": getattr(exc, "errno", None)})


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: PathLike, data: bytes, mode: int = 0o644, uid: int = -1, gid: int = -1) -> None:
    """Replace ``path`` by a file holding ``data`` with permissions ``mode``, atomically and durably.

    ``uid``/``gid`` (-1: the writer's) are set on the temporary file before it holds any data.

    On failure the target is untouched, no temporary file is left behind and
    LinkcertError(reason="write_failed") carries the OS error text.
    """
    target = Path(path)
    fd: t.Optional[int] = None
    temp: t.Optional[str] = None
    try:
        fd, temp = tempfile.mkstemp(prefix=".%s%s" % (target.name, TEMP_MARK), dir=os.fspath(target.parent) or ".")
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        handle = os.fdopen(fd, "wb")
        fd = None  # owned by handle from now on
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        temp = None
        fsync_dir(target.parent)
    except Exception as exc:
        raise _write_failed(target, exc) from exc
    finally:
        if fd is not None:
            os.close(fd)
        if temp is not None:
            _remove_quietly(temp)


def flock_within(fd: int, timeout: float, poll: float = _LOCK_POLL_INTERVAL) -> bool:
    """Take an exclusive flock(2) on ``fd``, trying again every ``poll`` seconds for up to ``timeout`` seconds.

    False when another holder kept it that long; OSError for anything but contention.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(poll, remaining))


def lock_holder(fd: int) -> str:
    """The process id a lock holder wrote into the lock file ``fd``; "" when none (best effort)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def set_lock_holder(fd: int, pid: t.Optional[int]) -> None:
    """Write ``pid`` into the lock file ``fd`` (None: empty it, the holder is done); best effort."""
    try:
        os.ftruncate(fd, 0)
        if pid is not None:
            os.pwrite(fd, b"%d\n" % pid, 0)
    except OSError:
        pass


def _make_dir(path: Path, mode: int, enforce: bool) -> None:
    """Create ``path`` with ``mode`` (parents as needed); with ``enforce`` also fix the mode of an existing one."""
    existed = path.is_dir()
    if not existed:
        os.makedirs(path, mode=mode, exist_ok=True)
    if enforce or not existed:
        os.chmod(path, mode)


def _entries(path: PathLike) -> t.List[os.DirEntry]:
    """The entries of directory ``path``; none when it does not exist."""
    try:
        return list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise LinkcertError("cannot list %s: %s" % (path, os_error_text(exc)), item=str(path), reason="read_failed") from exc


def domains_in(root: PathLike, suffix: str = "", links_only: bool = False) -> t.List[str]:
    """Sorted domain names of the entries ``NAME + suffix`` in ``root`` (live symbolic links only, with
    ``links_only``); entries whose NAME is not a host name in its normal form are ignored."""
    found = []
    for entry in _entries(root):
        name = entry.name
        if suffix:
            if not name.endswith(suffix):
                continue
            name = name[:-len(suffix)]
        if not name or name.startswith(".") or (links_only and not entry.is_symlink()):
            continue
        try:
            if normalize_domain(name) == name:
                found.append(name)
        except InputError:
            continue
    return sorted(found)


class CertStore:
    """Versioned certificate files under one root, one live symlink per domain."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    def live(self, domain: str) -> Path:
        """ROOT/DOMAIN: the path nginx uses (a symlink to the live version once installed)."""
        return self.root / check_domain(domain)

    def domains(self) -> t.List[str]:
        """The domains with a live link (installed, or being installed)."""
        return domains_in(self.root, links_only=True)

    def paths(self, domain: str) -> t.Dict[str, str]:
        """The file names nginx configuration refers to, keyed privkey/cert/chain/fullchain."""
        live = self.live(domain)
        return {name: str(live / ("%s.pem" % name)) for name in FILES}

    def versions_dir(self, domain: str) -> Path:
        """ROOT/.versions/DOMAIN."""
        return self.root / VERSIONS_DIR / check_domain(domain)

    def install_lock_path(self, domain: str) -> Path:
        """ROOT/.versions/.DOMAIN.lock (beside the domain's versions directory, which holds versions only)."""
        return self.root / VERSIONS_DIR / (".%s.lock" % check_domain(domain))

    def versions(self, domain: str) -> t.List[Path]:
        """The installed version directories of ``domain``, oldest first (legacy directories moved aside are not versions)."""
        base = self.versions_dir(domain)
        names = [entry.name for entry in _entries(base)
                 if entry.is_dir(follow_symlinks=False) and not entry.name.startswith((".", LEGACY_PREFIX))]
        return [base / name for name in sorted(names)]

    def read(self, domain: str) -> t.Optional[t.Dict[str, bytes]]:
        """The files of the live version, or None when nothing (or only part of a set) is installed."""
        live = self.live(domain)
        base = os.path.realpath(live)  # resolve once: all four files come from the same version
        contents: t.Dict[str, bytes] = {}
        try:
            for name in FILES:
                with open(os.path.join(base, "%s.pem" % name), "rb") as handle:
                    contents[name] = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise LinkcertError("cannot read the certificate files of %s in %s: %s" % (domain, live, os_error_text(exc)),
                                item=domain, reason="read_failed") from exc
        if not contents["privkey"].strip() or not contents["cert"].strip() or not contents["fullchain"].strip():
            return None
        return contents

    def install(self, domain: str, key_pem: bytes, cert_pem: bytes, chain_pem: bytes) -> None:
        """Write a new version with these files and make it the live one in a single rename.

        If anything fails, the previous live version stays live and unchanged
        and the partial new version is removed. Keeps the KEEP_VERSIONS newest
        versions (and always the live one); directories moved aside from an
        older layout (legacy-*) are never deleted. Installs of one domain take
        turns (see the module docstring), and the first after one that was
        killed half-way removes its leftovers.
        """
        check_domain(domain)
        fullchain = cert_pem if not cert_pem or cert_pem.endswith(b"\n") else cert_pem + b"\n"
        contents = {"privkey": key_pem, "cert": cert_pem, "chain": chain_pem, "fullchain": fullchain + chain_pem}
        versions_dir = self.versions_dir(domain)
        try:
            _make_dir(self.root, ROOT_MODE, enforce=False)
            _make_dir(self.root / VERSIONS_DIR, VERSIONS_MODE, enforce=True)
            _make_dir(versions_dir, VERSIONS_MODE, enforce=True)
        except OSError as exc:
            raise _write_failed(versions_dir, exc) from exc
        with self._install_lock(domain):
            version = self._new_version_dir(versions_dir)
            try:
                for name in FILES:
                    atomic_write(version / ("%s.pem" % name), contents[name], FILE_MODES[name])
                try:
                    fsync_dir(versions_dir)
                except OSError as exc:
                    raise _write_failed(version, exc) from exc
                self._point_live(domain, version)
            except BaseException:
                shutil.rmtree(version, ignore_errors=True)
                raise
            try:
                fsync_dir(self.root)
            except OSError as exc:
                raise _write_failed(self.live(domain), exc) from exc
            self._prune(domain)

    @contextlib.contextmanager
    def _install_lock(self, domain: str) -> t.Iterator[None]:
        """Hold the install lock of ``domain`` (waiting up to INSTALL_LOCK_TIMEOUT seconds for another installer);
        if the previous holder did not finish (it was killed), remove what it left first."""
        path = self.install_lock_path(domain)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise _write_failed(path, exc) from exc
        try:
            try:
                taken = flock_within(fd, INSTALL_LOCK_TIMEOUT)
            except OSError as exc:
                raise _write_failed(path, exc) from exc
            if not taken:
                raise LinkcertError("another process is installing a certificate for %s (it holds %s); gave up after %.0f s"
                                    % (domain, path, INSTALL_LOCK_TIMEOUT), item=domain, reason="write_failed")
            killed = bool(lock_holder(fd))
            set_lock_holder(fd, os.getpid())
            if killed:
                self._remove_leftovers(domain)
            yield
            set_lock_holder(fd, None)  # only when done: an exception or a kill leaves the mark for the next install
        finally:
            os.close(fd)  # releases the lock

    def _remove_leftovers(self, domain: str) -> None:
        """Remove what a killed install of ``domain`` left (best effort; called holding the install lock).

        Only a version directory that is not live and lacks one of the files, or still holds a temporary
        file, is removed: a complete version is a matching pair and stays until pruned.
        """
        live_target = os.path.realpath(self.live(domain))
        wanted = {"%s.pem" % name for name in FILES}
        for version in self.versions(domain):
            if os.path.realpath(version) == live_target:
                continue
            names = {entry.name for entry in _entries(version)}
            if not wanted <= names or any(TEMP_MARK in name for name in names):
                shutil.rmtree(version, ignore_errors=True)
        prefix = ".%s%s" % (domain, TEMP_MARK)
        for entry in _entries(self.root):
            if entry.name.startswith(prefix) and entry.is_symlink():
                _remove_quietly(entry.path)

    def _new_version_dir(self, versions_dir: Path) -> Path:
        for attempt in range(_TEMP_ATTEMPTS):
            version = versions_dir / ("%s-%s" % (utc_stamp(), secrets.token_hex(4)))
            try:
                os.mkdir(version, VERSION_DIR_MODE)
                os.chmod(version, VERSION_DIR_MODE)
                return version
            except FileExistsError:
                if attempt == _TEMP_ATTEMPTS - 1:
                    raise _write_failed(version, OSError(errno.EEXIST, os.strerror(errno.EEXIST))) from None
            except OSError as exc:
                raise _write_failed(version, exc) from exc
        raise _write_failed(versions_dir, OSError(errno.EEXIST, os.strerror(errno.EEXIST)))  # pragma: no cover - loop always returns or raises

    def _point_live(self, domain: str, version: Path) -> None:
        """Atomically point ROOT/DOMAIN at ``version``, first moving a real directory there aside."""
        live = self.live(domain)
        target = os.path.join(VERSIONS_DIR, domain, version.name)
        moved_aside: t.Optional[Path] = None
        if os.path.lexists(live) and not os.path.islink(live):
            # rename(2) cannot replace a directory by a symlink; keep whatever an admin put there.
            moved_aside = version.parent / ("%s%s" % (LEGACY_PREFIX, utc_stamp()))
            try:
                os.rename(live, moved_aside)
            except OSError as exc:
                raise _write_failed(live, exc) from exc
        link: t.Optional[str] = None
        try:
            link = self._temp_symlink(domain, target)
            os.replace(link, live)
            link = None
        except Exception as exc:
            if link is not None:
                _remove_quietly(link)
            if moved_aside is not None and not os.path.lexists(live):
                try:
                    os.rename(moved_aside, live)
                except OSError:
                    pass
            if isinstance(exc, LinkcertError):
                raise
            raise _write_failed(live, exc) from exc

    def _temp_symlink(self, domain: str, target: str) -> str:
        for attempt in range(_TEMP_ATTEMPTS):
            link = os.path.join(os.fspath(self.root), ".%s%s%s" % (domain, TEMP_MARK, secrets.token_hex(4)))
            try:
                os.symlink(target, link)
                return link
            except FileExistsError:
                if attempt == _TEMP_ATTEMPTS - 1:
                    raise
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))  # pragma: no cover - loop always returns or raises

    def _prune(self, domain: str) -> None:
        """Delete versions beyond the KEEP_VERSIONS newest, never the live one (best effort)."""
        live_target = os.path.realpath(self.live(domain))
        versions = self.versions(domain)
        for version in versions[:-KEEP_VERSIONS]:
            if os.path.realpath(version) != live_target:
                shutil.rmtree(version, ignore_errors=True)
