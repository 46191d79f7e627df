"""`tessera distill` on a tiny random teacher (issue 25): the loss falls, a resumed run ends
with the same weights as an uninterrupted one, the output folder loads in Tessera and in
HF transformers with identical greedy tokens, cached and live teacher targets train alike,
on-policy data scores only the teacher's continuations, and bad input gets a clear error.

The teacher: a 4-layer Llama with a 384-token byte-level BPE trained here on Tessera's
own source (so the folder has real tokenizer files and the runs take seconds).
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch

from tessera.cli import main
from tests.helpers.bpe import train_bpe

SOURCES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "../../tessera/distill/*.py")))


def _tokenizer():
    return train_bpe(SOURCES, 384)


def _model(folder: str, layers: int, vocab: int, tokenizer=None, seed: int = 0) -> str:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                   initializer_range=0.08)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return _model(str(tmp_path_factory.mktemp("teacher")), 4, 384, _tokenizer())


def distill(teacher: str, out: str, *extra: str) -> int:
    return main(["distill", "--teacher", teacher, "--data", *SOURCES, "--out", out,
                 "--seq-len", "64", "--batch-size", "4", "--micro-batch-size", "2",
                 "--eval-sequences", "2", "--lr", "3e-3", "--no-progress", *extra])


def log(out: str) -> list[dict]:
    with open(os.path.join(out, "distill_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(folder: str) -> dict:
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "model.safetensors"))


def test_loss_falls_and_the_student_loads_in_tessera_and_hf(teacher, tmp_path):
    out = str(tmp_path / "student")
    assert distill(teacher, out, "--student-layers", "2", "--steps", "12",
                   "--eval-every", "6", "--save-every", "100") == 0
    lines = log(out)
    train = [e["train"]["loss"] for e in lines if "train" in e]
    assert len(train) == 12 and sum(train[-3:]) < sum(train[:3])
    evals = [e for e in lines if "kl" in e]
    assert [e["step"] for e in evals] == [0, 6, 12] and evals[-1]["kl"] < evals[0]["kl"]
    assert json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"] == 2

    import transformers

    from tessera import LLM, SamplingParams
    prompt = [5, 40, 99, 120, 7]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    llm = LLM(out)
    got = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert got[0].outputs[0].token_ids == expected


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(teacher, tmp_path):
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    args = ("--student-layers", "2", "--steps", "6", "--eval-every", "3", "--save-every", "3")
    assert distill(teacher, whole, *args) == 0
    shutil.copytree(whole, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoint-6"))
    os.remove(os.path.join(resumed, "model.safetensors"))
    assert distill(teacher, resumed, *args, "--resume") == 0
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e["step"] for e in log(resumed)] == [e["step"] for e in log(whole)]
    # a checkpoint of other settings is refused, naming the setting
    assert distill(teacher, resumed, "--student-layers", "2", "--steps", "6", "--lr", "1e-3",
                   "--resume") == 2


def test_a_cached_teacher_trains_the_student_as_the_live_one(teacher, tmp_path):
    live, cached = str(tmp_path / "live"), str(tmp_path / "cached")
    args = ("--student-layers", "2", "--steps", "3", "--eval-every", "3", "--top-k", "16")
    assert distill(teacher, live, *args) == 0
    assert distill(teacher, cached, *args, "--teacher-cache", str(tmp_path / "cache")) == 0
    a, b = weights(live), weights(cached)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "cache" / "targets.safetensors"), "pt") as f:
        assert f.get_slice("ids").get_shape()[1:] == [64, 16]


def test_on_policy_data_scores_the_teachers_continuations_only(teacher, tmp_path):
    out = str(tmp_path / "on-policy")
    assert distill(teacher, out, "--student-layers", "2", "--steps", "2", "--eval-every", "2",
                   "--on-policy", "--prompt-tokens", "16") == 0
    from safetensors.torch import load_file
    saved = load_file(os.path.join(out, "on_policy.safetensors"))
    mask = saved["mask"]
    assert not mask[:, :15].any() and mask[:, 15].all()  # position 15 predicts token 16
    assert saved["tokens"].shape[1] == 64


def test_a_student_cut_from_all_layers_is_the_teacher(teacher):
    from tessera.distill.models import load_causal_lm, spread_layers, student_from_teacher
    assert spread_layers(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert spread_layers(4, 2) == [0, 3]
    model, _ = load_causal_lm(teacher)
    same = student_from_teacher(model, 4)
    ids = torch.tensor([[3, 50, 80, 200]])
    assert torch.equal(same(input_ids=ids).logits, model(input_ids=ids).logits)


def test_bad_input_gets_a_clear_error(teacher, tmp_path, capsys):
    other = _model(str(tmp_path / "other-vocab"), 2, 512, _tokenizer())
    assert distill(teacher, str(tmp_path / "o1"), "--student", other, "--steps", "1") == 2
    assert "vocabulary (512 tokens) is not the teacher's (384)" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["distill", "--teacher", teacher, "--student-layers", "2", "--data",
                 str(empty), "--out", str(tmp_path / "o2"), "--no-progress"])
    assert code == 2 and "not one sequence" in capsys.readouterr().err
    code = main(["distill", "--teacher", teacher, "--student-layers", "9", "--data",
                 *SOURCES, "--out", str(tmp_path / "o3"), "--no-progress"])
    assert code == 2 and "--student-layers must be between 1" in capsys.readouterr().err
    code = main(["distill", "--teacher", str(tmp_path / "nowhere"), "--student-layers", "2",
                 "--data", *SOURCES, "--out", str(tmp_path / "o4")])
    assert code == 2 and "model not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"neither": 1}\n')
    code = main(["distill", "--teacher", teacher, "--student-layers", "2", "--data",
                 str(bad), "--out", str(tmp_path / "o5")])
    assert code == 2 and "bad.jsonl:2" in capsys.readouterr().err


@pytest.mark.gpu
def test_on_a_gpu_bf16_autocast_trains_and_the_student_serves(teacher, tmp_path):
    """GPU: the student trains under bf16 autocast (float32 master weights), the loss falls,
    and the folder serves in Tessera on the GPU with HF's greedy tokens (both in float32, so
    near-ties cannot flip)."""
    out = str(tmp_path / "gpu")
    assert distill(teacher, out, "--student-layers", "2", "--steps", "12", "--eval-every", "12",
                   "--device", "cuda") == 0
    lines = log(out)
    train = [e["train"]["loss"] for e in lines if "train" in e]
    assert sum(train[-3:]) < sum(train[:3]) and lines[-1]["kl"] < lines[0]["kl"]
    import transformers

    from tessera import LLM, SamplingParams
    prompt = [5, 40, 99, 120, 7]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).cuda()
    expected = hf.generate(torch.tensor([prompt]).cuda(), max_new_tokens=6, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    llm = LLM(out, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    got = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert got[0].outputs[0].token_ids == expected
