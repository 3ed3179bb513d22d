"""Synthetic spoken-word clips: a seeded stand-in for small keyword-spotting sets, without a download.

Each class is a "word" of two or three syllables, each an optional consonant (a band of noise: fricative, or a
short broadband burst: plosive) followed by a vowel (a harmonic source at the speaker's pitch shaped by the vowel's
three formants). Words differ in their vowels and consonants, so classes differ in spectral statistics, as spoken
words do; every clip draws its own speaker (pitch, vocal-tract length), syllable timing, loudness, onset and
background noise, so the clips of one class are never the same.

    waves, labels = spoken_words(per_class=40, classes=10, seed=0)  # 400 clips of 16 kHz float32, labels 0..9
"""

from __future__ import annotations

import numpy as np

RATE = 16_000
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480),
          "o": (570, 840, 2410), "ae": (660, 1720, 2410), "er": (490, 1350, 1690)}
"""Formants F1-F3 in Hz (Peterson & Barney's adult averages)."""
CONSONANTS = {"": None, "s": (4000, 7500), "sh": (2000, 4500), "f": (1000, 7000), "h": (500, 3000),
              "p": "burst", "t": "burst"}
"""Noise band (low, high) in Hz of a fricative, "burst" for a plosive, None for no consonant."""


def word_inventory(classes: int, seed: int = 1234) -> list[list[tuple[str, str]]]:
    """`classes` distinct words, each a list of (consonant, vowel) syllables; words also differ as multisets of
    syllables (not only in their order), so per-clip statistics can tell every pair apart."""
    rng = np.random.default_rng(seed)
    consonants, vowels = sorted(CONSONANTS), sorted(VOWELS)
    words, seen = [], set()
    while len(words) < classes:
        word = [(consonants[rng.integers(len(consonants))], vowels[rng.integers(len(vowels))])
                for _ in range(int(rng.integers(2, 4)))]
        if tuple(sorted(word)) not in seen:
            seen.add(tuple(sorted(word)))
            words.append(word)
    return words


def _band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.abs(noise).max() + 1e-8)


def _vowel(rng: np.random.Generator, n: int, formants: tuple[float, ...], pitch: float, scale: float) -> np.ndarray:
    """A harmonic source at `pitch` (with a slight glide) through the formant resonances scaled by `scale`."""
    t = np.arange(n) / RATE
    f0 = pitch * (1 + rng.uniform(-0.08, 0.08) * t / max(t[-1], 1e-3))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    wave = np.zeros(n)
    for h in range(1, int(5000 // pitch) + 1):
        f = h * pitch
        gain = sum(1.0 / (1 + ((f - F * scale) / (60 + 0.06 * F)) ** 2) for F in formants) / h ** 0.5
        wave += gain * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    envelope = np.sin(np.pi * np.arange(n) / n) ** 0.5  # soft on- and offset
    return wave * envelope / (np.abs(wave).max() + 1e-8)


def speak(rng: np.random.Generator, word: list[tuple[str, str]], seconds: float = 1.0) -> np.ndarray:
    """One utterance of `word` by a random speaker, in a `seconds` clip. Returns (samples,) float32 in [-1, 1]."""
    pitch, scale = rng.uniform(90, 240), rng.uniform(0.88, 1.15)
    parts = []
    for consonant, vowel in word:
        kind = CONSONANTS[consonant]
        if kind == "burst":
            n = int(rng.uniform(0.01, 0.025) * RATE)
            parts.append(_band_noise(rng, n, 300, 7000) * np.exp(-np.arange(n) / (0.004 * RATE)))
        elif kind is not None:
            n = int(rng.uniform(0.05, 0.12) * RATE)
            parts.append(0.4 * _band_noise(rng, n, *kind) * np.sin(np.pi * np.arange(n) / n))
        parts.append(_vowel(rng, int(rng.uniform(0.12, 0.24) * RATE), VOWELS[vowel], pitch, scale))
    speech = np.concatenate(parts) * rng.uniform(0.2, 0.8)
    clip = np.zeros(int(seconds * RATE))
    onset = int(rng.uniform(0, max(0.0, len(clip) - len(speech)) / RATE) * RATE)
    speech = speech[: len(clip) - onset]
    clip[onset: onset + len(speech)] = speech
    clip += rng.normal(0, rng.uniform(0.002, 0.02), size=clip.shape)
    return clip.clip(-1, 1).astype(np.float32)


def spoken_words(per_class: int, classes: int = 10, seed: int = 0,
                 seconds: float = 1.0) -> tuple[list[np.ndarray], list[int]]:
    """`per_class` clips of each of `classes` words (shuffled), 16 kHz mono. The words depend on `classes` only,
    the utterances on `seed`: draw train and test with two seeds. Returns (waves (samples,) each, labels)."""
    words = word_inventory(classes)
    rng = np.random.default_rng(seed)
    labels = [k for k in range(classes) for _ in range(per_class)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    return [speak(rng, words[k], seconds) for k in labels], labels
