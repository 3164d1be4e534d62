"""Download one file from a list of mirrors, atomically, with its MD5 checked.

The file is streamed into a temporary name in the destination folder and only renamed
(``os.replace``, atomic on one file system) to its real name once its MD5 matches the
published one. An interrupted or corrupt download therefore never sits under the real
name where the next run would trust it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from .errors import DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per connection attempt / read; a dead mirror must not hang a run


def fetch(urls: Sequence[str], dest: Path, md5: str, timeout: float = TIMEOUT_S) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves a file with MD5 ``md5``.

    Mirrors are tried in order; a mirror that fails (network error, HTTP error, or a
    file with the wrong MD5) is logged and the next one is tried.

    Raises:
        DataError: every mirror that answered served a file with the wrong MD5.
        DatasetNotFoundError: no mirror could be reached (e.g. no internet access);
            the message says where to put the file by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    wrong_md5 = False
    for url in urls:
        log.info("downloading %s to %s", url, dest)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                # Hash while streaming so a 170 MB archive is read once, not twice.
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            actual = digest.hexdigest()
            if actual != md5:
                wrong_md5 = True
                failures.append(f"{url}: served {size} bytes with MD5 {actual}, expected {md5}")
                log.warning("%s", failures[-1])
                continue
            os.replace(tmp, dest)
            log.debug("downloaded %s (%d bytes, MD5 verified)", dest, size)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            failures.append(f"{url}: {type(err).__name__}: {reason}")
            log.warning("download failed: %s", failures[-1])
        finally:
            # Whatever happened, no partial or unverified file survives.
            tmp.unlink(missing_ok=True)

    tried = "\n".join(f"  - {f}" for f in failures)
    if wrong_md5:
        raise DataError(
            f"could not download a good copy of {dest.name}; tried:\n{tried}\n"
            f"No file was written to {dest}. The mirror may serve a changed or corrupt "
            f"file; try again later or get the file from another source and put it at {dest}."
        )
    raise DatasetNotFoundError(
        f"could not download {dest.name}; tried:\n{tried}\n"
        f"If this machine has no internet access, download the file on another machine "
        f"and copy it to {dest} (or into the folder given by --data-dir / $VAEOOD_DATA)."
    )
