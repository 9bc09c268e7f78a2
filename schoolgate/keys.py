"""Secret keys kept in files beside the policy, so every gateway process (and the
console) of a school signs and checks the same way across restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """The key in `path`, created (mode 0600, atomically) on first use."""
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) >= 16:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # made by hand, or by an older version, readable by others
            return key
    except FileNotFoundError:
        pass
    except ValueError as e:
        raise ValueError(f"{path} does not hold a hex key; delete it to have a new one made") from e
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(size) + "\n")
    try:
        os.link(staging, path)  # fails if another process made it first: then use theirs
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    return load_or_create_secret(path, size)
