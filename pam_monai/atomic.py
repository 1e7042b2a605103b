"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Every checkpoint, cache file, metric table, mask and figure the project writes goes through
:func:`atomic_path`, so an interrupted run (SIGKILL included) leaves either the previous complete
file or the new complete file, never half of one. That is a process's death; a node's crash or
power loss may still lose data the kernel had not written out: checkpoints are synced to disk
before their rename (``engines.checkpoint.atomic_save``), as are the text files of
:func:`atomic_write_text` (model.json, metric tables, summaries); a cache file found cut short is
prepared again, while a mask or figure written just before such a crash may come back empty (it is
written again by running the step again).

A SIGKILL leaves the temporary file behind. Its name carries the writer's process ID, host and
PID namespace (``.model.pt.pid4242@node1-ns4026531836.k3j_9xq2.tmp``), so
:func:`remove_orphaned_temps` can remove, at the next start, the temporary files of writers that
are gone, and never one still being written (containers with host networking share the host name
but not the process IDs: a writer in another container is never judged by this one's).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "WRITE_DENIED",
    "DiskFullError",
    "atomic_dir",
    "atomic_path",
    "atomic_write_text",
    "check_writable",
    "folder_lock",
    "os_error_in_chain",
    "recover_swap",
    "refuse_mount_point",
    "remove_orphaned_temps",
    "sibling_temp_dir",
    "swap_dir",
]


def _umask() -> int:
    """The process's umask now (a program may set its own after importing this module), read
    from ``/proc/self/status`` where Linux gives it: ``os.umask`` can only read it by setting it,
    which another thread creating a file at that moment would see."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"
    try:  # process IDs are per PID namespace (container), which a host name does not tell
        return f"{host}-ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux
        return host


_HOST = _host_tag()
# exactly what _prefix + tempfile.mkstemp / mkdtemp make: 8 random [a-z0-9_], then the suffix
_TAG = re.compile(r"^\..+\.pid(\d+)@([A-Za-z0-9_-]+)\.[a-z0-9_]{8}(?:\..*)?$", re.DOTALL)
_NAME_MAX = 100  # bytes of the target's name in a temporary name (file systems allow 255 bytes in all)


def _cut(name: str, size: int = _NAME_MAX) -> str:
    """The longest start of ``name`` of at most ``size`` bytes on disk, no character cut in two: the
    limit of a name is in bytes, and 100 Chinese characters are 300 of them."""
    if len(os.fsencode(name)) <= size:
        return name
    kept, total = [], 0
    for char in name:
        total += len(os.fsencode(char))  # an undecodable byte (surrogateescape) is one
        if total > size:
            break
        kept.append(char)
    return "".join(kept)


def _prefix(name: str) -> str:
    # the PID is read at each call: a forked DataLoader worker writes with its own
    return f".{_cut(name)}.pid{os.getpid()}@{_HOST}."


def _writer_gone(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) sends Ctrl+C there (0 is CTRL_C_EVENT): never ask
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process (PermissionError), or one that cannot be asked
        return False
    return False


_FULL = (errno.ENOSPC, errno.EDQUOT)
WRITE_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only mount, permissions


class DiskFullError(OSError):
    """An atomic write that did not fit on its disk (errno ENOSPC or EDQUOT), naming the file."""


def os_error_in_chain(error: BaseException | None, errnos: tuple[int, ...]) -> OSError | None:
    """The first ``OSError`` with one of ``errnos`` in ``error``'s chain of causes and contexts, if
    any: libraries re-raise it inside their own errors (``torch.save``, nibabel)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in errnos:
            return error
        error = error.__cause__ or error.__context__
    return None


def _disk_full(error: BaseException | None) -> OSError | None:
    """The "no space" error in ``error``'s chain, if any (``torch.save`` raises it inside its own)."""
    return os_error_in_chain(error, _FULL)


def _full_error(error: OSError, target: Path) -> DiskFullError:
    return DiskFullError(
        error.errno,
        f"{target}: not written, the disk is full ({error.strerror}); any earlier {target.name} is "
        f"unchanged and no partial file is left: free space on {target.parent}'s disk or write elsewhere",
    )


def _start_error(error: OSError, target: Path) -> OSError | None:
    """A failure to create the temporary file or folder of ``target`` reworded to name ``target``
    and its folder (the temporary name means nothing to the user), None for other failures; the
    errno is kept (EACCES stays a PermissionError)."""
    if error.errno in _FULL:
        return _full_error(error, target)
    if error.errno in WRITE_DENIED:  # the folder itself, or the first of its missing parents, was refused
        state = "is not writable" if target.parent.is_dir() else "could not be created"
        return OSError(error.errno, f"{target}: cannot write it: {target.parent} {state} ({error.strerror})")
    return None


def _reworded(error: BaseException, target: Path) -> OSError | None:
    """A write of ``target`` that failed on a full disk, reworded to name it (a nested atomic write
    already named its own file); None for any other failure."""
    full = _disk_full(error)
    return None if full is None or isinstance(full, DiskFullError) else _full_error(full, target)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except PermissionError as e:  # Windows refuses to replace a file another program holds open
        raise PermissionError(
            e.errno,
            f"{path}: cannot replace it ({e.strerror}); it is unchanged and the new one was not written: "
            "close it in any program that has it open (on Windows a spreadsheet showing a CSV locks it) or "
            "check its permissions, then run again",
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    ``suffix`` lets writers that infer the format from the name (nibabel, PIL) see the right one.
    The file gets the usual permissions (``0666 & ~umask``; ``mkstemp`` alone makes it 0600).
    On any exception the temporary file is removed and ``path`` is untouched.

    Example::

        with atomic_path("out/model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_prefix(path.name), suffix=suffix, dir=path.parent)
    except OSError as e:
        reworded = _start_error(e, path)
        if reworded is None:
            raise
        raise reworded from None  # the original names only the temporary file
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        reworded = _reworded(e, path)  # the bare "[Errno 28] No space left on device" names no file
        if reworded is None:
            raise
        raise reworded from None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, synced to disk before the rename: these small files
    (model.json, metric tables, summaries) describe the large ones, and one found empty after a
    node's crash would stop the next step; a sync costs little beside writing them."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        with open(tmp, "rb") as f:  # fsync syncs the file, whichever descriptor asks
            os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/name`` for the block: writers of files that must match
    each other (``metrics.csv`` and the ``summary.json`` that hashes it) take turns, a second one
    waiting for the first to finish. The kernel releases it when its process ends (SIGKILL
    included), so a dead writer's lock never blocks. Without ``fcntl`` (Windows), or where the
    lock file cannot be made (a read-only folder: the write then names the problem), no lock; nor
    on a file system without ``flock`` (NFS without its lock daemon, Lustre without ``-o flock``),
    with a warning: its error stopped the writes the lock guards."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle = None
    if fcntl is not None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            handle = open(Path(folder) / name, "ab")  # noqa: SIM115 - held until the block ends
        except OSError:
            handle = None
    try:
        if handle is not None:
            _flock_or_warn(fcntl, handle)
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _flock_or_warn(fcntl, handle) -> None:
    """Lock ``handle`` exclusively, waiting; where its file system refuses ``flock`` (ENOLCK,
    ENOSYS, EOPNOTSUPP: an error no caller could act on, at the end of a whole evaluation), warn
    and go on unlocked, as without ``fcntl``."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except OSError as e:
        warnings.warn(
            f"{handle.name}: its file system does not lock files ({e.strerror or e}): the files it guards are "
            "written not locked (two writers into this folder at once may leave one's files beside the other's)",
            RuntimeWarning,
            stacklevel=4,
        )


def sibling_temp_dir(target: str | os.PathLike) -> Path:
    """A new empty folder beside ``target`` (hidden), to fill and then rename into place, with the
    usual permissions (``0777 & ~umask``: ``mkdtemp`` alone makes it 0700, so a data set or bundle
    renamed from it would be private to its writer)."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target.name), dir=target.parent))
    except OSError as e:
        reworded = _start_error(e, target)
        if reworded is None:
            raise
        raise reworded from None
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``target`` (:func:`sibling_temp_dir`); when the block
    succeeds it is renamed to ``target``, so a folder appears complete or not at all. An existing
    ``target`` must be an empty folder (a user's ``mkdir``), or anything with ``replace=True``, and
    is swapped out whole (:func:`swap_dir`). On any exception the temporary folder is removed and
    ``target`` is untouched.

    Example::

        with atomic_dir("Dataset001") as tmp:
            (tmp / "dataset.json").write_text(..., encoding="utf-8")
    """
    target = Path(target)
    recover_swap(target)  # a swap killed between its renames left the old folder aside
    tmp = sibling_temp_dir(target)
    try:
        yield tmp
        if _real_dir(target) and (replace or not any(target.iterdir())):
            swap_dir(tmp, target)  # the old folder stays whole until the new one takes its place
        else:
            _move_into_place(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reworded = _reworded(e, target)
        if reworded is None:
            raise
        raise reworded from None


_UNMOVABLE = (errno.EBUSY, errno.EXDEV)  # a mount point: renamed neither away nor onto


def _unmovable_error(error: OSError, target: Path) -> OSError:
    """A folder ``target`` that could not be renamed (EBUSY, EXDEV), reworded to name it and what to
    do: the bare "Device or resource busy" says neither."""
    what = (
        "a mount point (a docker -v or bind mount, a disk of its own)"
        if error.errno == errno.EBUSY
        else "a folder its file system cannot rename (one of a container's image, on overlayfs, or a mount point)"
    )
    return OSError(
        error.errno,
        f"{target}: cannot be replaced: it is {what} ({error.strerror}), and a folder is replaced by renaming a "
        f"complete new one into its place; it is unchanged: write into a new sub-folder of it instead (e.g. "
        f"{target / target.name}), or mount its parent folder",
    )


@contextlib.contextmanager
def _unmovable_named(target: Path) -> Iterator[None]:
    """Reword a rename's EBUSY / EXDEV inside the block (:func:`_unmovable_error`)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _UNMOVABLE:
            raise
        raise _unmovable_error(e, target) from None


def refuse_mount_point(target: str | os.PathLike) -> None:
    """Refuse, before any work, to replace a folder that is a mount point (its swap would fail
    with EBUSY at the end): the error of :func:`_unmovable_error`."""
    target = Path(os.path.abspath(target))
    if target.exists() and os.path.ismount(target):
        raise _unmovable_error(OSError(errno.EBUSY, os.strerror(errno.EBUSY)), target)


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _replaced_name(target: Path) -> Path:
    """Where :func:`swap_dir` keeps the old ``target`` for a moment where folders cannot be exchanged:
    one fixed name per target (found again after a SIGKILL), which :func:`remove_orphaned_temps`
    never matches. A long name is cut (:func:`_cut`), and a digest of the whole name added: two folders
    whose names begin alike would otherwise share it, and one's swap remove the other's waiting old folder."""
    name = target.name
    if _cut(name) != name:
        name = f"{_cut(name)}.{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}"
    return target.parent / f".{name}.replaced"


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (Linux's ``renameat2(RENAME_EXCHANGE)``, ext4,
    xfs, btrfs, tmpfs); False, nothing done, where the system or file system cannot (NFS, macOS,
    Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself for the block (no lock file left beside the
    folders it guards); none without ``fcntl`` or where the file system refuses it."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    try:
        fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    except OSError:
        fd = None
    try:
        if fd is not None:
            with contextlib.suppress(OSError):  # NFS without its lock daemon: unlocked, as folder_lock
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def recover_swap(target: str | os.PathLike) -> None:
    """Finish what a :func:`swap_dir` of ``target`` killed midway left: where the folders could not
    be exchanged in one step, a kill between its two renames leaves ``target`` missing and its old
    content whole under :func:`_replaced_name`, which is renamed back (the new folder, a temporary
    one of a dead writer, goes with :func:`remove_orphaned_temps`); one killed while removing the
    old content after the swap leaves a part of it, which is removed.

    It takes the lock :func:`swap_dir` holds: a swap in progress in another process, between its
    two renames, looks just like a killed one, and putting its old folder back under it would
    make it fail."""
    target = Path(os.path.abspath(target))  # "." has no name to put the old one under
    with _dir_lock(target.parent):
        _recover_swap(target)


def _recover_swap(target: Path) -> None:
    """:func:`recover_swap` of the absolute ``target`` by a caller that holds its parent's lock
    (a second ``flock`` of it from this process would wait for ever)."""
    old = _replaced_name(target)
    if not old.is_dir():
        return
    if not target.exists() and not target.is_symlink():
        os.rename(old, target)
        return
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        raise OSError(
            errno.ENOTEMPTY,
            f"{old}: the previous content of {target}, replaced by a newer one, could not be removed: remove it "
            "(make its folders writable first), then run again",
        )


def swap_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder ``new`` in the place of the folder ``target`` (or where none is), its
    old content removed, leaving ``target`` old or new at every instant, never a mix.

    Where the folders can be exchanged in one step (:func:`_exchange`) a kill at any point leaves
    one of them; elsewhere ``target`` is renamed aside, ``new`` into place and the old removed, and
    a kill between the two renames leaves ``target`` missing for a moment: :func:`recover_swap`,
    which every swap of ``target`` runs first, puts the old one back. Swaps of folders beside one
    another take turns (a lock on their parent folder). This process, if its working folder is in
    ``target``, is moved into the new one, at the same path (or the nearest folder above it that the
    new one has); other processes there stay in the old folder, which is removed.
    """
    new, target = Path(new), Path(os.path.abspath(target))
    cwd = Path.cwd()
    inside = _real_dir(target) and (cwd == target.resolve() or target.resolve() in cwd.parents)
    with _dir_lock(target.parent):
        _recover_swap(target)
        if not _real_dir(target):
            _move_into_place(new, target)
            return
        if _exchange(new, target):
            shutil.rmtree(new, ignore_errors=True)  # the old content now; a part left is only a copy
        else:
            with _unmovable_named(target):
                _swap_by_renames(new, target)
    if inside:  # the same path, now in the new folder (the old one is gone), or the nearest above it has
        os.chdir(next(p for p in (cwd, *cwd.parents) if p.is_dir()))


def _move_into_place(new: Path, target: Path) -> None:
    """``os.replace`` of the folder ``new`` onto ``target``, a mount point's refusal named."""
    with _unmovable_named(target):
        os.replace(new, target)


def _swap_by_renames(new: Path, target: Path) -> None:
    old = _replaced_name(target)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # as it was; a kill here is recover_swap's
        raise
    shutil.rmtree(old, ignore_errors=True)  # what is left of it recover_swap removes next time


def check_writable(folder: str | os.PathLike, option: str | None = None) -> Path:
    """Refuse, before any work, an output ``folder`` this process cannot write into (a read-only
    bundle or mount, another user's folder) with an error naming it and ``option``, the flag that
    sends the output elsewhere; return it as a Path. A folder that does not exist yet is judged by
    its first existing parent, where it would be created; nothing is left behind (a test file is
    written and removed: permission bits say nothing to root or about a read-only mount)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        fd, name = tempfile.mkstemp(prefix=_prefix("write-check"), dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = "" if probe == folder else f" (its parent {probe})"
        hint = f"; pass {option} to write elsewhere" if option else ""
        raise OSError(e.errno, f"{folder}: not writable{where}: {e.strerror}{hint}") from None
    return folder


def remove_orphaned_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders that killed writers left in ``folder`` (and its
    subfolders with ``recursive``); return what was removed.

    Only names written by :func:`atomic_path` / :func:`sibling_temp_dir` on this host whose writer
    process no longer exists are touched: a write in progress (this process's or another's), a
    file of another host or container (a shared file system) and every other file are left alone,
    and so is an orphan that cannot be removed (a read-only folder, another user's file in a
    sticky folder), which does not stop the caller. A PID that was reused since keeps its orphan,
    which is harmless; so does every orphan on Windows, where a process cannot be asked whether it
    lives without sending it Ctrl+C.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        m = _TAG.match(entry.name)
        if any(entry.is_relative_to(gone) for gone in removed):  # inside a folder removed above
            continue
        if m is None or m.group(2) != _HOST or not _writer_gone(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        except FileNotFoundError:  # removed meanwhile by another sweep
            pass
        except OSError:  # a read-only cache, another user's file in a sticky folder: not ours to remove
            continue
        removed.append(entry)
    return removed
