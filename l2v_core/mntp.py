"""MNTP, masked next-token prediction: the masking rule and the shifted loss.

LLM2Vec reuses the causal LM head to predict masked tokens: the hidden state at position i-1
predicts the original token at a masked position i. So a target needs a real token just before
it, position 0 is never a target, and the LM head only runs at target positions (full-vocabulary
float32 logits for every position would cost gigabytes per step on 7B models).

Labels follow the Hugging Face convention: -100 where there is no target, the original token id
where a token was chosen for prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
BLANK_MASK_TOKEN = "_"  # what the reference uses when the tokenizer has no mask token


def resolve_mask_token_id(tokenizer, policy: str = BLANK_MASK_TOKEN) -> int:
    """The id masked positions get: the tokenizer's own mask token if it has one, else `policy`.

    `policy` is a token string that must be one token of the vocabulary (the reference's "blank"
    policy is "_"; a tokenizer's `eos_token` or `pad_token` also works).
    """
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    token_id = tokenizer.convert_tokens_to_ids(policy)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", object()):
        raise ValueError(
            f"the tokenizer has no mask token and {policy!r} is not a single token of its vocabulary; "
            f"pass another mask token string that is (e.g. the tokenizer's eos_token {tokenizer.eos_token!r})"
        )
    return int(token_id)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.2,
    special_ids: list[int] | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose targets with `probability`; of them 80% become the mask token, 10% a random token,
    10% stay unchanged (BERT's rule, as in LLM2Vec).

    Never chosen: special tokens, padding, and any token whose left neighbour is padding or absent
    (the shift needs a real token at i-1, whatever the padding side).

    input_ids, attention_mask: (b, s). Returns (masked_input_ids (b, s), labels (b, s)).
    """
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"mask probability must be in (0, 1], got {probability}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    eligible = real.clone()
    eligible[:, 0] = False
    eligible[:, 1:] &= real[:, :-1]
    for sid in set(special_ids):
        eligible &= input_ids != sid

    def bernoulli(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < p

    chosen = bernoulli(probability) & eligible
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    to_mask = chosen & bernoulli(0.8)
    to_random = chosen & ~to_mask & bernoulli(0.5)  # half of the remaining 20%
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


def mntp_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """Cross-entropy of the LM head at i-1 against the original token at each target i.

    hidden: (b, s, d) last hidden states; labels: (b, s) from `mask_tokens`.
    The head runs on (n_targets, d) rows only; logits are upcast to float32 for the softmax.
    """
    shifted_labels = labels[:, 1:]  # (b, s-1): target of hidden state i is labels[i+1]
    targets = shifted_labels != IGNORE_INDEX
    if not targets.any():
        return hidden.sum() * 0.0  # keeps the graph (and DDP) happy on an empty draw
    rows = hidden[:, :-1][targets]  # (n, d)
    logits = lm_head(rows).float()  # (n, vocab)
    return F.cross_entropy(logits, shifted_labels[targets])


def split_causal_lm(causal_lm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder body, LM head) of a causal LM, a peft-wrapped one included."""
    lm = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm).__name__} has no LM head; load the model with with_lm_head=True for MNTP")
    return lm.base_model, head


class MNTPObjective(nn.Module):
    """forward(input_ids, attention_mask, labels) -> scalar MNTP loss.

    A module (not a function) so the whole computation runs through one forward call, which is
    what DistributedDataParallel needs to synchronise gradients.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.lm = causal_lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        body, head = split_causal_lm(self.lm)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mntp_loss(hidden, labels, head)
