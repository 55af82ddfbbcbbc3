import pytest

from tips.io.atomic import atomic_file, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"shards": 3})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write(b'{"shards": ')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n "shards": 3\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with atomic_file(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_replace_dir_swaps_a_complete_folder_in_and_leaves_no_old_copy(tmp_path):
    from tips.io.atomic import replace_dir

    final, new = tmp_path / "step-00000100", tmp_path / ".step-00000100.tmp"
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"old")
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"new")
    replace_dir(new, final)
    assert (final / "model.safetensors").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000100"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from tips.io.atomic import atomic_path

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "ids.json", ["a"])
        with atomic_path(tmp_path / "features.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other tool would create
    finally:
        os.umask(old)
    for name in ("ids.json", "features.safetensors", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
