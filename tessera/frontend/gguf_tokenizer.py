"""A GGUF file's tokenizer for a process without torch: exported once, in a subprocess.

transformers builds a GGUF file's tokenizer through its GGUF reader, which imports torch.
`exported_tokenizer_dir(path)` runs `python -m tessera.frontend.gguf_tokenizer FILE DIR`
(that process may import torch), which builds it there (models/gguf_meta.py:
`load_gguf_tokenizer`, BOS-adding as the file says), saves it as a Hugging Face tokenizer
folder, loads the folder back and checks that it encodes, decodes and renders the chat
template exactly as the original; the folder is cached under
$XDG_CACHE_HOME/tessera/tokenizers (or ~/.cache/...), keyed by the file's path, size and
modification time, transformers' version and EXPORT_FORMAT, so later starts skip the
subprocess. The API
process then loads the folder with `AutoTokenizer`, no torch needed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile

EXPORT_FORMAT = 1  # raise when the export changes: older cached folders are then not used
logger = logging.getLogger(__name__)
_PROBES = ("Hello world, ünïcode ☃ .", "  two spaces\nand a line", "<|im_end|> text 12345")
_MESSAGES = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "What is the capital of France?"}]


def cache_root() -> str:
    """$XDG_CACHE_HOME/tessera/tokenizers (~/.cache/... by default), or a folder in the
    temporary directory where that cannot be written."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "tessera", "tokenizers")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        root = os.path.join(tempfile.gettempdir(), "tessera-tokenizers")
        os.makedirs(root, exist_ok=True)
    return root


def _key(path: str) -> str:
    stat = os.stat(path)
    text = (f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}:"
            f"{importlib.metadata.version('transformers')}:{EXPORT_FORMAT}")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def exported_tokenizer_dir(path: str, timeout_s: float = 600.0) -> str:
    """The folder of the file's tokenizer, exported now unless cached."""
    root = cache_root()
    folder = os.path.join(root, _key(path))
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return folder
    logger.info("building the tokenizer of %s once, in a subprocess (it is cached in %s)",
                os.path.basename(path), root)
    scratch = tempfile.mkdtemp(prefix="export-", dir=root)
    try:
        proc = subprocess.run([sys.executable, "-m", "tessera.frontend.gguf_tokenizer", path,
                               scratch], capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"could not export the tokenizer of {path}: "
                               f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        try:
            os.rename(scratch, folder)  # atomic: a concurrent start finds a whole folder
        except OSError:  # another start exported it first
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _same(a, b) -> None:
    for text in _PROBES:
        for special in (True, False):
            ids = a.encode(text, add_special_tokens=special)
            if ids != b.encode(text, add_special_tokens=special):
                raise RuntimeError(f"the exported tokenizer encodes {text!r} differently")
            for skip in (True, False):
                if a.decode(ids, skip_special_tokens=skip) != b.decode(ids, skip_special_tokens=skip):
                    raise RuntimeError(f"the exported tokenizer decodes {ids} differently")
    if a.chat_template:
        render = dict(tokenize=False, add_generation_prompt=True)
        if a.apply_chat_template(_MESSAGES, **render) != b.apply_chat_template(_MESSAGES, **render):
            raise RuntimeError("the exported tokenizer renders the chat template differently")
    if (a.bos_token_id, a.eos_token_id) != (b.bos_token_id, b.eos_token_id):
        raise RuntimeError("the exported tokenizer has other BOS / EOS ids")


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    from tessera.models.gguf_meta import load_gguf_tokenizer
    path, out = argv
    tokenizer = load_gguf_tokenizer(path)
    tokenizer.save_pretrained(out)
    _same(tokenizer, AutoTokenizer.from_pretrained(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
