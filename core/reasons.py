"""Every reason a file can be refused, in one place.

The quarantine's ``*.error.json`` sidecar, the ``artd_quarantined_total{reason}`` metric and
``artd process``'s report all carry one of these names. :class:`Reason` is a ``StrEnum``, so
a member compares equal to its name and serialises as it (``json.dumps(Reason.TRUNCATED)``
gives ``"truncated"``). :data:`DESCRIPTIONS` says each one in plain words for people.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a file was refused. Decode-time reasons first, then the model's, then the disk's."""

    # The decoder (core.images.decode and the decoder processes).
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNREADABLE = "unreadable"
    DECODER_CRASHED = "decoder_crashed"
    DECODER_FAILED = "decoder_failed"
    # The spool: a symlink, folder, FIFO or device where a file was claimed.
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    # The model.
    MODEL_FAILED = "model_failed"
    NON_FINITE_OUTPUT = "non_finite_output"
    OUT_OF_MEMORY = "out_of_memory"
    CRASHED_REPEATEDLY = "crashed_repeatedly"
    # Job settings: the image's sidecar (photo.jpg.artd.json) cannot be used.
    INVALID_SIDECAR = "invalid_sidecar"
    # Writing the result.
    ENCODE_FAILED = "encode_failed"
    WRITE_FAILED = "write_failed"
    # `artd process` only: two inputs would write one output.
    DUPLICATE_OUTPUT = "duplicate_output"


# What an ImageError may carry: the reasons found while reading a file.
DECODE_REASONS = frozenset(
    {Reason.EMPTY_FILE, Reason.NOT_AN_IMAGE, Reason.UNSUPPORTED_FORMAT, Reason.TRUNCATED}
    | {Reason.CORRUPT, Reason.TOO_MANY_PIXELS, Reason.UNREADABLE, Reason.DECODER_CRASHED}
)

DESCRIPTIONS: dict[Reason, str] = {
    Reason.EMPTY_FILE: "The file is empty (0 bytes).",
    Reason.NOT_AN_IMAGE: "The file is not an image.",
    Reason.UNSUPPORTED_FORMAT: "An image format artd does not read (JPEG, PNG, WebP, BMP, "
    "TIFF and GIF are read).",
    Reason.TRUNCATED: "The image file is cut short, probably an unfinished copy.",
    Reason.CORRUPT: "The image file is damaged and cannot be decoded.",
    Reason.TOO_MANY_PIXELS: "The image has more pixels than the configured limit.",
    Reason.UNREADABLE: "The file could not be read (permissions or a disk error).",
    Reason.DECODER_CRASHED: "Reading this file crashed or hung the decoder.",
    Reason.DECODER_FAILED: "The decoder failed on this file for an unexpected reason.",
    Reason.NOT_A_REGULAR_FILE: "Not a regular file (a link, folder, pipe or device).",
    Reason.MODEL_FAILED: "The model failed on this image.",
    Reason.NON_FINITE_OUTPUT: "The model produced an invalid (NaN or infinite) result.",
    Reason.OUT_OF_MEMORY: "The image is too large for the device's memory, even alone.",
    Reason.CRASHED_REPEATEDLY: "Processing stopped several times while this file was alone "
    "in the model.",
    Reason.ENCODE_FAILED: "The result could not be encoded in the output format.",
    Reason.WRITE_FAILED: "The result could not be written to the outbox.",
    Reason.DUPLICATE_OUTPUT: "Another input would write the same output file.",
    Reason.INVALID_SIDECAR: "The image's settings file (.artd.json) is invalid; the detail "
    "names the key.",
}
