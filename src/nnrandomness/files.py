"""Writing a file so that it is either whole or absent, and a full disk says so.

Every result file of the project (a replica's files and manifest, an epoch checkpoint, an overhead
sweep's manifest) lands through `write_atomic`: bytes to ``<path>.tmp-<pid>``, fsync, rename. A
reader never sees half a file; a crash leaves at most the temporary, which the next run sweeps.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, kept: str) -> None:
    """Write `data` to `path` by ``<path>.tmp-<pid>``, fsync and rename; the temporary is removed on
    every way out. A full disk (ENOSPC, EDQUOT) becomes an OSError of the same errno saying
    "no space left on <directory> while writing <file>; kept: <kept>" (serialise into memory first,
    so that the error is this one and not a library's)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(e.errno, f"no space left on {path.parent} while writing {path.name}; kept: {kept}") from e
    finally:
        tmp.unlink(missing_ok=True)
