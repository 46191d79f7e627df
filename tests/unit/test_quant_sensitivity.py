"""Per-layer quantization sensitivity (quant/sensitivity.py) and the in-place conversion
under it (quant/convert.py), on a tiny random Llama checkpoint on the CPU.

- A layer quantized in place holds exactly the parameters, and gives exactly the prompt
  logprobs, of the same model built with that layer quantized at load (a policy file);
  restoring it gives the dense model's logprobs back.
- `measure` ranks every linear layer, keeps the most sensitive, and its policy file loads
  with `quantization_policy=` into a model whose kept layers are dense and the rest
  quantized.
- `tessera quant-sensitivity` end to end (a small byte-level BPE tokenizer is written
  beside the checkpoint), and its errors: no data file, data too short, no model.
"""
from __future__ import annotations

import pytest
import torch

from tessera import LLM, SamplingParams
from tessera.quant.convert import is_dense, quantize_layer, quantized_method, restore_layer
from tessera.quant.sensitivity import (LayerDelta, choose_kept, engine_parts, linear_layers,
                                       measure, policy_text)
from tessera.quant_policy import load_policy_file, policy_file_text
from tests.conftest import make_tiny_checkpoint

PROMPT = [(7 * i + 3) % 384 for i in range(48)]  # token ids of the tiny vocab
TOP = 8  # prompt logprobs compared: the prompt token's and the top 8 per position


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny-sensitivity"))
    make_tiny_checkpoint("llama", folder)
    return folder


def _llm(folder: str, **kw) -> LLM:
    return LLM(folder, skip_tokenizer_init=True, device="cpu", num_blocks=32,
               distributed_executor_backend="uni", **kw)


@pytest.fixture(scope="module")
def dense(tiny):
    return _llm(tiny, quantization="none", enable_prefix_caching=False)


def _prompt_logprobs(llm: LLM) -> list[dict[int, float]]:
    out = llm.generate({"prompt_token_ids": PROMPT},
                       SamplingParams(max_tokens=1, prompt_logprobs=TOP))[0]
    return [{t: lp.logprob for t, lp in entry.items()} for entry in out.prompt_logprobs[1:]]


def _layer(llm: LLM, name: str):
    model, _ = engine_parts(llm)
    return next(m for m in linear_layers(model) if m.prefix == name)


@pytest.mark.parametrize("kind,name", [("int8", "model.layers.0.self_attn.qkv_proj"),
                                       ("fp8", "model.layers.1.mlp.down_proj"),
                                       ("int4", "model.layers.2.mlp.gate_up_proj")])
def test_conversion_in_place_equals_quantizing_at_load(dense, tiny, tmp_path, kind, name):
    policy = tmp_path / "one.yaml"
    policy.write_text(policy_file_text("none", {name: kind}, 32))
    loaded = _llm(tiny, quantization_policy=str(policy))
    want_layer = _layer(loaded, name)
    assert want_layer.method.precision(want_layer) == kind
    before = _prompt_logprobs(dense)

    _, context = engine_parts(dense)
    layer = _layer(dense, name)
    state = quantize_layer(layer, quantized_method(context, kind, 32))
    try:
        assert not is_dense(layer) and layer.method.precision(layer) == kind
        for pname, want in want_layer.named_parameters():
            got = dict(layer.named_parameters())[pname]
            assert got.dtype == want.dtype and got.shape == want.shape, pname
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), pname
        assert _prompt_logprobs(dense) == _prompt_logprobs(loaded)
        assert _prompt_logprobs(dense) != before  # quantizing did change something
    finally:
        restore_layer(layer, state)
    assert is_dense(layer) and layer.weight.dtype == torch.float32
    assert _prompt_logprobs(dense) == before


def test_only_dense_layers_convert(dense):
    _, context = engine_parts(dense)
    layer = _layer(dense, "model.layers.0.self_attn.o_proj")
    method = quantized_method(context, "int8")
    state = quantize_layer(layer, method)
    try:
        with pytest.raises(ValueError, match="not a dense linear layer"):
            quantize_layer(layer, method)
    finally:
        restore_layer(layer, state)


def test_choose_kept_by_count_and_by_budget():
    deltas = [LayerDelta("a", 0, 3.0), LayerDelta("b", 0, -0.5), LayerDelta("c", 0, 0.4),
              LayerDelta("d", 0, 1.0)]
    assert choose_kept(deltas, 2, None) == (["a", "d"], pytest.approx(0.4))
    assert choose_kept(deltas, None, 1.5) == (["a"], pytest.approx(1.4))
    assert choose_kept(deltas, None, 0.0) == (["a", "d", "c"], 0.0)  # b's negative is 0
    assert choose_kept(deltas, None, 10.0) == ([], pytest.approx(4.4))


def test_measure_ranks_layers_and_writes_a_policy_that_loads(dense, tiny, tmp_path):
    before = _prompt_logprobs(dense)
    windows = [PROMPT[:24], PROMPT[24:]]
    result = measure(dense, windows, "int4", keep=3)
    names = [m.prefix for m in linear_layers(engine_parts(dense)[0])]
    assert len(names) == 12 and sorted(d.name for d in result.deltas) == sorted(names)
    increases = [d.increase_pct for d in result.deltas]
    assert increases == sorted(increases, reverse=True)
    assert result.kept == [d.name for d in result.deltas[:3]]
    assert result.group_size == 32  # the input sizes are 64 and 160 (down_proj)
    assert _prompt_logprobs(dense) == before  # every layer restored

    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(result, "random tokens"))
    data = load_policy_file(str(path))
    assert data["quantization"] == "int4" and data["group_size"] == result.group_size
    assert data["layers"] == [(name, "none") for name in result.kept]
    llm = _llm(tiny, quantization_policy=str(path))
    for layer in linear_layers(engine_parts(llm)[0]):
        want = "float32" if layer.prefix in result.kept else "int4"
        assert layer.method.precision(layer) == want, layer.prefix
    assert abs(result.policy_ppl - result.baseline.ppl) < 0.5 * result.baseline.ppl


def test_the_lm_head_is_a_candidate_when_asked(dense, tiny, tmp_path):
    """measure(lm_head=True) ranks the head with the layers (quantized in place and
    restored after); not kept, the policy names it, so the model it loads holds an int8
    head; kept, the policy keeps it 16-bit by name."""
    before = _prompt_logprobs(dense)
    windows = [PROMPT[:24], PROMPT[24:]]
    result = measure(dense, windows, "int8", keep=0, lm_head=True)
    assert len(result.deltas) == 13 and "lm_head" in {d.name for d in result.deltas}
    assert _prompt_logprobs(dense) == before
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(result, "random tokens"))
    assert load_policy_file(str(path))["layers"] == [("lm_head", "int8")]
    llm = _llm(tiny, quantization_policy=str(path))
    model = engine_parts(llm)[0]
    assert model.lm_head.method.precision(model.lm_head) == "int8"
    assert all(layer.method.precision(layer) == "int8" for layer in linear_layers(model))
    kept = measure(dense, windows, "int8", keep=13, lm_head=True)
    assert ("lm_head", "none") in _policy_layers(policy_text(kept), tmp_path)


def _policy_layers(text: str, folder) -> list:
    path = folder / "kept.yaml"
    path.write_text(text)
    return load_policy_file(str(path))["layers"]


def _with_tokenizer(folder: str) -> None:
    """A byte-level BPE tokenizer of at most the tiny vocabulary, saved beside the weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


TEXT = ("The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n"
        "Pack my box with five dozen liquor jugs. ") * 12


def test_cli_writes_a_policy_and_says_what_is_wrong(tiny, tmp_path, capsys):
    from tessera.cli import main
    _with_tokenizer(tiny)
    data, out = tmp_path / "data.txt", tmp_path / "p.yaml"
    data.write_text(TEXT)
    common = ["--tokens", "64", "--window", "32", "--device", "cpu", "--num-blocks", "32"]
    rc = main(["quant-sensitivity", tiny, "--data", str(data), "--method", "int8", "--keep",
               "2", "--out", str(out), *common])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "model.layers.0.self_attn.qkv_proj" in printed and "keep 16-bit" in printed
    policy = load_policy_file(str(out))
    assert policy["quantization"] == "int8" and len(policy["layers"]) == 2

    rc = main(["quant-sensitivity", tiny, "--data", str(tmp_path / "none.txt"), "--out",
               str(out), *common])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("too short")
    rc = main(["quant-sensitivity", tiny, "--data", str(short), "--out", str(out), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "give a longer file or ask for fewer tokens" in err, err
    rc = main(["quant-sensitivity", str(tmp_path / "no-model"), "--data", str(data), "--out",
               str(out), *common])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot load" in err, err


def test_fp8a8_measures_fp8_as_w8a8_computes(tiny, tmp_path, capsys):
    """--method fp8a8: the layers' costs with their inputs quantized per token as well
    (quant/quantized.py's EMULATE_W8A8, reset afterwards); the policy written is fp8's."""
    import yaml

    from tessera.cli import main
    from tessera.quant import quantized
    _with_tokenizer(tiny)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    common = ["--data", str(data), "--keep", "0", "--tokens", "64", "--window", "32",
              "--device", "cpu", "--num-blocks", "32"]
    measured = {}
    for method in ("fp8", "fp8a8"):
        out = tmp_path / f"{method}.yaml"
        rc = main(["quant-sensitivity", tiny, "--method", method, "--out", str(out), *common])
        assert rc == 0, capsys.readouterr().err
        assert load_policy_file(str(out))["quantization"] == "fp8"
        measured[method] = yaml.safe_load(out.read_text())["measured"]
        assert quantized.EMULATE_W8A8 is None
    assert (measured["fp8a8"]["baseline_perplexity"]
            == measured["fp8"]["baseline_perplexity"])  # the 16-bit model is not emulated
    assert measured["fp8a8"]["increase_pct"] != measured["fp8"]["increase_pct"]
