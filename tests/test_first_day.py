"""A user's first day (issue 41): every folder a training run writes loads with ``tips.load``; ``tips.create_model``
matches the tokenizer it is given and returns eval mode; the encoders keep no autograd graph unless asked;
``tips.save_pretrained`` writes a model or a head."""

from __future__ import annotations

import pytest
import torch

import tips
from tips.models.dpt import DenseHead, DPTConfig
from tips.train.checkpointing import step_dir_name

SMALL = {"vision.depth": 1, "text.depth": 1}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """The layout the trainer writes: ``final/`` and ``checkpoints/step-N/{export/, trainer.json}``; each folder
    holds a different model so the test sees which one was read."""
    run = tmp_path_factory.mktemp("runs") / "b14"
    final = tips.create_model("tiny", **SMALL)
    step = tips.create_model("tiny", **SMALL)
    tips.save(final, run / "final")
    step_folder = run / "checkpoints" / step_dir_name(2)
    tips.save(step, step_folder / "export")
    (step_folder / "trainer.json").write_text("{}")
    return run, final, step


def _same(a: tips.TIPS, b: tips.TIPS) -> bool:
    return torch.equal(a.vision.pos_embed, b.vision.pos_embed)


def test_a_run_folder_loads_its_final_model(run_folder):
    run, final, step = run_folder
    for source in (run, run / "final", str(run)):
        model = tips.load(source)
        assert _same(model, final) and not _same(model, step)
        assert not model.training


def test_a_step_folder_loads_its_export(run_folder):
    run, final, step = run_folder
    folder = run / "checkpoints" / step_dir_name(2)
    for source in (folder, folder / "export"):
        assert _same(tips.load(source), step)


def test_the_old_export_path_names_final(run_folder):
    run, _, _ = run_folder
    with pytest.raises(FileNotFoundError, match=r"final"):
        tips.load(run / "export")


def test_a_run_stopped_before_final_names_its_latest_step(tmp_path):
    run = tmp_path / "stopped"
    for n in (1, 3):
        tips.save(tips.create_model("tiny", **SMALL), run / "checkpoints" / step_dir_name(n) / "export")
    with pytest.raises(FileNotFoundError, match=step_dir_name(3)):
        tips.load(run)


def test_create_model_sizes_the_text_vocabulary_to_its_tokenizer():
    model = tips.create_model("s14", tokenizer="bpe", **SMALL)
    assert model.cfg.text.vocab_size == model.tokenizer.vocab_size == 49408
    ids, _ = model.tokenize(["Ngorongoro"])
    assert ids.max() >= 32000  # a rare word: beyond the 32,000-word SentencePiece vocabulary s14 defaults to
    assert model.encode_text(["Ngorongoro"]).shape == (1, model.cfg.text.width)
    kept = tips.create_model("s14", tokenizer="bpe", **SMALL, **{"text.vocab_size": 50000})
    assert kept.cfg.text.vocab_size == 50000  # an explicit size wins


def test_create_model_returns_eval_mode_like_load():
    assert not tips.create_model("tiny", **SMALL).training


def test_encoders_keep_no_graph_in_eval_mode_and_record_when_asked():
    model = tips.create_model("tiny", **SMALL)
    x = torch.rand(1, 3, 28, 28)
    out = model.encode_image(x)
    assert out.patch_tokens.is_inference() and out.patch_tokens.grad_fn is None
    assert model.encode_text(["a cat"]).is_inference()
    asked = model.encode_image(x, grad=True).cls_alt
    asked.sum().backward()
    assert model.vision.patch_embed.proj.weight.grad is not None
    assert model.encode_text(["a cat"], grad=True).requires_grad
    model.train()
    assert model.encode_image(x).cls_alt.requires_grad  # train mode records, as training needs
    assert not model.encode_image(x, grad=False).cls_alt.requires_grad
    with torch.no_grad():  # the caller's choice is kept: plain tensors, usable later as inputs to a trained head
        assert not model.eval().encode_image(x).cls_alt.is_inference()


def test_save_pretrained_writes_a_model_and_a_head(tmp_path):
    model = tips.create_model("tiny", **SMALL)
    head = DenseHead(DPTConfig(task="depth", width=model.width, out_channels=8, layers=(0, 0, 0, 0)))
    tips.save_pretrained(model, tmp_path / "model")
    tips.save_pretrained(head, tmp_path / "head")
    assert _same(tips.load(tmp_path / "model"), model)
    again = tips.load_head(tmp_path / "head")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), head.state_dict().values()))
    with pytest.raises(TypeError, match="tips.save"):
        tips.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")


# ----------------------------------------------------------------------------- official weights offline
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def test_download_lists_every_file_of_a_name(empty_cache, capsys):
    from tips.cli.download import main
    from tips.formats import hub

    assert main(["tips-v2-b14", "--print-urls"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    named = hub.resolve_name("tips-v2-b14")
    assert [line.split("\t")[0] for line in lines] == ["vision", "text", "tokenizer"]
    for line, url in zip(lines, (named.vision_url, named.text_url, named.tokenizer_url)):
        assert url in line and str(empty_cache) in line and "sha256=unknown" in line
    vision, text = (int(float(line.split("\t")[1].strip("~").split()[0].replace(",", ""))) for line in lines[:2])
    assert 200 < vision < 500 and text > vision  # B/14: 86M vision parameters in float32; the text tower has the vocabulary
    digest = hub.cache_path(named.vision_url).with_name("tips_v2_oss_b14_vision.npz.sha256")
    digest.parent.mkdir(parents=True)
    digest.write_text("ab" * 32 + "\n")
    assert hub.files_of("tips-v2-b14")[0].sha256 == "ab" * 32  # a digest recorded by a download is shown


def test_download_offline_and_unknown_names_fail_in_one_line(empty_cache, capsys):
    from tips.cli.download import main

    assert main(["tips-v2-b14-depth"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline" in err[0] and "--print-urls" in err[0]
    with pytest.raises(SystemExit) as stop:
        main(["tips-v9-b14"])
    assert stop.value.code == 2 and "tips-v2-b14" in capsys.readouterr().err


def test_offline_load_names_every_missing_file_at_once(empty_cache):
    from tips.formats import hub

    with pytest.raises(FileNotFoundError) as e:
        tips.load("tips-v2-l14")
    message = str(e.value)
    assert "\n" not in message and "3 file(s)" in message and "tips-download tips-v2-l14" in message
    assert all(f.url in message and str(f.path) in message for f in hub.files_of("tips-v2-l14"))


@pytest.mark.parametrize("content, why", [(b"", "is empty"), (b"PK\x03\x04 cut short", "truncated")])
def test_a_broken_cache_file_is_named_with_how_to_fetch_it_again(empty_cache, content, why):
    from tips.formats import hub

    for f in hub.files_of("tips-v2-b14"):
        f.path.parent.mkdir(parents=True, exist_ok=True)
        f.path.write_bytes(content)
    with pytest.raises(RuntimeError) as e:
        tips.load("tips-v2-b14")
    assert str(hub.files_of("tips-v2-b14")[0].path) in str(e.value) and why in str(e.value)
    assert "tips-download tips-v2-b14" in str(e.value)
