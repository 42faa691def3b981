"""The class text of each image (docs/method.md section 1b): its class names as the words given to the text
encoder, their token ids and the label value of every token, and the embeddings the OVAM keys come from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..vocab import VOC_CLASSES, class_index, prompt_word

log = logging.getLogger(__name__)


@dataclass
class ClassText:
    """The tokenized class text of one image.

    Attributes:
        text: the words given to the text encoder ("cat pot plant").
        ids: token ids, SoT first, EoT last (no padding).
        tokens: the token strings.
        token_classes: label value per token (0 for SoT, None for EoT).
    """

    text: str
    ids: list[int]
    tokens: list[str]
    token_classes: list[int | None]


def class_text(tokenizer, names: Sequence[str], class_names: Sequence[str] = VOC_CLASSES,
               renames: dict[str, str] | None = None) -> ClassText:
    """Tokenize the class names of one image into ``[SoT, tokens of name 1, tokens of name 2, ..., EoT]``.

    Every token of a name (a renamed "pot plant", a word the BPE splits) maps to that name's label value in
    ``class_names``; a name given twice maps to the same value. The ids equal the tokenizer's ids for the
    joined text (CLIP's BPE never merges across words). Truncated to the tokenizer's ``model_max_length``.
    """
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, classes = [sot], [0]
    words = []
    for name in names:
        label = class_index(name, class_names)
        word = prompt_word(name, renames)
        words.append(word)
        piece = tokenizer(word, add_special_tokens=False)["input_ids"]
        ids += piece
        classes += [label] * len(piece)
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if limit < 10 ** 6 and len(ids) + 1 > limit:
        log.warning("class text %r has %d tokens; truncated to %d", " ".join(words), len(ids) + 1, limit)
        ids, classes = ids[:limit - 1], classes[:limit - 1]
    ids.append(eot)
    classes.append(None)
    return ClassText(" ".join(words), ids, tokenizer.convert_ids_to_tokens(ids), classes)


@torch.no_grad()
def encode_class_texts(pipe, texts: Sequence[ClassText]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-text embeddings as the pipeline embeds its prompt: ((B, T_max, D), valid (B, T_max) bool).

    SD 1.x / 2.x: the text encoder's last hidden state. SDXL: the penultimate hidden state of each of its
    two text encoders, concatenated on the feature axis (``StableDiffusionXLPipeline.encode_prompt``).
    Texts are right-padded with EoT; CLIP's causal mask makes the real tokens' embeddings independent of
    the padding, and ``valid`` marks the real tokens.
    """
    sdxl = hasattr(pipe, "text_encoder_2")
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    t_max = max(len(t.ids) for t in texts)
    pad = texts[0].ids[-1]
    ids = torch.full((len(texts), t_max), pad, dtype=torch.long)
    valid = torch.zeros((len(texts), t_max), dtype=torch.bool)
    for i, t in enumerate(texts):
        ids[i, :len(t.ids)] = torch.tensor(t.ids)
        valid[i, :len(t.ids)] = True
    embs = []
    for enc in encoders:
        device = next(enc.parameters()).device
        mask = valid.long().to(device) if getattr(enc.config, "use_attention_mask", False) else None
        out = enc(ids.to(device), attention_mask=mask, output_hidden_states=sdxl)
        embs.append(out.hidden_states[-2] if sdxl else out[0])
    emb = torch.cat([e.to(embs[0].device) for e in embs], dim=-1)
    return emb, valid.to(emb.device)
