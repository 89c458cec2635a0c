"""Release artifacts: fetch a .tar.gz, verify its sha256, unpack it once, atomically.

``ensure_release`` is blocking (the supervisor runs it in a thread). A release directory
``releases/APP/VERSION`` either exists complete or not at all: the archive is downloaded
and unpacked inside a temporary directory next to it, the digest is checked *before*
anything is unpacked, and the finished tree is renamed into place. A crash at any point
leaves only a ``.tmp-*`` directory, removed on the next start. Each release directory
holds ``.skewless-release.json`` with the digest it came from: a release is immutable, so
the same APP/VERSION with another digest is an error, not a silent overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from skewless.core.desired import ArtifactSpec
from skewless.core.errors import UpstreamError

MARKER = ".skewless-release.json"
_CHUNK = 1 << 16


class ArtifactError(UpstreamError):
    """The artifact could not be fetched, verified or unpacked."""


def ensure_release(root: Path, app: str, version: str, artifact: ArtifactSpec) -> Path:
    dest = root / app / version
    if dest.is_dir():
        _check_marker(dest, app, version, artifact)
        os.utime(dest)  # most recently used: pruned last
        return dest
    (root / app).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        archive = tmp / "artifact.tar.gz"
        digest = _fetch(artifact.url, archive)
        if digest != artifact.sha256:
            raise ArtifactError(
                f"artifact {artifact.url} has sha256 {digest}, expected {artifact.sha256}; "
                "nothing was unpacked (fix the sha256 or the file)"
            )
        tree = tmp / "tree"
        tree.mkdir()
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tree, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArtifactError(f"artifact {artifact.url} is not a valid .tar.gz: {exc}") from None
        (tree / MARKER).write_text(
            json.dumps({"app": app, "version": version, "sha256": digest, "url": artifact.url})
        )
        try:
            os.rename(tree, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # Someone else finished the same release first: theirs is as good as ours.
            _check_marker(dest, app, version, artifact)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_marker(dest: Path, app: str, version: str, artifact: ArtifactSpec) -> None:
    try:
        sha = json.loads((dest / MARKER).read_text()).get("sha256")
    except (OSError, ValueError):
        sha = None
    if sha != artifact.sha256:
        raise ArtifactError(
            f"release {app} {version} is already unpacked from an artifact with sha256 {sha}, "
            f"not {artifact.sha256}: a release is immutable, give the new build a new version"
        )


def _fetch(url: str, target: Path) -> str:
    """Copy or download ``url`` to ``target``; return the sha256 of what was written."""
    digest = hashlib.sha256()
    parsed = urlparse(url)
    try:
        with open(target, "wb") as out:
            if parsed.scheme in ("http", "https"):
                with httpx.stream("GET", url, timeout=60.0, follow_redirects=True) as resp:
                    if resp.status_code != 200:
                        raise ArtifactError(
                            f"artifact {url}: download answered HTTP {resp.status_code}"
                        )
                    for chunk in resp.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            elif parsed.scheme in ("", "file"):
                path = unquote(parsed.path) if parsed.scheme == "file" else url
                with open(path, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            else:
                raise ArtifactError(
                    f"artifact {url}: unsupported scheme {parsed.scheme!r} "
                    "(use a local path, file://, http:// or https://)"
                )
    except httpx.HTTPError as exc:
        raise ArtifactError(f"artifact {url}: download failed: {exc}") from None
    except OSError as exc:
        raise ArtifactError(f"artifact {url}: cannot read it: {exc.strerror or exc}") from None
    return digest.hexdigest()


def clean_temporaries(root: Path) -> None:
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def prune_releases(root: Path, app: str, *, keep: int, in_use: Collection[str]) -> list[str]:
    """Remove all but the ``keep`` most recently used versions of ``app`` (never one in use)."""
    app_dir = root / app
    if not app_dir.is_dir():
        return []
    versions = sorted(
        (d for d in app_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    removed = []
    for d in versions[keep:]:
        if d.name not in in_use:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed
