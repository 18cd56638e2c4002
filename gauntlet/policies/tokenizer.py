"""A built-in, deterministic byte-level tokenizer for instructions.

Byte-level because it needs no vocabulary file (nothing is downloaded, nothing can go missing on a
cluster node), it is lossless for any UTF-8 prompt, and robot instructions are short enough that
one token per byte costs little. NumPy only, so servers can tokenise without importing JAX.

Ids: 0 = PAD, 1 = BOS, 2 = EOS, 3..258 = the bytes 0..255.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET

_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
    """Canonical form of an instruction.

    Clients differ in casing, underscores ("pick_up_cube" task names used as prompts) and stray
    whitespace; all of those should mean the same instruction to the model.
    """
    text = unicodedata.normalize("NFC", text).replace("_", " ").lower()
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class ByteTokenizer:
    """Prompt -> fixed-length ids + mask; truncates from the right (keeps the instruction start)."""

    max_len: int  # tokens per prompt including BOS/EOS; longer prompts are truncated

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ValueError(f"max_len: must be >= 2 (room for BOS and EOS), got {self.max_len}")

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One prompt -> (ids (L,) int32, mask (L,) bool) with L = max_len."""
        body = np.frombuffer(normalize_prompt(text).encode("utf-8"), dtype=np.uint8).astype(np.int32)
        body = body[: self.max_len - 2] + BYTE_OFFSET
        ids = np.full((self.max_len,), PAD_ID, dtype=np.int32)
        n = body.shape[0] + 2
        ids[0] = BOS_ID
        ids[1 : n - 1] = body
        ids[n - 1] = EOS_ID
        mask = np.zeros((self.max_len,), dtype=bool)
        mask[:n] = True
        return ids, mask

    def encode_batch(self, prompts: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) prompts -> (ids (B, L) int32, mask (B, L) bool)."""
        items = [str(p) for p in np.asarray(prompts).reshape(-1)]
        ids = np.zeros((len(items), self.max_len), dtype=np.int32)
        mask = np.zeros((len(items), self.max_len), dtype=bool)
        for i, text in enumerate(items):
            ids[i], mask[i] = self.encode(text)
        return ids, mask

    def decode(self, ids: np.ndarray) -> str:
        """Inverse of `encode` up to normalisation and truncation (for debugging)."""
        arr = np.asarray(ids).reshape(-1)
        body = [int(i) - BYTE_OFFSET for i in arr if int(i) >= BYTE_OFFSET]
        return bytes(body).decode("utf-8", errors="replace")
