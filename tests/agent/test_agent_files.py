"""Adapter tests on real files: log rotation and tails, release unpacking and pruning,
state-dir records, and recognising our own processes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from skewless.agent import artifacts, logs
from skewless.agent.procs import is_ours, proc_info
from skewless.agent.state_dir import StateDir
from skewless.core.desired import ArtifactSpec


def test_tail_returns_the_last_lines_and_handles_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "stderr.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert logs.tail_lines(path, 3) == ["line 997", "line 998", "line 999"]
    # Reading only the end of a big file never returns a cut first line.
    assert logs.tail_lines(path, 5000, max_bytes=40)[0] == "line 996"
    assert logs.tail_lines(tmp_path / "missing.log", 3) == []
    assert logs.tail_lines(path, 0) == []


def test_rotation_copies_truncates_and_keeps_a_few(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    with open(path, "ab") as writer:  # the child's O_APPEND handle survives rotations
        for round_ in range(4):
            writer.write(f"round {round_}\n".encode() * 10)
            writer.flush()
            assert logs.rotate_if_big(path, max_bytes=50, keep=2)
        writer.write(b"after\n")
        writer.flush()
    assert path.read_bytes() == b"after\n"
    assert path.with_name("stdout.log.1").read_text().startswith("round 3")
    assert path.with_name("stdout.log.2").read_text().startswith("round 2")
    assert not path.with_name("stdout.log.3").exists()
    assert not logs.rotate_if_big(path, max_bytes=50, keep=2)


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_release_is_unpacked_once_and_is_immutable(tmp_path: Path) -> None:
    root = tmp_path / "releases"
    root.mkdir()
    data = _tarball({"run.sh": b"echo hi\n"})
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data)
    spec = ArtifactSpec(url=str(archive), sha256=hashlib.sha256(data).hexdigest())
    dest = artifacts.ensure_release(root, "shop", "v1", spec)
    assert (dest / "run.sh").read_bytes() == b"echo hi\n"
    archive.unlink()  # a second instance of the same release needs no download
    assert artifacts.ensure_release(root, "shop", "v1", spec) == dest
    other = ArtifactSpec(url=str(archive), sha256="1" * 64)
    with pytest.raises(artifacts.ArtifactError, match="a release is immutable"):
        artifacts.ensure_release(root, "shop", "v1", other)


def test_broken_archive_and_escaping_paths_leave_nothing(tmp_path: Path) -> None:
    root = tmp_path / "releases"
    root.mkdir()
    for name, data in {
        "junk.tar.gz": b"not a tarball",
        "evil.tar.gz": _tarball({"../../escape.txt": b"x"}),
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        spec = ArtifactSpec(url=f"file://{path}", sha256=hashlib.sha256(data).hexdigest())
        with pytest.raises(artifacts.ArtifactError, match=r"not a valid \.tar\.gz"):
            artifacts.ensure_release(root, "shop", "v9", spec)
    assert list(root.rglob("*")) == [root / "shop"]
    assert not (tmp_path.parent / "escape.txt").exists()
    with pytest.raises(artifacts.ArtifactError, match="unsupported scheme"):
        artifacts.ensure_release(root, "shop", "v9", ArtifactSpec(url="ftp://x/a", sha256="0" * 64))


def test_prune_keeps_the_most_recent_and_those_in_use(tmp_path: Path) -> None:
    app = tmp_path / "shop"
    for i, version in enumerate(["v1", "v2", "v3", "v4", "v5"]):
        (app / version).mkdir(parents=True)
        os.utime(app / version, (1000 + i, 1000 + i))
    removed = artifacts.prune_releases(tmp_path, "shop", keep=2, in_use={"v1"})
    assert sorted(removed) == ["v2", "v3"]
    assert sorted(p.name for p in app.iterdir()) == ["v1", "v4", "v5"]


def test_records_round_trip_with_slashes_in_ids(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    sd.save_record("h1/shop/v1/0", {"pid": 5})
    (sd.instances / "garbage.json").write_text("{")
    assert sd.load_records() == [("garbage", None), ("h1/shop/v1/0", {"pid": 5})]
    sd.drop_record("h1/shop/v1/0")
    assert not sd.record_path("h1/shop/v1/0").exists()
    assert not list(sd.instances.glob(".*"))  # no temporaries left by atomic writes


def test_a_pid_is_ours_only_with_its_start_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        info = proc_info(child.pid)
        assert info is not None and info.pid == child.pid
        assert is_ours(child.pid, info.start_time)
        assert not is_ours(child.pid, info.start_time + 1)
    finally:
        child.kill()
        child.wait()
    assert not is_ours(child.pid, info.start_time)


def test_log_dirs_of_forgotten_instances_go_after_their_retention(tmp_path: Path) -> None:
    for name in ("kept", "old", "recent"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stderr.log").write_text("x\n")
    os.utime(tmp_path / "old" / "stderr.log", (1000, 1000))
    os.utime(tmp_path / "kept" / "stderr.log", (1000, 1000))
    now = (tmp_path / "recent" / "stderr.log").stat().st_mtime
    removed = logs.prune_dirs(tmp_path, keep={"kept"}, older_than=3600, now=now)
    assert removed == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "recent"]
