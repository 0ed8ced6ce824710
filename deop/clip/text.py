"""Text embeddings of a vocabulary, cached per (model, templates, name).

A user edits a vocabulary one word at a time; re-encoding 150 ADE20K names times ten templates on every
edit would cost seconds on a CPU. Each name is encoded once per model and template set; a class with
synonyms averages its names' embeddings.

Prompts are a dozen tokens, CLIP's context is 77, and its text transformer is causal: the end-of-text
token, whose output is the embedding, never sees the padding after it. ``encode_text`` therefore runs
only up to the longest prompt's end, the same embeddings (to float rounding) for about an eighth of the
cost on a CPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from ..errors import OptionError
from ..presets import TEMPLATES
from ..vocabulary import Vocabulary, apply_templates
from .model import ClipModel


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the tokens up to the batch's last end-of-text token.

    Only for open_clip's standard CLIP text tower: causal mask, end-of-text pooled by argmax (the token
    with the highest id). Any other model (custom text towers, bidirectional masks, other pooling) takes
    its own ``encode_text`` over the full context.
    """
    mask = getattr(model, "attn_mask", None)
    if (type(model).encode_text is not CLIP.encode_text or getattr(model, "text_pool_type", None) != "argmax"
            or mask is None or tokens.ndim != 2):
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:length, :length])
    x = model.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


class TextEmbeddingCache:
    """Normalised per-name embeddings (each the mean over the template ensemble), bounded LRU."""

    def __init__(self, max_entries: int = 20000, batch_size: int = 256) -> None:
        self.max_entries = max_entries
        self.batch_size = batch_size
        self.names_encoded = 0  # how many names ran through the text encoder: tests and the UI read it
        self._cache: OrderedDict[tuple[str, str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def _encode(self, clip: ClipModel, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        prompts = [p for name in names for p in apply_templates(name, templates)]
        tokens = clip.tokenizer(prompts)
        # Batches of similar length, so that each is trimmed to little more than its own prompts.
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        chunks = []
        with torch.inference_mode(), clip.autocast():
            for i in range(0, len(prompts), self.batch_size):
                batch = tokens[order[i: i + self.batch_size]].to(clip.device)
                chunks.append(F.normalize(encode_text(clip.model, batch).float(), dim=-1))
        sorted_embeddings = torch.cat(chunks)
        per_prompt = sorted_embeddings[torch.argsort(order).to(sorted_embeddings.device)]  # back to prompt order
        per_prompt = per_prompt.reshape(len(names), len(templates), -1)
        return F.normalize(per_prompt.mean(dim=1), dim=-1)

    def names(self, clip: ClipModel, names: list[str], template_set: str) -> torch.Tensor:
        """[len(names), D] normalised embeddings; only names not seen before are encoded."""
        if template_set not in TEMPLATES:
            raise OptionError(f"unknown template set {template_set!r}; choose from {', '.join(TEMPLATES)}")
        templates = tuple(TEMPLATES[template_set])
        keys = [(clip.key, template_set, n) for n in names]
        with self._lock:
            missing = list(dict.fromkeys(k[2] for k in keys if k not in self._cache))
        if missing:
            encoded = self._encode(clip, missing, templates)
            with self._lock:
                self.names_encoded += len(missing)
                for name, emb in zip(missing, encoded):
                    self._cache[(clip.key, template_set, name)] = emb
        with self._lock:
            out = []
            for k in keys:
                emb = self._cache.get(k)
                if emb is None:  # evicted by a concurrent caller between the two steps
                    emb = self._encode(clip, [k[2]], templates)[0]
                else:
                    self._cache.move_to_end(k)
                out.append(emb)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return torch.stack(out)

    def missing(self, clip: ClipModel, vocabulary: Vocabulary, template_set: str) -> int:
        """How many of the vocabulary's names would be encoded (not cached yet): what a request's text
        stage will cost."""
        with self._lock:
            names = {p for spec in vocabulary.classes for p in spec.prompts}
            return sum((clip.key, template_set, n) not in self._cache for n in names)

    def vocabulary(self, clip: ClipModel, vocabulary: Vocabulary, template_set: str) -> torch.Tensor:
        """[C, D] normalised class embeddings: a class is the mean of its name and synonyms."""
        prompts = [p for spec in vocabulary.classes for p in spec.prompts]
        per_name = self.names(clip, prompts, template_set)
        out, start = [], 0
        for spec in vocabulary.classes:
            out.append(per_name[start: start + len(spec.prompts)].mean(dim=0))
            start += len(spec.prompts)
        return F.normalize(torch.stack(out), dim=-1)


def overlong_names(clip: ClipModel, names: list[str], template_set: str) -> list[str]:
    """Names whose longest templated prompt exceeds CLIP's context and so gets truncated."""
    tokenizer = clip.tokenizer
    context = getattr(tokenizer, "context_length", 77)
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return []
    longest = max(TEMPLATES[template_set], key=len)
    return [n for n in names if len(encode(longest.format(n))) + 2 > context]
