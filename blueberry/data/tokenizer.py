"""Tokenizers: byte-level BPE trained on the train split, or a pretrained Hugging Face one.

Both end up as a `tokenizers.Tokenizer` plus an EOS token; documents are encoded without
special tokens and the token cache appends EOS after each one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from blueberry.config import bpe_size
from blueberry.data.hub import require_hub
from blueberry.errors import UserError

EOS = "<|endoftext|>"
_CONFIG = "tokenizer_config.json"


class TextTokenizer:
    """A `tokenizers.Tokenizer` with a known EOS token."""

    def __init__(self, tokenizer: Tokenizer, eos_token: str):
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"EOS token {eos_token!r} is not in the vocabulary")
        # Pretrained tokenizer.json files can carry truncation/padding settings that would
        # silently cut documents; the token cache wants every token.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_id = eos_id

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids of pretrained vocabularies can have gaps)."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # no offsets
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        """Write folder `path` with tokenizer.json and tokenizer_config.json (naming the EOS).

        The pair is also what `transformers.AutoTokenizer.from_pretrained(path)` reads.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": self.eos_token}
        (path / _CONFIG).write_text(json.dumps(config, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        config = json.loads((path / _CONFIG).read_text())
        return cls(Tokenizer.from_file(str(path / "tokenizer.json")), config["eos_token"])


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Byte-level BPE with `vocab_size` tokens at most (fewer when the corpus runs out of merges)."""
    if vocab_size < 257 + 1:
        raise UserError(f"tokenizer=bpe:{vocab_size}: needs at least 258 tokens (256 bytes, EOS, "
                        f"one merge); e.g. bpe:2048")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return TextTokenizer(tok, EOS)


def pretrained(name: str) -> TextTokenizer:
    """The fast tokenizer of a Hugging Face model: from the local cache, else from the hub."""
    from transformers import AutoTokenizer  # slow import; only this path needs it

    try:
        hf = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        if Path(name).expanduser().exists():
            raise UserError(f"tokenizer={name}: folder holds no Hugging Face tokenizer "
                            f"(tokenizer.json / tokenizer_config.json)") from None
        require_hub(f"tokenizer={name}", hint="use bpe:N or a tokenizer already in the local "
                                             "Hugging Face cache")
        try:
            hf = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"tokenizer={name}: cannot load ({reason[:200]}); use bpe:N or a "
                            f"Hugging Face tokenizer name") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise UserError(f"tokenizer={name}: has no fast (tokenizers) version; use bpe:N or another name")
    tok = Tokenizer.from_str(backend.to_str())  # a private copy: we change its settings
    eos = hf.eos_token
    if not eos or tok.token_to_id(eos) is None:
        tok.add_special_tokens([EOS])
        eos = EOS
    return TextTokenizer(tok, eos)


def build_tokenizer(spec: str, train_texts: Iterable[str]) -> TextTokenizer:
    """`bpe:N` trains on `train_texts` (consumed only then); anything else is a pretrained name."""
    if spec.startswith("bpe:"):
        if bpe_size(spec) is None:
            raise UserError(f"tokenizer={spec!r}: use bpe:N (e.g. bpe:2048) or a Hugging Face name")
        return train_bpe(train_texts, bpe_size(spec))
    return pretrained(spec)
