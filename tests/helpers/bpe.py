"""A byte-level BPE tokenizer trained on the spot: `train_bpe(files, vocab_size)` -> a
transformers PreTrainedTokenizerFast with <pad>, <s> (bos) and </s> (eos). Used where a
tokenizer of a chosen size is needed without a model hub (the distillation tests, and
benchmarks/distill_speed.py)."""
from __future__ import annotations


def train_bpe(files: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(files, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
