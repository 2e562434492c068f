"""Bad-record accounting: skip reasons, a per-reason counter with a maximum skip fraction, and clear path errors."""
from __future__ import annotations

import collections
import logging
import os
import threading

log = logging.getLogger("common.data")

# The reasons a record can be skipped for (free-form reasons are allowed too; these are the ones the loaders use).
CORRUPT_IMAGE = "corrupt_image"
MISSING_IMAGE = "missing_image"
EMPTY_IMAGE = "empty_image"
BAD_TEXT_ENCODING = "non_utf8_text"
IMAGE_MARKER_MISMATCH = "image_marker_mismatch"
TOO_LONG = "too_long"
WRONG_SAMPLE_RATE = "wrong_sample_rate"
CORRUPT_AUDIO = "corrupt_audio"
MISSING_AUDIO = "missing_audio"
MALFORMED = "malformed_record"
# Images that decode but are not 8-bit RGB: skipped (and counted) by default; with `convert_image_modes=True`
# they are converted to 8-bit RGB instead and counted as conversions (`SkipCounter.notes`, "converted").
GREYSCALE_IMAGE = "greyscale_image"  # PIL modes L, 1; [H, W] or [H, W, 1] arrays
RGBA_IMAGE = "rgba_image"  # an alpha channel: RGBA, LA, PA, a palette with transparency; [H, W, 4] arrays
CMYK_IMAGE = "cmyk_image"
HIGH_BIT_DEPTH_IMAGE = "16bit_image"  # 16-bit grey or RGB(A), 32-bit int / float (modes I;16*, I, F); uint16 arrays
PALETTE_IMAGE = "palette_image"  # mode P without transparency
OTHER_MODE_IMAGE = "other_mode_image"  # YCbCr, LAB, HSV, RGBX, ... (PIL decodes ordinary JPEGs to RGB)
IMAGE_MODE_REASONS = (GREYSCALE_IMAGE, RGBA_IMAGE, CMYK_IMAGE, HIGH_BIT_DEPTH_IMAGE, PALETTE_IMAGE, OTHER_MODE_IMAGE)


class BadRecord(Exception):
    """Raised by a transform for a record that must be skipped; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TooManyBadRecords(RuntimeError):
    """More than `max_skip_fraction` of the records seen were skipped."""


class DataPathError(FileNotFoundError):
    """A dataset path given by the user does not exist (raised at start, before any training)."""


def require_path(path: str, what: str = "dataset path", kind: str = "any") -> str:
    """Returns `path` if it exists (and is a file / dir when `kind` says so), else raises DataPathError."""
    ok = os.path.isdir(path) if kind == "dir" else os.path.isfile(path) if kind == "file" else os.path.exists(path)
    if not ok:
        want = {"dir": "directory", "file": "file"}.get(kind, "path")
        raise DataPathError(f"{what} does not exist or is not a {want}: {path!r}")
    return path


_local = threading.local()


def record_note(what: str) -> None:
    """Notes a repair (e.g. 'greyscale_image' converted to RGB) for the record being transformed in this thread, if one
    is collecting."""
    notes = getattr(_local, "notes", None)
    if notes is not None:
        notes.append(what)


class collect_notes:
    """Context manager collecting `record_note` calls made by this thread into `.notes`."""

    def __enter__(self):
        self.notes, self._prev = [], getattr(_local, "notes", None)
        _local.notes = self.notes
        return self

    def __exit__(self, *exc):
        _local.notes = self._prev
        return False


class SkipCounter:
    """Counts records seen and skipped per reason; raises once the skipped fraction passes the maximum.

    The check starts after `min_records` records so that one early bad record does not stop a run. Thread-safe
    (grain's prefetch threads call it). `state()` / `restore()` let a checkpoint carry the counts.
    """

    def __init__(self, max_skip_fraction: float = 0.05, min_records: int = 100, name: str = "data", log_every: int = 1):
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = max_skip_fraction
        self.min_records = min_records
        self.name = name
        self.log_every = log_every
        self.seen = 0
        self.skipped: collections.Counter = collections.Counter()
        self.notes: collections.Counter = collections.Counter()  # conversions that kept the record (by image reason)
        self._lock = threading.Lock()

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def ok(self) -> None:
        with self._lock:
            self.seen += 1

    def note(self, what: str) -> None:
        """Counts a repair that kept the record (with `convert_image_modes=True`: a greyscale / RGBA / CMYK /
        16-bit / palette image converted to RGB, under the reason it would otherwise have been skipped for)."""
        with self._lock:
            self.notes[what] += 1

    def skip(self, reason: str, detail: str = "") -> None:
        with self._lock:
            self.seen += 1
            self.skipped[reason] += 1
            n = self.skipped[reason]
        if self.log_every and (n - 1) % self.log_every == 0:
            log.warning("[%s] skipped record (%s) %s [%d so far for this reason]", self.name, reason, detail, n)
        self.check()

    def check(self, final: bool = False) -> None:
        """Raises TooManyBadRecords when the skip fraction passes the maximum (always checked when final)."""
        with self._lock:
            seen, skipped = self.seen, self.num_skipped
        if seen == 0 or (seen < self.min_records and not final):
            return
        if skipped / seen > self.max_skip_fraction:
            hint = ""
            modes = sorted(r for r in self.skipped if r in IMAGE_MODE_REASONS)
            if modes:
                hint = f" To keep the {'/'.join(modes)} images converted to RGB instead, set convert_image_modes=True."
            raise TooManyBadRecords(
                f"[{self.name}] {skipped} of {seen} records skipped ({skipped / seen:.1%}), more than the allowed "
                f"{self.max_skip_fraction:.1%}; by reason: {dict(self.skipped)}. Fix the data or raise "
                f"max_skip_fraction.{hint}"
            )

    def summary(self) -> dict:
        return {"seen": self.seen, "skipped": self.num_skipped, "by_reason": dict(self.skipped),
                "converted": dict(self.notes)}

    def state(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped), "notes": dict(self.notes)}

    def restore(self, state: dict) -> None:
        with self._lock:
            self.seen = int(state["seen"])
            self.skipped = collections.Counter({k: int(v) for k, v in state["skipped"].items()})
            self.notes = collections.Counter({k: int(v) for k, v in state.get("notes", {}).items()})


def decode_text(value, field: str = "text") -> str:
    """bytes or str -> str; non-UTF-8 bytes (or lone surrogates from a bad decode) are a BadRecord."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecord(BAD_TEXT_ENCODING, f"{field}: {e}") from None
    if not isinstance(value, str):
        raise BadRecord(MALFORMED, f"{field} is {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRecord(BAD_TEXT_ENCODING, f"{field}: {e}") from None
    return value


def check_image_markers(text: str, num_images: int, marker: str = "<image>") -> None:
    """The number of `marker`s in the text must equal the number of images."""
    n = text.count(marker)
    if n != num_images:
        raise BadRecord(IMAGE_MARKER_MISMATCH, f"{n} {marker} markers for {num_images} images")
