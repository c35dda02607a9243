"""Text tokeniser: byte-level BPE learnt from the training texts with the `tokenizers` library.

Why byte-level BPE (GPT-2, RoBERTa) and not WordPiece (BERT):

* Training is deterministic. `tokenizers`' WordPiece trainer numbers its ``##`` continuation
  pieces in hash-map order, which changes from process to process and breaks ties between equally
  frequent merges differently: the same texts gave different vocabularies in three runs
  (huggingface/tokenizers#1794). Byte-level BPE has no such pieces; three runs gave byte-identical
  files.
* Nothing is unknown. The 256 byte symbols are all in the vocabulary, so any string encodes (a
  character never seen in training becomes its UTF-8 bytes) and decoding gives back exactly the
  normalised text; WordPiece turns a whole word with an unseen character into ``<unk>``.

Normalisation, applied before anything else and so part of the round trip: Unicode NFKC (the
ligature "ﬁ" → "fi", full-width letters → ASCII), lower case (the 20 Newsgroups files are lower
case already; an uncased vocabulary spends no tokens on capitals), and surrounding whitespace
stripped. Whitespace inside the text, punctuation and digits are kept. ``decode(encode(x)) ==
normalize(x)`` for every string x. A space is part of the token after it (GPT-2's "Ġ" marks it),
so "the" at the start of a text and after a space are one token (``add_prefix_space``).

Vocabulary layout, the same as the protein and DNA tokenisers' (``selfsup.tokenize.base``)::

    0 <cls>   1 <pad>   2 <eos>   3 <unk>   4 … 259 the bytes   260 … V-2 merges   V-1 <mask>

``<unk>`` is never produced. Text that spells a special (``"<mask>"``) is read as ordinary text,
so a document can never inject special ids. Random replacements (BERT's 10%) draw from every
ordinary token.

The tokeniser is saved as `tokenizers`' JSON (``save``/``load``); ``config()`` names the file and
its SHA-256, so an encoder is never paired with another tokeniser's ids.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tokenizers

from selfsup.errors import ConfigError, DataError
from selfsup.files import atomic_write
from selfsup.run_dir import TOKENIZER_FILE  # its name in a run dir
from selfsup.tokenize.base import LEADING_SPECIALS, MASK, Tokenizer

DEFAULT_VOCAB_SIZE = 8192
MIN_PAIR_COUNT = 2  # a merge must occur at least twice in the training texts
BYTE_SYMBOLS = 256


class TextTokenizer(Tokenizer):
    """Byte-level BPE over normalised text (see the module docstring).

    Build one with ``TextTokenizer.train(texts, vocab_size)`` or ``TextTokenizer.load(path)``;
    the constructor wraps an already trained ``tokenizers.Tokenizer`` and checks its layout.
    """

    name = "text"
    unknown_letter = ""  # unused: decoding writes specials as their names

    def __init__(self, backend: tokenizers.Tokenizer, path: Optional[Path] = None) -> None:
        vocabulary = backend.get_vocab(with_added_tokens=True)
        tokens = sorted(vocabulary, key=vocabulary.__getitem__)
        if ([vocabulary[token] for token in tokens] != list(range(len(tokens)))
                or tuple(tokens[:len(LEADING_SPECIALS)]) != LEADING_SPECIALS
                or tokens[-1] != MASK):
            where = f"{path}: " if path is not None else ""
            raise DataError(
                f"{where}not a selfsup text tokeniser: its ids must run 0…V-1 with "
                f"{' '.join(LEADING_SPECIALS)} first and {MASK} last; make one with "
                "TextTokenizer.train"
            )
        ordinary = tokens[len(LEADING_SPECIALS):-1]
        super().__init__(ordinary, ordinary)
        self.backend = backend
        self.path = path
        self.sha256 = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ making one

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> TextTokenizer:
        """Learn a BPE vocabulary of (at most) ``vocab_size`` tokens, specials included, from
        ``texts`` — the training split only, so no test text shapes the vocabulary. The same
        texts always give the same tokeniser."""
        smallest = len(LEADING_SPECIALS) + BYTE_SYMBOLS + 1
        if vocab_size < smallest:
            raise ConfigError(f"the text vocabulary needs at least {smallest} tokens (specials and "
                              f"the {BYTE_SYMBOLS} bytes); got vocab_size={vocab_size}")
        if len(texts) == 0:
            raise DataError("cannot learn a text tokeniser from 0 texts")
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=LEADING_SPECIALS[-1]))
        normalizers = tokenizers.normalizers
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()]
        )
        backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # <mask> comes last, after training
            min_frequency=MIN_PAIR_COUNT,
            special_tokens=list(LEADING_SPECIALS),
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer, length=len(texts))
        backend.add_special_tokens([MASK])
        backend.encode_special_tokens = True  # "<mask>" typed in a text is text
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path, sha256: Optional[str] = None) -> TextTokenizer:
        """The tokeniser saved at ``path``; with ``sha256``, check it is that very file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no text tokeniser at {path}: it is saved in the run dir as "
                            f"{TOKENIZER_FILE} by the run that trained the encoder")
        data = path.read_bytes()
        try:
            backend = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as error:  # the library raises plain Exceptions for bad files
            raise DataError(f"{path}: not a `tokenizers` JSON file ({error})") from None
        backend.encode_special_tokens = True
        tokenizer = cls(backend, path)
        # the file's bytes, not the library's re-serialisation of them: another `tokenizers`
        # version may write the same tokeniser differently, and the file must still match
        tokenizer.sha256 = hashlib.sha256(data).hexdigest()
        if sha256 is not None and tokenizer.sha256 != sha256:
            raise DataError(f"{path} is not the tokeniser the encoder was trained with (SHA-256 "
                            f"{tokenizer.sha256[:12]}…, expected {sha256[:12]}…); use that run's "
                            f"{TOKENIZER_FILE}")
        return tokenizer

    def to_json(self) -> str:
        """The tokeniser as `tokenizers`' JSON, the same text for the same vocabulary."""
        return self.backend.to_str()

    def save(self, path: str | Path) -> Path:
        """Write the tokeniser to ``path`` atomically and remember the path for ``config()``;
        ``sha256`` is then the file's own hash."""
        path, text = Path(path), self.to_json().encode("utf-8")
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(text))
        self.path, self.sha256 = path, hashlib.sha256(text).hexdigest()
        return path

    def config(self) -> dict:
        """``{"name": "text", "k": 1, "file", "sha256"}``: ``file`` is the saved file's name
        (the run dir holds it; resolve it against that folder), ``TOKENIZER_FILE`` before
        ``save``."""
        file = self.path.name if self.path is not None else TOKENIZER_FILE
        return {"name": self.name, "k": self.k, "file": file, "sha256": self.sha256}

    # ------------------------------------------------------------------ text ↔ ids

    def normalize(self, text: str) -> str:
        """``text`` as the tokeniser sees it, and as ``decode`` gives it back."""
        return self.backend.normalizer.normalize_str(text)

    def _encode_content(self, sequence: str, name: Optional[str]) -> np.ndarray:
        if not isinstance(sequence, str):
            where = f"record {name!r}: " if name is not None else ""
            raise DataError(f"{where}the text tokeniser reads strings, got "
                            f"{type(sequence).__name__}")
        ids = self.backend.encode(sequence, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def _decode_content(self, ids: np.ndarray) -> str:
        text = self.backend.decode(ids.tolist(), skip_special_tokens=False)
        # the space added in front of the first word (add_prefix_space) is not part of the text
        return text.removeprefix(" ")
