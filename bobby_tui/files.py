"""Writing the user's files: atomically, through symlinks, keeping their permissions."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` (UTF-8) so that a reader, or a crash, sees the old file or the new one.

    A symlink stays a symlink: its target is written. An existing file keeps its mode; a new one gets the mode a plain
    open() would give (0o666 less the umask). The text goes to a temporary file with a unique name beside the target,
    so concurrent writers never share one; the last rename wins. Raises OSError (its strerror says why).
    """
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops where links loop
        raise OSError(errno.ELOOP, "too many levels of symbolic links", str(path))
    try:
        mode: int | None = stat.S_IMODE(_regular_file_mode(target))
    except FileNotFoundError:
        mode = None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_unique(target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _regular_file_mode(target: Path) -> int:
    st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory", str(target))
        raise OSError(errno.EINVAL, "not a regular file", str(target))
    return st.st_mode


def _create_unique(target: Path) -> tuple[int, str]:
    """A new file beside `target`, opened for writing, created with mode 0o666 so that the umask applies."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (where the platform lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
