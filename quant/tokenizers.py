"""Mistral's real SentencePiece tokenizers, as shipped inside the `mistral-common` package."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_FILES = {
    "v1": "tokenizer.model.v1",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
}


@dataclass(frozen=True)
class SentencePieceVocab:
    """Pieces, scores and llama.cpp token types of a SentencePiece model."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int


def mistral_tokenizer_path(version: str) -> Path:
    """Path of Mistral's tokenizer file for ``version`` (``v1`` = Mixtral 8x7B, ``v3`` = 8x22B)."""
    if version not in TOKENIZER_FILES:
        raise ValueError(f"unknown tokenizer version {version!r}; choose one of {sorted(TOKENIZER_FILES)}")
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mistral-common is not installed; install it with: pip install 'mixtral-desk[quant]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / TOKENIZER_FILES[version]
    if not path.is_file():
        raise RuntimeError(
            f"mistral-common has no {TOKENIZER_FILES[version]}; upgrade it (pip install -U mistral-common)"
        )
    return path


def read_sentencepiece_vocab(path: Path) -> SentencePieceVocab:
    """Read every piece of a SentencePiece model with the token type llama.cpp expects."""
    import gguf
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    pieces, scores, types = [], [], []
    for token_id in range(processor.vocab_size()):
        pieces.append(processor.id_to_piece(token_id))
        scores.append(processor.get_score(token_id))
        if processor.is_unknown(token_id):
            kind = gguf.TokenType.UNKNOWN
        elif processor.is_control(token_id):
            kind = gguf.TokenType.CONTROL
        elif processor.is_unused(token_id):
            kind = gguf.TokenType.UNUSED
        elif processor.is_byte(token_id):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return SentencePieceVocab(
        pieces=pieces,
        scores=scores,
        types=types,
        bos_id=processor.bos_id(),
        eos_id=processor.eos_id(),
        unk_id=processor.unk_id(),
    )
