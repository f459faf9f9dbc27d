"""The temporary secondary folder of a replica that was given no ``--secondary-dir``.

A replica without a ``--secondary-dir`` follows the store from a temporary folder of its
own. ``Replica.close()`` removes it, but a process killed with SIGKILL (or by the OOM
killer) never runs ``close()``: each such death would leave a folder of RocksDB files
behind. So each folder holds ``owner.lock``, flock()ed by its process for as long as it
lives; the kernel drops that lock when the process dies, however it dies, and the next
replica to start removes every such folder whose lock it can take. A lock, not a pid,
because pids are reused and differ between the pid namespaces (containers) that may share
a /tmp.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

SECONDARY_PREFIX: Final = "drex-replica-"
OWNER_LOCK: Final = "owner.lock"


def own_secondary(parent: str | Path | None = None) -> tuple[Path, int]:
    """A new ``drex-replica-*`` folder in ``parent`` (default: the temporary directory)
    and the descriptor of its held ``owner.lock``; stale folders are removed first.

    The lock file is locked before it gets its name, so a folder that has one always has
    a live owner or none at all.
    """
    remove_stale_secondaries(parent)
    folder = Path(tempfile.mkdtemp(prefix=SECONDARY_PREFIX, dir=parent))
    fd, path = tempfile.mkstemp(prefix=".owner-", dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())  # for people: who owns this folder
    os.rename(path, folder / OWNER_LOCK)
    return folder, fd


def remove_stale_secondaries(parent: str | Path | None = None) -> list[Path]:
    """Remove the ``drex-replica-*`` folders in ``parent`` whose owner is dead; their list.

    A folder without ``owner.lock`` (being created, or left by an older drex that took no
    lock) is left alone, as are other users' folders (this one cannot open their lock).
    """
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(SECONDARY_PREFIX + "*"):
        try:
            fd = os.open(folder / OWNER_LOCK, os.O_RDWR)
        except OSError:  # no lock file, or not ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        logger.info("removed %s: its drex serve process is gone", folder)
        removed.append(folder)
    return removed
