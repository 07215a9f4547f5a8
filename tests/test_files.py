"""harness.files: atomic writes leave the old file or the new one, with the user's usual mode."""

from __future__ import annotations

import os
import stat

import pytest

from harness.files import atomic_write, atomic_write_bytes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_record_gets_the_mode_of_a_new_file_under_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "summary.json", b"{}")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")  # what open() gives under the same umask
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == mode
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "best.yaml"
    atomic_write_bytes(path, b"old")

    class Boom(Exception):
        pass

    def half(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"ha")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]
