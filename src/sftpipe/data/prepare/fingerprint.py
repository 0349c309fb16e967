"""Fingerprints of records for exact and near-duplicate detection and n-gram overlap: computed per record in
the scan (stage 1), used by the split, dedup and decontam stages.

Records are compared on their user and assistant turns (system messages are shared boilerplate), after
NFKC normalisation, case folding and whitespace collapsing. Exact duplicates share `content_hash`; near
duplicates have MinHash signatures (datasketch) of word shingles whose Jaccard similarity reaches the
threshold, found with datasketch's `MinHashLSH` in `NearDuplicateIndex`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import zlib
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from sftpipe.data.records import Conversation
from sftpipe.data.prepare.spill import SpillFile

WORD_RE = re.compile(r"\w+")
BAND_BLOCK_ROWS = 8192
MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # datasketch's 32-bit scheme: 4 bytes per permutation
LSH_WEIGHTS = (0.05, 0.95)  # (false positive, false negative) weights of datasketch's band optimisation


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def compared_turns(conv: Conversation) -> list[tuple[str, str]]:
    """(role, normalised content) of the turns that dedup compares: all but system messages."""
    return [(m["role"], normalize(m["content"])) for m in conv.messages if m["role"] != "system"]


def content_hash(turns: list[tuple[str, str]]) -> int:
    """64-bit hash of the normalised turns: equal for exact duplicates."""
    payload = "\x1e".join(f"{role}\x1f{text}" for role, text in turns).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def split_key(digest: int, seed: int) -> int:
    """Where a record falls in the seeded order that decides the split (a function of its content)."""
    payload = digest.to_bytes(8, "little") + seed.to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def words_of(turns: list[tuple[str, str]]) -> list[str]:
    return WORD_RE.findall(" ".join(text for _, text in turns))


def word_ngrams(words: list[str], n: int) -> list[str]:
    """Every run of `n` words; a text shorter than `n` words is one n-gram of all its words."""
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


_ROLL = np.uint64(0x100000001B3)  # odd multiplier of the polynomial n-gram hash


def word_hashes(words: list[str]) -> np.ndarray:
    """A 64-bit hash per word (uint64 array), the input of `ngram_hashes`."""
    return np.array([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words],
                    dtype=np.uint64)


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hashes (mod 2^64) of every run of `n` word hashes, computed for all runs at once."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _ROLL + hashes[k : k + count]
    return acc


class Signer:
    """MinHash signatures (datasketch) of word shingles, as uint32 arrays of `num_perm` values.

    A shingle's value is a polynomial hash of its words' crc32s, computed for all shingles of a record
    at once; datasketch applies its permutations to these values (hashfunc=int, as they are already hashes).
    """

    CACHE_WORDS = 1 << 20  # word -> crc32 cache entries before it is cleared (bounds its memory)

    def __init__(self, num_perm: int, shingle_words: int):
        self.shingle_words = shingle_words
        self._minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED, hashfunc=int, scheme=MINHASH_SCHEME)
        self._empty = self._minhash.hashvalues.copy()
        self._cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self._cache
        if len(cache) > self.CACHE_WORDS:
            cache.clear()
        hashes = np.array([cache.get(w) or cache.setdefault(w, zlib.crc32(w.encode()) | 1 << 32) for w in words],
                          dtype=np.uint64)
        shingles = ngram_hashes(hashes, min(self.shingle_words, len(words))) if len(words) else hashes
        self._minhash.hashvalues = self._empty.copy()  # reuse one MinHash: its permutations are fixed
        self._minhash.update_batch((shingles & np.uint64(0xFFFFFFFF)).tolist())
        return self._minhash.hashvalues


def lean_minhash(signature: np.ndarray) -> LeanMinHash:
    return LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)


class SignatureStore(SpillFile):
    """Append-only file of fixed-size signatures, read back by row (see `SpillFile`)."""

    def __init__(self, path: os.PathLike, num_perm: int):
        super().__init__(path)
        self.row_bytes = num_perm * 4
        self.num_perm = num_perm

    def append(self, signatures: np.ndarray) -> None:
        assert signatures.dtype == np.uint32 and signatures.shape[1:] == (self.num_perm,)
        self.write(np.ascontiguousarray(signatures).tobytes())

    def read(self, start: int, count: int) -> np.ndarray:
        raw = self.pread(count * self.row_bytes, start * self.row_bytes)
        return np.frombuffer(raw, dtype=np.uint32).reshape(-1, self.num_perm)


class NearDuplicateIndex:
    """MinHash LSH over kept records; candidates are confirmed by their estimated Jaccard similarity."""

    def __init__(self, threshold: float, num_perm: int, signatures: SignatureStore):
        # Band keys are hashed to one int (the index keeps one per band per record, so this bounds its size).
        # Python's hash is salted per process, which is fine: the index lives in one process, and a chance
        # collision only adds a candidate that the Jaccard check then rejects.
        # Bands are tuned for recall (false-negative weight 0.95): with 128 permutations at threshold 0.85,
        # 93% of pairs at the threshold and 99% at 0.9 become candidates (46% and 81% with datasketch's
        # default 0.5/0.5); a false candidate only costs the Jaccard check below.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS, hashfunc=hash)
        self.threshold = threshold
        self.signatures = signatures

    def find(self, signature: np.ndarray) -> tuple[int, float] | None:
        """The first indexed row whose similarity to `signature` reaches the threshold, with it."""
        best: tuple[int, float] | None = None
        for row in sorted(self.lsh.query(lean_minhash(signature))):
            similarity = float(np.mean(self.signatures.read(row, 1)[0] == signature))
            if similarity >= self.threshold:
                best = (row, similarity)
                break
        return best

    def add(self, row: int, signature: np.ndarray) -> None:
        self.lsh.insert(row, lean_minhash(signature), check_duplication=False)

    def colliding_rows(self, n: int, work: Path) -> np.ndarray:
        """Which of the `n` stored signatures share at least one LSH band with another one.

        Only those can have a near duplicate, so only those need to enter the index: its size then
        follows the number of candidates, not of examples. One pass over the signatures writes each band's
        hash (the index's own bands, `lsh.hashranges`) to a file; each band is then sorted on its own.
        """
        paths = [work / f"band-{i:03d}.u64" for i in range(len(self.lsh.hashranges))]
        files = [path.open("wb") for path in paths]
        try:
            for start in range(0, n, BAND_BLOCK_ROWS):
                block = self.signatures.read(start, min(BAND_BLOCK_ROWS, n - start)).astype(np.uint64)
                for fh, (first, stop) in zip(files, self.lsh.hashranges):
                    fh.write(ngram_hashes_2d(block[:, first:stop]).tobytes())
        finally:
            for fh in files:
                fh.close()
        colliding = np.zeros(n, dtype=bool)
        for path in paths:
            colliding |= repeated(np.fromfile(path, dtype=np.uint64))
            path.unlink()
        return colliding


def ngram_hashes_2d(values: np.ndarray) -> np.ndarray:
    """The polynomial hash (mod 2^64) of each row of a 2-D uint64 array."""
    acc = np.zeros(len(values), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(values.shape[1]):
            acc = acc * _ROLL + values[:, k]
    return acc


def repeated(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the entries whose value occurs more than once in `values`."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    same = ranked[1:] == ranked[:-1]
    mask = np.zeros(len(values), dtype=bool)
    mask[1:] |= same
    mask[:-1] |= same
    out = np.empty(len(values), dtype=bool)
    out[order] = mask
    return out


class NgramIndex:
    """Word n-grams of protected texts (eval sets, optionally val/test), each mapped to the item it is from.

    A protected text shorter than `n` words is kept whole, so it matches wherever it appears in full. The
    index is sorted numpy arrays (16 bytes per n-gram), queried for all of a record's n-grams at once.
    """

    def __init__(self, n: int):
        self.n = n
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, words: list[str], item: int) -> None:
        if not words:
            return
        length = min(self.n, len(words))
        grams = ngram_hashes(word_hashes(words), length)
        self._parts.setdefault(length, []).append((grams, np.full(len(grams), item, dtype=np.int64)))
        self._tables.clear()

    def __len__(self) -> int:
        return sum(len(g) for parts in self._parts.values() for g, _ in parts)

    def find(self, words: list[str]) -> int | None:
        """The protected item sharing an n-gram with `words` (the earliest added one), or None."""
        if not self._parts:
            return None
        if not self._tables:
            self._freeze()
        hashes = word_hashes(words)
        found: int | None = None
        for length, (keys, items) in self._tables.items():
            grams = ngram_hashes(hashes, length)
            if not len(grams):
                continue
            pos = np.minimum(np.searchsorted(keys, grams), len(keys) - 1)
            hits = items[pos[keys[pos] == grams]]
            if len(hits):
                first = int(hits.min())
                found = first if found is None else min(found, first)
        return found

    def _freeze(self) -> None:
        for length, parts in self._parts.items():
            keys = np.concatenate([g for g, _ in parts])
            items = np.concatenate([i for _, i in parts])
            order = np.lexsort((items, keys))  # by hash, then item: a shared n-gram maps to its first item
            keys, items = keys[order], items[order]
            first = np.ones(len(keys), dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            self._tables[length] = (keys[first], items[first])
