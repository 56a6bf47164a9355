import os
import stat

import pytest

from monai_nasscam.fileio import atomic_path, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_renames_on_success_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "map.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.nii.gz"]


def test_atomic_path_keeps_the_old_file_and_leaves_no_temporary_on_error(tmp_path):
    target = tmp_path / "overlay.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", '{"x": 1}\n')
    assert path.read_text() == '{"x": 1}\n' and len(list(tmp_path.iterdir())) == 1


def test_atomic_text_file_appears_only_on_commit(tmp_path):
    from monai_nasscam.fileio import AtomicTextFile

    out = AtomicTextFile(tmp_path / "n.csv")
    out.file.write("a,b\n")
    assert not (tmp_path / "n.csv").exists()
    assert out.commit().read_text() == "a,b\n" and len(list(tmp_path.iterdir())) == 1
    aborted = AtomicTextFile(tmp_path / "m.geojson")
    aborted.file.write("{")
    aborted.discard()
    aborted.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["n.csv"]
