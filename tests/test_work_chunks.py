"""tips.io.work_chunks: chunks shared i mod n, done only while every output keeps its recorded bytes."""

import json

import pytest

from tips.io.work_chunks import chunks_for_process, is_done, process_place, write_marker


def test_the_place_comes_from_flags_else_torchrun_env_else_one_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_place() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_place() == (1, 2)
    assert process_place(3, 4) == (3, 4)
    with pytest.raises(ValueError, match="go together"):
        process_place(3, None)
    with pytest.raises(ValueError, match="outside 0..3"):
        process_place(4, 4)


def test_every_chunk_goes_to_exactly_one_process_whatever_the_world_size():
    chunks = list(range(11))
    for world in (1, 2, 3, 8, 16):
        parts = [chunks_for_process(chunks, r, world) for r in range(world)]
        assert sorted(c for part in parts for c in part) == chunks
        assert all(c % world == r for r, part in enumerate(parts) for c in part)


def test_a_chunk_is_done_only_while_its_settings_input_and_output_bytes_match(tmp_path):
    out = tmp_path / "img_emb" / "img_emb_3.npy"
    out.parent.mkdir()
    out.write_bytes(b"12345678")
    marker = tmp_path / "done" / "chunk_3.json"
    marker.parent.mkdir()
    write_marker(marker, {"model": "a"}, {"chunk": 3}, [out], rows=2)
    assert json.loads(marker.read_text())["outputs"][0]["name"] == "../img_emb/img_emb_3.npy"
    assert not is_done(marker, {"model": "a"}, {"chunk": 3})  # names leaving the marker's folder are not trusted
    marker = tmp_path / "chunk_3.done.json"
    write_marker(marker, {"model": "a"}, {"chunk": 3}, [out], rows=2)
    assert is_done(marker, {"model": "a"}, {"chunk": 3})
    assert not is_done(marker, {"model": "b"}, {"chunk": 3})
    assert not is_done(marker, {"model": "a"}, {"chunk": 4})
    out.write_bytes(b"12345679")  # same size, other bytes
    assert not is_done(marker, {"model": "a"}, {"chunk": 3})
    out.unlink()
    assert not is_done(marker, {"model": "a"}, {"chunk": 3})
    marker.write_text("{half a json")
    assert not is_done(marker, {"model": "a"}, {"chunk": 3})
