"""Checkpoints: our safetensors format, seed `.pth` import, atomic writes, the `current` pointer.

Our format is a plain safetensors file. Its header metadata holds two string keys:
``"artd"`` (the :class:`CheckpointMeta` as JSON) and ``"artd_data_sha256"`` (the SHA-256 of the
tensor data region, so flipped bits in the weights are caught, not served).

Seed checkpoints are bare ``state_dict`` files written by ``torch.save``. They are read with
``torch.load(weights_only=True)`` and nothing else: a pickle that asks to import or call
anything beyond tensors and containers is refused, never run. Wrapped variants seen in the
wild are accepted: keys prefixed ``module.`` (DataParallel/DDP) or ``_orig_mod.``
(``torch.compile``) have the prefix stripped, and ``{"state_dict": sd}``, ``{"model_state_dict":
sd}`` or ``{"model": sd, "optimizer": ...}`` dicts have the nested state_dict taken out.

The kind of file is decided by its content, never by its extension.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from loguru import logger

from core import __version__
from core.model import (
    ARCHITECTURE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConvDiffusionModel,
    expected_shapes,
)

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_SPACES",
    "RESIZE_POLICIES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMeta",
    "atomic_write_bytes",
    "build_model",
    "file_sha256",
    "fsync_dir",
    "load_checkpoint",
    "promote",
    "resolve_current",
    "save_checkpoint",
    "validate_state_dict",
]

# Bump when the layout changes incompatibly; readers refuse versions newer than they know.
FORMAT_VERSION = 1
META_KEY = "artd"
DATA_SHA256_KEY = "artd_data_sha256"
ImageSpace = Literal["pixel", "seed"]
IMAGE_SPACES: tuple[str, ...] = ("pixel", "seed")
RESIZE_POLICIES: tuple[str, ...] = ("fit", "stretch")
# The seed's script trained on 128x128 stretched images.
SEED_TRAIN_SIZE = 128
# ConvDiffusionModel weighs about 5 MB; anything near this is not one of ours.
MAX_CHECKPOINT_BYTES = 1 << 30
# safetensors' own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000
# Wrapper prefixes stripped from every key when all keys carry them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# torch's weights-only unpickler messages that mean "this pickle wants to run code".
_REFUSAL_MARKERS = (
    "was not an allowed global",
    "is blocked",
    "unrecognized function",
    "Can only create new object",
    "must be imported to load",
)
_LIST_LIMIT = 5


class CheckpointError(Exception):
    """A checkpoint cannot be read, written or used; ``str(e)`` names the file and the problem."""

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _imagenet_normalization() -> dict[str, list[float]]:
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@dataclass
class CheckpointMeta:
    """What a set of weights is and how it was made. Stored as JSON in the safetensors header."""

    architecture: str = ARCHITECTURE
    image_space: ImageSpace = "pixel"
    train_size: int = 256
    resize: str = "fit"
    normalization: dict[str, list[float]] = field(default_factory=_imagenet_normalization)
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_hash: str | None = None
    code_version: str = __version__
    created: str = field(default_factory=_utc_now_iso)
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        """Validate and build; raises ValueError naming the bad field. Unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not _is_int(version) or version < 1:
            raise ValueError(f"format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {version} is newer than this artd understands "
                f"(up to {FORMAT_VERSION}); upgrade artd to read it"
            )
        for required in ("architecture", "image_space", "train_size", "resize"):
            if required not in data:
                raise ValueError(f"metadata lacks {required!r}")
        architecture = _expect_str(data, "architecture")
        image_space = _expect_str(data, "image_space")
        if image_space not in IMAGE_SPACES:
            raise ValueError(f"image_space must be one of {IMAGE_SPACES}, got {image_space!r}")
        train_size = data["train_size"]
        if not _is_int(train_size) or train_size <= 0:
            raise ValueError(f"train_size must be a positive integer, got {train_size!r}")
        resize = _expect_str(data, "resize")
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        epoch = data.get("epoch")
        if epoch is not None and (not _is_int(epoch) or epoch < 0):
            raise ValueError(f"epoch must be a non-negative integer or null, got {epoch!r}")
        dataset_hash = data.get("dataset_hash")
        if dataset_hash is not None and not isinstance(dataset_hash, str):
            raise ValueError(f"dataset_hash must be a string or null, got {dataset_hash!r}")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise ValueError(f"settings must be an object, got {type(settings).__name__}")
        return cls(
            architecture=architecture,
            image_space=image_space,  # type: ignore[arg-type]
            train_size=train_size,
            resize=resize,
            normalization=_parse_normalization(
                data.get("normalization", _imagenet_normalization())
            ),
            epoch=epoch,
            metrics=_parse_metrics(data.get("metrics", {})),
            dataset_hash=dataset_hash,
            code_version=_expect_str(data, "code_version", default="unknown"),
            created=_expect_str(data, "created", default=""),
            settings=dict(settings),
            format_version=version,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _expect_str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _parse_normalization(value: object) -> dict[str, list[float]]:
    if not isinstance(value, dict):
        raise ValueError(f"normalization must be an object with mean and std, got {value!r}")
    parsed: dict[str, list[float]] = {}
    for key in ("mean", "std"):
        numbers = value.get(key)
        if (
            not isinstance(numbers, list)
            or len(numbers) != 3
            or not all(_is_finite_number(x) for x in numbers)
        ):
            raise ValueError(f"normalization.{key} must be 3 finite numbers, got {numbers!r}")
        parsed[key] = [float(x) for x in numbers]
    if any(s <= 0 for s in parsed["std"]):
        raise ValueError(f"normalization.std must be positive, got {parsed['std']}")
    return parsed


def _parse_metrics(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"metrics must be an object, got {type(value).__name__}")
    bad = {k: v for k, v in value.items() if not _is_finite_number(v)}
    if bad:
        raise ValueError(f"metrics must be finite numbers, got {bad!r}")
    return {str(k): float(v) for k, v in value.items()}


@dataclass
class Checkpoint:
    """Loaded weights. ``path`` is the real file (after following ``current``)."""

    path: Path
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    meta: CheckpointMeta
    sha256: str

    @property
    def version(self) -> str:
        """Short human id, e.g. ``epoch-050.safetensors@1a2b3c4d5e6f``."""
        return f"{self.path.name}@{self.sha256[:12]}"


# --- durability helpers -------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (certain network mounts) cannot fsync a directory; nothing to do.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    # Reading the umask through os.umask() briefly changes it for every thread; /proc does not.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix.

    The temp file is dot-prefixed (watchers and the inbox scanner ignore dotfiles) and lives in
    the same folder, so the final ``os.replace`` is a rename on one filesystem. On any failure
    the temp file is removed and ``path`` is untouched. Raises OSError.
    """
    target = Path(path)
    folder = target.parent
    fd, tmp_name = _mkstemp_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes 0600 files; a checkpoint or an output should get ordinary permissions.
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(folder)


def _mkstemp_beside(target: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- validation ---------------------------------------------------------------------------------


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"{shown} (and {more} more)" if more > 0 else shown


def validate_state_dict(state_dict: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Check keys, shapes, dtypes and finiteness against ConvDiffusionModel.

    Raises CheckpointError naming ``source`` and every kind of problem found (a few examples
    of each).
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"expected a state_dict, got {type(state_dict).__name__}", source)
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"entries that are not tensors: {_few(not_tensors)}", source)
    expected = expected_shapes()
    problems: list[str] = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(str(k) for k in set(state_dict) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
    mismatched: list[str] = []
    wrong_dtype: list[str] = []
    non_finite: list[str] = []
    for key in sorted(set(expected) & set(state_dict)):
        tensor = state_dict[key]
        if tuple(tensor.shape) != expected[key]:
            mismatched.append(f"{key} expected {expected[key]} got {tuple(tensor.shape)}")
            continue
        if _is_float_key(key) and not tensor.is_floating_point():
            wrong_dtype.append(f"{key} is {tensor.dtype}")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            non_finite.append(key)
    if mismatched:
        problems.append(f"shape mismatch: {_few(mismatched)}")
    if wrong_dtype:
        problems.append(f"not floating point: {_few(wrong_dtype)}")
    if non_finite:
        problems.append(f"non-finite values (NaN/inf) in: {_few(non_finite)}")
    if problems:
        raise CheckpointError(f"not valid {ARCHITECTURE} weights: " + "; ".join(problems), source)


def _is_float_key(key: str) -> bool:
    # BatchNorm's step counter is the model's only integer entry.
    return not key.endswith("num_batches_tracked")


def _strip_wrapper_prefixes(state_dict: dict[str, Any], source: object) -> dict[str, Any]:
    """Drop ``module.`` / ``_orig_mod.`` when every key carries it (DDP, torch.compile)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                logger.debug("{}: stripped key prefix {!r}", source, prefix)
                changed = True
    return state_dict


# --- save ---------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: CheckpointMeta
) -> Path:
    """Validate and write weights + metadata as one safetensors file, atomically.

    Refuses (CheckpointError) anything :func:`load_checkpoint` would refuse: bad keys, shapes,
    NaN weights, invalid metadata, non-finite metrics. The parent folder must exist.
    ``settings`` values that JSON cannot hold (paths, ...) are stored as strings.
    """
    target = Path(path)
    tensors = _strip_wrapper_prefixes(dict(state_dict), target)
    validate_state_dict(tensors, target)
    meta_dict = meta.to_dict()
    try:
        checked = CheckpointMeta.from_dict(meta_dict)
        meta_json = json.dumps(meta_dict, sort_keys=True, allow_nan=False, default=str)
    except ValueError as exc:
        raise CheckpointError(f"invalid metadata: {exc}", target) from exc
    if checked.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"metadata says architecture {checked.architecture!r}, weights are {ARCHITECTURE}",
            target,
        )
    # Clones: contiguous CPU tensors that share no storage, which safetensors requires.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", META_KEY: meta_json}
    # The data region does not depend on the header, so a first pass gives its checksum.
    draft = safetensors.torch.save(tensors, metadata=metadata)
    data_sha = hashlib.sha256(_data_region(draft)).hexdigest()
    blob = safetensors.torch.save(tensors, metadata={**metadata, DATA_SHA256_KEY: data_sha})
    if hashlib.sha256(_data_region(blob)).hexdigest() != data_sha:
        raise CheckpointError("safetensors laid out the tensor data differently twice", target)
    try:
        atomic_write_bytes(target, blob)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint: {exc}", target) from exc
    logger.info("saved checkpoint {} ({} bytes, epoch {})", target, len(blob), meta.epoch)
    return target


def _data_region(blob: bytes) -> bytes:
    header_len = int.from_bytes(blob[:8], "little")
    return blob[8 + header_len :]


# --- load ---------------------------------------------------------------------------------------


def resolve_current(path: str | os.PathLike[str]) -> Path:
    """The real file behind a pointer such as ``checkpoints/current`` (all links followed)."""
    given = Path(path)
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError as exc:
        target = os.readlink(given) if given.is_symlink() else None
        detail = f"points to {target}, which does not exist" if target else "does not exist"
        raise CheckpointError(detail, given) from exc
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise CheckpointError(f"cannot resolve path: {exc}", given) from exc
    return real


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and validate weights onto the CPU. Follows symlinks; sniffs the content.

    Our safetensors files give their own metadata; torch files (zip or legacy) are seed
    imports with ``image_space="seed"``, ``train_size=128``, ``resize="stretch"`` and the
    epoch taken from a name like ``model_epoch_150.pth`` when present.
    """
    given = Path(path)
    real = resolve_current(given)
    label = str(given) if real == given.absolute() else f"{given} -> {real}"
    data = _read_checkpoint_bytes(real, label)
    kind = _sniff(data)
    if kind == "safetensors":
        state_dict, meta = _load_safetensors(data, label)
    elif kind == "torch":
        state_dict, meta = _load_torch(data, real, label)
    elif kind == "empty":
        raise CheckpointError("empty file, not a checkpoint", label)
    else:
        raise CheckpointError(
            f"not a checkpoint (content is neither safetensors nor a torch file; "
            f"starts with {data[:8]!r})",
            label,
        )
    if meta.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"checkpoint is for architecture {meta.architecture!r}, this artd runs {ARCHITECTURE}",
            label,
        )
    validate_state_dict(state_dict, label)
    checkpoint = Checkpoint(
        path=real, state_dict=state_dict, meta=meta, sha256=hashlib.sha256(data).hexdigest()
    )
    logger.debug("loaded checkpoint {} ({}, {})", label, checkpoint.version, meta.image_space)
    return checkpoint


def _read_checkpoint_bytes(real: Path, label: str) -> bytes:
    try:
        info = real.stat()
        # Opening a FIFO or a device would block or stream forever.
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError("not a regular file", label)
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(
                f"{info.st_size} bytes is far too large for a {ARCHITECTURE} checkpoint", label
            )
        with open(real, "rb") as handle:
            return handle.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc}", label) from exc


def _sniff(data: bytes) -> str:
    if not data:
        return "empty"
    # safetensors first: its length prefix may well start with 0x80 (a header of 384 bytes).
    # A cut right after the length prefix is still recognisably (truncated) safetensors.
    if len(data) >= 8 and data[8:9] in (b"{", b""):
        header_len = int.from_bytes(data[:8], "little")
        if 2 <= header_len <= MAX_HEADER_BYTES:
            return "safetensors"
    # Torch files: a zip archive (torch >= 1.6) or a bare pickle (protocol 2+ starts with 0x80).
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        return "torch"
    return "unknown"


def _load_safetensors(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    header_len = int.from_bytes(data[:8], "little")
    data_start = 8 + header_len
    if len(data) < data_start:
        raise CheckpointError(
            f"truncated safetensors file: header claims {header_len} bytes, "
            f"only {len(data) - 8} follow",
            label,
        )
    try:
        header = json.loads(data[8:data_start])
    except ValueError as exc:
        raise CheckpointError(f"corrupt safetensors header (not valid JSON: {exc})", label) from exc
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not a JSON object)", label)
    needed = _data_bytes_needed(header)
    if needed is not None and len(data) - data_start < needed:
        raise CheckpointError(
            f"truncated safetensors file: header describes {needed} bytes of tensor data, "
            f"only {len(data) - data_start} present",
            label,
        )
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(META_KEY), str):
        raise CheckpointError(
            f"safetensors file without {META_KEY!r} metadata: not an artd checkpoint", label
        )
    try:
        meta = CheckpointMeta.from_dict(json.loads(metadata[META_KEY]))
    except ValueError as exc:
        raise CheckpointError(f"invalid artd metadata: {exc}", label) from exc
    recorded = metadata.get(DATA_SHA256_KEY)
    if not isinstance(recorded, str):
        raise CheckpointError(f"safetensors file lacks {DATA_SHA256_KEY!r}", label)
    try:
        state_dict = safetensors.torch.load(data)
    except Exception as exc:  # the Rust parser raises its own error types
        raise CheckpointError(f"corrupt safetensors file: {exc}", label) from exc
    if hashlib.sha256(data[data_start:]).hexdigest() != recorded:
        raise CheckpointError(
            "tensor data does not match its recorded SHA-256 (corrupted or edited file)", label
        )
    return state_dict, meta


def _data_bytes_needed(header: dict[str, Any]) -> int | None:
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and _is_int(offsets[1])):
            return None  # malformed: let safetensors' parser describe it
        ends.append(offsets[1])
    return max(ends, default=0)


def _load_torch(
    data: bytes, real: Path, label: str
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    try:
        # weights_only=True, passed explicitly, is what keeps a pickle from running code;
        # there is deliberately no fallback to a full unpickle.
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if any(marker in text for marker in _REFUSAL_MARKERS):
            culprit = re.search(r"GLOBAL (\S+)", text)
            what = f" (it asks for {culprit.group(1)})" if culprit else ""
            raise CheckpointError(
                "refused: the torch file holds objects other than tensors, whose loading could "
                f"run code{what}; only plain state_dicts are accepted",
                label,
            ) from None
        raise CheckpointError(f"unreadable torch file: {_torch_reason(text)}", label) from None
    except Exception as exc:  # truncated zips, bad magic numbers, ...: torch raises many types
        raise CheckpointError(
            f"unreadable torch file: {type(exc).__name__}: {_torch_reason(str(exc))}", label
        ) from exc
    state_dict = _extract_state_dict(loaded, label)
    state_dict = _strip_wrapper_prefixes(state_dict, label)
    state_dict = {k: v.detach() for k, v in state_dict.items()}
    return state_dict, _seed_meta(real)


def _torch_reason(text: str) -> str:
    """The useful part of torch's error text, without its advice boilerplate."""
    chunks = [c.strip() for c in text.split("\n\n") if c.strip()]
    useful = [
        c
        for c in chunks
        if not c.startswith(("Weights only load failed", "Check the documentation"))
    ]
    reason = useful[-1].splitlines()[0] if useful else "(no detail)"
    return reason if len(reason) <= 200 else reason[:200] + "..."


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _extract_state_dict(loaded: object, label: str) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(loaded):
        return dict(loaded)  # type: ignore[call-overload]
    if isinstance(loaded, dict):
        for key in NESTED_STATE_DICT_KEYS:
            if _is_tensor_dict(loaded.get(key)):
                logger.debug("{}: using the state_dict nested under {!r}", label, key)
                return dict(loaded[key])
        keys = _few(sorted(repr(k) for k in loaded))
        raise CheckpointError(
            f"torch file holds a dict (keys {keys}) with no state_dict of tensors in it", label
        )
    raise CheckpointError(f"torch file holds a {type(loaded).__name__}, not a state_dict", label)


def _seed_meta(real: Path) -> CheckpointMeta:
    epoch_match = re.search(r"epoch[_-]?(\d+)", real.name)
    mtime = datetime.fromtimestamp(real.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return CheckpointMeta(
        architecture=ARCHITECTURE,
        image_space="seed",
        train_size=SEED_TRAIN_SIZE,
        resize="stretch",
        normalization=_imagenet_normalization(),
        epoch=int(epoch_match.group(1)) if epoch_match else None,
        metrics={},
        dataset_hash=None,
        code_version="seed",
        created=mtime,
        settings={},
        format_version=FORMAT_VERSION,
    )


def build_model(ckpt: Checkpoint) -> ConvDiffusionModel:
    """A ConvDiffusionModel on the CPU, in eval mode, loaded with ``strict=True``."""
    if ckpt.meta.architecture != ARCHITECTURE:
        raise CheckpointError(
            f"checkpoint is for architecture {ckpt.meta.architecture!r}, not {ARCHITECTURE}",
            ckpt.path,
        )
    model = ConvDiffusionModel()
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model: {exc}", ckpt.path) from exc
    return model.eval()


# --- the current pointer ------------------------------------------------------------------------


def promote(current: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Atomically make the symlink ``current`` point at ``target``.

    ``target`` must load and validate first. The link is relative when ``target`` lies under
    ``current``'s folder (the tree can then be moved or mounted elsewhere), absolute otherwise.
    A new link is made beside ``current`` under a dot-name and renamed over it, so readers
    see the old target or the new one, never nothing; a regular file at ``current`` is
    replaced, a directory is refused.
    """
    pointer = Path(current)
    real_target = load_checkpoint(target).path
    try:
        folder = pointer.parent.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot use the pointer's folder: {exc}", pointer) from exc
    if real_target.is_relative_to(folder):
        link_text = os.path.relpath(real_target, folder)
    else:
        link_text = str(real_target)
    temp_link = folder / f".{pointer.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.symlink(link_text, temp_link)
        try:
            os.replace(temp_link, folder / pointer.name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_link)
            raise
        fsync_dir(folder)
    except OSError as exc:
        raise CheckpointError(f"cannot point at {real_target}: {exc}", pointer) from exc
    logger.info("promoted {} -> {}", pointer, link_text)
