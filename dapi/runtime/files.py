"""Files only the daemon's user may read: ``data_dir`` (0700) and what holds keys or pending transactions (0600).

DESIGN.md §7: files holding keys or pending transactions are private to the daemon's user. The mode is
set explicitly after creation, so a permissive umask does not widen it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700. A folder that already exists is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if missing; either way make it 0600."""
    path.touch(mode=PRIVATE_FILE, exist_ok=True)
    os.chmod(path, PRIVATE_FILE)
    return path


def readable_by_others(path: Path) -> bool:
    """Whether group or others may read ``path`` (False when it cannot be looked at)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))
