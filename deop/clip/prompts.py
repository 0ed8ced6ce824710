"""DeOP's learned text prompt: ``[SOT][16 learned tokens][class-name tokens][.][EOT]`` through CLIP's text
transformer, the end-of-text feature, L2-normalised. One prompt per name, no template ensemble.

The paper's trained model learned the 16 context vectors on COCO-Stuff's seen classes (the official
``LearnablePromptExtractor``, ``mask_former/modeling/clip_adapter/text_prompt.py`` 56-157 in
CongHan0808/DeOP). The start, dot, end and pad vectors are CLIP's own token embeddings of those tokens,
kept beside the learned ones in the checkpoint; with random weights they are read from the model's token
table as the official code does. The text transformer is causal, so the padding after the end token
never reaches its feature: each batch runs only up to its longest prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_CONTEXT = 16  # learned tokens before the name (the official PROMPT_SHAPE (16, 0): no suffix tokens)


class LearnedPrompt(nn.Module):
    """The learned context vectors and the special-token vectors they are framed with."""

    def __init__(self, width: int = 512, n_context: int = N_CONTEXT) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.randn(n_context, width) * 0.02)
        for name in ("start", "dot", "end", "pad"):
            self.register_buffer(name, torch.zeros(1, width))

    @property
    def frame(self) -> int:
        """Tokens around a name: start, the context, dot and end."""
        return 1 + len(self.prefix) + 2

    @torch.no_grad()
    def init_signals(self, clip_model: nn.Module, tokenizer) -> None:
        """The special-token vectors from CLIP's token table: the embeddings of "X." are [SOT, X, ., EOT, pad]."""
        ids = tokenizer(["X."])[0].to(clip_model.token_embedding.weight.device)
        emb = clip_model.token_embedding(ids)
        self.start.copy_(emb[0:1])
        self.dot.copy_(emb[2:3])
        self.end.copy_(emb[3:4])
        self.pad.copy_(emb[4:5])

    def name_tokens(self, tokenizer, names: list[str], context: int = 77) -> list[torch.Tensor]:
        """Each name's BPE ids without its start and end tokens, cut to what fits beside the frame."""
        tokens = tokenizer(names)
        room = context - self.frame
        out = []
        for row in tokens:
            eot = int(row.argmax())  # the end token has the highest id
            out.append(row[1:eot][:room])
        return out

    def overlong(self, tokenizer, names: list[str], context: int = 77) -> list[str]:
        encode = getattr(tokenizer, "encode", None)
        if encode is None:
            return []
        return [n for n in names if len(encode(n)) + self.frame > context]

    def embeddings(self, clip_model: nn.Module, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' input embeddings [N, L, W] (padded with the pad vector to the longest) and each one's
        end-token index."""
        table = clip_model.token_embedding
        dtype = self.prefix.dtype
        rows, ends = [], []
        for name in ids:
            words = table(name.to(table.weight.device)).to(dtype)
            rows.append(torch.cat([self.start, self.prefix, words, self.dot, self.end]))
            ends.append(len(rows[-1]) - 1)
        length = max(ends) + 1
        x = torch.stack([torch.cat([r, self.pad.expand(length - len(r), -1)]) for r in rows])
        return x, torch.tensor(ends, device=x.device)

    def forward(self, clip_model: nn.Module, tokenizer, names: list[str]) -> torch.Tensor:
        """[len(names), D] normalised text features of `names` (open_clip's CLIP text tower)."""
        if not names:
            return torch.zeros((0, clip_model.text_projection.shape[-1]), device=self.prefix.device)
        x, ends = self.embeddings(clip_model, self.name_tokens(tokenizer, names))
        length = x.shape[1]
        x = x + clip_model.positional_embedding[:length].to(x.dtype)
        x = clip_model.transformer(x, attn_mask=clip_model.attn_mask[:length, :length])
        x = clip_model.ln_final(x)[torch.arange(len(x), device=x.device), ends]
        proj = clip_model.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)
