"""Faults of the storage as a user meets them: a truncated ``.safetensors`` file read by any
command, and a full disk while ``extract`` writes. Each is one line naming the file and the
problem, exit 2, no traceback; nothing half-written is left and the finished shards stay.

The full disk is a real one: a small tmpfs mounted for the test (needs root, as in CI; the
test is skipped where mounting is not allowed), so the failure comes from the kernel's
``write`` with ENOSPC, through safetensors and our writers.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emocircuits.capture.store import atomic_write_json, load_activations
from emocircuits.errors import StorageError
from emocircuits.geometry.vectors import EmotionVectors, directions

from helpers import one_error_line, run

EXTRACT = ["--data", "baseline", "--sites", "resid", "--positions", "mean,last",
           "--shard-size", "16", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def acts(tiny_dir, tmp_path_factory) -> Path:
    """A finished activation folder of a tiny model (several shards)."""
    out = tmp_path_factory.mktemp("acts") / "a"
    from emocircuits.cli import main

    assert main(["extract", "--model", str(tiny_dir("llama")), *EXTRACT, "--out", str(out)]) == 0
    assert len(list(out.glob("shard-*.safetensors"))) >= 3
    return out


def _truncated_copy(acts: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(acts, bad)
    shard = bad / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return bad, shard


@pytest.mark.parametrize("command", ["vectors", "geometry", "summary"])
def test_a_truncated_shard_is_one_line_naming_it(acts, tmp_path, capsys, command):
    bad, shard = _truncated_copy(acts, tmp_path)
    argv = {"vectors": ["vectors", "--activations", bad, "--out", tmp_path / "v.safetensors"],
            "geometry": ["geometry", "--activations", bad, "--out", tmp_path / "g"],
            "summary": ["summary", bad]}[command]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert str(shard) in line and "truncated or corrupt" in line, line
    assert not (tmp_path / "v.safetensors").exists()


def test_a_truncated_vectors_file_names_itself(acts, tmp_path):
    vec = directions(load_activations(acts))
    path = vec.save(tmp_path / "v.safetensors")
    assert EmotionVectors.load(path).emotions == vec.emotions
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(StorageError, match="truncated or corrupt") as e:
        EmotionVectors.load(path)
    assert str(path) in str(e.value)


@pytest.fixture()
def small_disk(tmp_path):
    """A 192 KiB tmpfs (a disk that fills up), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_extract_is_one_line_and_keeps_the_finished_shards(
    acts, tiny_dir, small_disk, capsys
):
    out = small_disk / "a"
    code, _, err = run(capsys, "extract", "--model", tiny_dir("llama"), *EXTRACT,
                       "--out", out)  # fmt: skip
    assert code == 2
    line = one_error_line(err)
    assert "No space left on device" in line and str(out) in line, line
    files = sorted(p.name for p in out.iterdir())
    # nothing half-written: no temporary file, no manifest, and every shard that is there
    # is whole (the same bytes as in the finished extraction on a roomy disk)
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp")], files
    assert "manifest.json" not in files and "plan.json" in files
    shards = [f for f in files if f.startswith("shard-")]
    assert shards and len(shards) < len(list(acts.glob("shard-*")))
    for f in shards:
        assert (out / f).read_bytes() == (acts / f).read_bytes(), f


def test_a_full_disk_for_a_json_result_is_one_line_and_leaves_the_old_file(small_disk):
    target = small_disk / "result.json"
    atomic_write_json(target, {"old": True})
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk up to the last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(StorageError, match="No space left on device") as e:
        atomic_write_json(target, {"new": np.arange(20000).tolist()})
    assert str(target) in str(e.value)
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "result.json"]
