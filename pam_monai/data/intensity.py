"""Intensity normalisation per image channel, as nnU-Net chooses it from the channel's name.

The paper's data sets z-score every channel over its non-zero voxels, volume by volume (BRATS
MRI, ISLES perfusion maps). Own data names its channels in ``dataset.json`` and, as in nnU-Net
(``nnunetv2/preprocessing/normalization``), a channel's name picks its scheme (case-insensitive):

- ``"CT"``: clip to the 0.5 and 99.5 percentiles of the **training set's foreground voxels**
  (label > 0), then subtract their mean and divide by their standard deviation: Hounsfield units
  mean the same in every scan, so the statistics are the data set's, not the volume's;
- ``"noNorm"``: the stored values (float32);
- ``"rescale_to_0_1"``: per volume, ``(x - min) / (max - min)``;
- ``"rgb_to_0_1"``: ``x / 255``;
- any other name (``"T2"``, ``"ADC"``, ``"zscore"``): the paper's per-volume z-score over non-zero
  voxels for volumes (nnU-Net's ``zscore`` uses the whole volume unless its plans mask it; ours
  masks, as for BRATS, whose background is 0 outside the head); for 2-D images a z-score over all
  of the image's pixels (``"zscore_all"``: black pixels of a photograph are data, not background).

The CT statistics are nnU-Net's ``foreground_intensity_properties_per_channel`` (the same keys);
they are read from ``<root>/dataset_fingerprint.json`` when nnU-Net's file is there, else
computed once per process from ``imagesTr`` and ``labelsTr`` (every case, as nnU-Net's fingerprint:
a cross-validation's test fold included), and recorded with a trained model (``model.json``) so that
evaluation and inference normalise exactly as training did. nnU-Net draws
10e7 / (number of cases) samples with replacement from each case's foreground; we take at most
100,000 seeded samples without replacement (all of a smaller foreground), so computed figures
agree with nnU-Net's to sampling precision, not digit for digit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .ops import nonzero_stats, zscore_nonzero_

__all__ = [
    "PROPERTIES_KEY",
    "SCHEMES",
    "ChannelNorm",
    "channel_norms",
    "foreground_intensity_properties",
    "normalize_channels",
    "scheme_of",
    "volume_stats",
]

PROPERTIES_KEY = "foreground_intensity_properties_per_channel"  # nnU-Net's fingerprint key
SCHEMES = ("zscore", "ct", "nonorm", "rescale_to_0_1", "rgb_to_0_1", "zscore_all")
SAMPLES_PER_CASE = 100_000
SEED = 1234  # nnU-Net's fingerprint seed


class ChannelNorm(NamedTuple):
    """How one channel is normalised: ``scheme`` (one of :data:`SCHEMES`) and, for ``"ct"``, the
    clip range and the mean and standard deviation of the training set's foreground voxels."""

    scheme: str = "zscore"
    lower: float | None = None
    upper: float | None = None
    mean: float | None = None
    std: float | None = None

    def describe(self) -> str:
        if self.scheme == "ct" and self.mean is None:
            return (
                "CT: clipped and standardised with the training foreground's statistics (not computed here)"
            )
        if self.scheme == "ct":
            return (
                f"CT: clip to [{self.lower:.6g}, {self.upper:.6g}], then (x - {self.mean:.6g}) / {self.std:.6g} "
                "(training foreground)"
            )
        return {
            "zscore": "z-score over each case's non-zero values",
            "zscore_all": "z-score over all of each case's values",
            "nonorm": "as stored",
            "rescale_to_0_1": "rescaled to [0, 1] per case",
            "rgb_to_0_1": "divided by 255",
        }[self.scheme]


def scheme_of(channel_name: str) -> str:
    """nnU-Net's scheme for a channel name (case-insensitive; unknown names: ``"zscore"``)."""
    key = str(channel_name).casefold()
    return key if key in SCHEMES else "zscore"


def channel_norms(
    channel_names: Sequence[str],
    properties: Mapping[str, Mapping[str, float]] | None = None,
    where: str = "",
    unknown: bool = False,
) -> tuple[ChannelNorm, ...]:
    """One :class:`ChannelNorm` per channel; ``properties`` (nnU-Net's per-channel foreground
    intensity properties, keyed ``"0"``, ``"1"``, ...) is needed for every CT channel, unless
    ``unknown`` (CT channels without statistics: named, but they cannot normalise). A standard
    deviation of 0 (one foreground value) divides by 1 (nnU-Net: by 1e-8)."""
    norms = []
    where = where or "dataset.json"
    keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
    for i, name in enumerate(channel_names):
        scheme = scheme_of(name)
        if scheme != "ct" or unknown:
            norms.append(ChannelNorm(scheme))
            continue
        entry = properties.get(str(i)) if isinstance(properties, Mapping) else None
        if not isinstance(entry, Mapping) or not all(k in entry for k in keys):
            found = sorted(entry) if isinstance(entry, Mapping) else entry
            raise ValueError(
                f"{where}: channel {i} ({name!r}) is CT, whose normalisation needs the training foreground's "
                f"intensity statistics: {PROPERTIES_KEY}[{str(i)!r}] with {', '.join(keys)}; found {found!r}"
            )
        given = {k: entry[k] for k in keys}
        try:
            lower, upper, mean, std = (float(given[k]) for k in keys)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: {PROPERTIES_KEY}[{str(i)!r}]: {', '.join(keys)} must be numbers, got {given}"
            ) from None
        if not all(np.isfinite([lower, upper, mean, std])) or upper < lower or std < 0:
            raise ValueError(
                f"{where}: {PROPERTIES_KEY}[{str(i)!r}]: not usable (finite numbers with percentile_00_5 <= "
                f"percentile_99_5 and std >= 0 needed): {given}"
            )
        norms.append(ChannelNorm("ct", lower, upper, mean, std if std > 0 else 1.0))
    return tuple(norms)


def volume_stats(image: np.ndarray, norms: Sequence[ChannelNorm]) -> list:
    """What the per-volume schemes need from the whole volume (``C x ...``), computed once before
    a crop: ``(mean, std)`` of the non-zero voxels (``zscore``) or of all (``zscore_all``),
    ``(min, max)`` (``rescale_to_0_1``), None for the others."""
    stats = []
    for channel, norm in zip(image, norms):
        if norm.scheme == "zscore":
            stats.append(nonzero_stats(channel))
        elif norm.scheme == "zscore_all":
            values = channel.astype(np.float64, copy=False)
            std = float(values.std())
            stats.append((float(values.mean()), std if std > 0 else 1.0))
        elif norm.scheme == "rescale_to_0_1":
            stats.append((float(channel.min()), float(channel.max())))
        else:
            stats.append(None)
    return stats


def normalize_channels(
    image: np.ndarray, norms: Sequence[ChannelNorm], stats: Sequence | None = None
) -> np.ndarray:
    """Normalise a channel-first array (float32 result) channel by channel; ``stats`` from
    :func:`volume_stats` of the whole volume when ``image`` is a crop of it."""
    if len(norms) != image.shape[0]:
        raise ValueError(f"{image.shape[0]} channels, but {len(norms)} normalisations")
    stats = volume_stats(image, norms) if stats is None else stats
    out = np.asarray(image, dtype=np.float32).copy()
    for c, (norm, s) in enumerate(zip(norms, stats)):
        x = out[c]
        if norm.scheme == "zscore":
            zscore_nonzero_(x, s)
        elif norm.scheme == "zscore_all":
            x -= np.float32(s[0])
            x /= np.float32(s[1])
        elif norm.scheme == "ct":
            if norm.mean is None:
                raise ValueError(f"channel {c}: CT without the training foreground's statistics")
            np.clip(x, norm.lower, norm.upper, out=x)
            x -= np.float32(norm.mean)
            x /= np.float32(norm.std)
        elif norm.scheme == "rescale_to_0_1":
            lo, hi = s
            x -= np.float32(lo)
            x /= np.float32(hi - lo) if hi > lo else np.float32(1.0)
        elif norm.scheme == "rgb_to_0_1":
            x /= np.float32(255.0)
        elif norm.scheme != "nonorm":
            raise ValueError(f"unknown normalisation {norm.scheme!r}; one of {SCHEMES}")
    return out


def foreground_intensity_properties(
    cases: Iterable[tuple[Sequence[str | os.PathLike], str | os.PathLike]],
    channels: Sequence[int],
    load: Callable[[str | os.PathLike], np.ndarray | None],
    samples_per_case: int = SAMPLES_PER_CASE,
    progress: Callable[[Iterable], Iterable] | None = None,
    ignore: int | None = None,
) -> dict[str, dict[str, float]]:
    """nnU-Net's ``foreground_intensity_properties_per_channel`` of ``channels``: statistics of the
    image values where the label is > 0, over every ``(channel files, label file)`` case (at
    most ``samples_per_case`` seeded samples of each case's foreground, without replacement).
    ``ignore``: the label value of unannotated voxels, which are not foreground here (nnU-Net counts
    them, so that a sparsely annotated CT set would take its window from air and tissue alike).
    ``load`` returns None for a file it cannot read; such cases, mis-shaped ones and those without
    foreground add nothing; raises ``ValueError`` with their counts when none is left."""
    rng = np.random.default_rng(SEED)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in channels}
    cases = list(cases)
    unusable = empty = 0
    for files, label_file in progress(cases) if progress else cases:
        label = load(label_file)
        images = {c: load(files[c]) for c in channels} if label is not None else {}
        if label is None or any(v is None or v.shape != label.shape for v in images.values()):
            unusable += 1  # unreadable or mis-shaped: the data checker names it
            continue
        flat = np.asarray(label).reshape(-1)
        where = np.flatnonzero((flat > 0) & (flat != ignore) if ignore is not None else flat > 0)
        if where.size == 0:
            empty += 1
            continue
        if where.size > samples_per_case:
            where = np.sort(rng.choice(where, samples_per_case, replace=False))
        for c in channels:
            samples[c].append(np.asarray(images[c]).reshape(-1)[where].astype(np.float64))
    if not cases or not samples[channels[0]]:
        raise ValueError(
            f"none of the {len(cases)} training cases gives foreground values (label > 0) to take CT statistics "
            f"from: {unusable} unreadable or mis-shaped, {empty} with an empty label"
        )
    out = {}
    for c in channels:
        v = np.concatenate(samples[c])
        out[str(c)] = {
            "max": float(v.max()),
            "mean": float(v.mean()),
            "median": float(np.median(v)),
            "min": float(v.min()),
            "percentile_00_5": float(np.percentile(v, 0.5)),
            "percentile_99_5": float(np.percentile(v, 99.5)),
            "std": float(v.std()),
        }
    return out
