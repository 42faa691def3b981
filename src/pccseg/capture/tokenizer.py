"""The real CLIP BPE tokenizer, offline.

Stable Diffusion's tokenizer is OpenAI CLIP's byte-level BPE (49,408 tokens). Its vocabulary ships with
``open_clip_torch`` as ``bpe_simple_vocab_16e6.txt.gz``; :func:`clip_tokenizer` derives ``vocab.json`` and
``merges.txt`` from it exactly as CLIP's ``SimpleTokenizer`` builds its encoder (the 256 byte characters,
their ``</w>`` variants, then the first 48,894 merges, then ``<|startoftext|>`` = 49406 and
``<|endoftext|>`` = 49407), caches them (written atomically) and builds a transformers ``CLIPTokenizer``.
No network is touched.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..io import atomic_path

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # merges kept by CLIP: lines[1 : 49152 - 256 - 2 + 1]


def bpe_path() -> Path:
    """The gzipped BPE merge list that open_clip ships."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")  # locate without importing (open_clip imports slowly)
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover
        raise RuntimeError("open_clip_torch is not installed; it ships CLIP's BPE vocabulary")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def derive_vocab(bpe_file: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merge lines "a b") derived from CLIP's gzipped BPE file."""
    bpe_file = Path(bpe_file) if bpe_file is not None else bpe_path()
    lines = gzip.open(bpe_file).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [SOT, EOT]
    if len(vocab) != VOCAB_SIZE:  # pragma: no cover - a corrupt BPE file
        raise RuntimeError(f"{bpe_file}: derived {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(vocab)}, merges


def cache_dir() -> Path:
    """Where the derived files live: ``$PCCSEG_CACHE`` or ``$XDG_CACHE_HOME/pccseg`` or the temp dir."""
    root = os.environ.get("PCCSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pccseg")
    return Path(root)


def tokenizer_files(directory: str | Path | None = None) -> Path:
    """A folder holding ``vocab.json`` and ``merges.txt`` for CLIP (derived once, then reused).

    The folder name carries a hash of the BPE file, so a different open_clip version never reads stale
    files. Each file is written atomically; concurrent processes at worst derive twice.
    """
    src = bpe_path()
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    if directory is None:
        base = cache_dir()
        try:
            base.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=base, delete=True)
            probe.close()
        except OSError:
            base = Path(tempfile.gettempdir()) / "pccseg-cache"
        directory = base / f"clip-tokenizer-{digest}"
    directory = Path(directory)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        vocab, merges = derive_vocab(src)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(vocab_file) as tmp:
            tmp.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        with atomic_path(merges_file) as tmp:
            tmp.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def clip_tokenizer(*, model_max_length: int = 77, pad_token: str = EOT):
    """transformers' ``CLIPTokenizer`` for OpenAI CLIP's BPE, built offline.

    Args:
        model_max_length: the text encoder's context length (77 for Stable Diffusion).
        pad_token: ``<|endoftext|>`` (SD 1.x) by default; SD 2.x pipelines pad with ``"!"``.
    """
    from transformers import CLIPTokenizer

    folder = tokenizer_files()
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length, pad_token=pad_token)
