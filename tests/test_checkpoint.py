"""core.checkpoint against real files: our format, seed imports, hostile input, atomic writes."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core import __version__
from core.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    atomic_write_bytes,
    build_model,
    file_sha256,
    fsync_dir,
    load_checkpoint,
    promote,
    resolve_current,
    save_checkpoint,
    validate_state_dict,
)
from core.model import ARCHITECTURE, ConvDiffusionModel

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers ------------------------------------------------------------------------------------


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A model whose every entry, BatchNorm statistics included, differs from a fresh one."""
    torch.manual_seed(seed)
    model = ConvDiffusionModel()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(seed + 7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.copy_(torch.randn_like(tensor) * 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}


def sample_meta(**overrides: object) -> CheckpointMeta:
    values: dict[str, object] = {
        "image_space": "pixel",
        "train_size": 64,
        "resize": "fit",
        "epoch": 50,
        "metrics": {"val_loss": 0.125, "val_psnr": 21.5},
        "dataset_hash": "sha256:" + "ab" * 32,
        "settings": {"lr": 0.001, "batch_size": 4, "augment": ["hflip"], "note": "ünïcode"},
    }
    values.update(overrides)
    return CheckpointMeta(**values)  # type: ignore[arg-type]


def load_fails(path: Path, *fragments: str) -> CheckpointError:
    """Load ``path``; the CheckpointError must name the file and contain every fragment."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    return len(raw).to_bytes(8, "little") + raw + body


def rewrite_meta(path: Path, mutate: Callable[[dict], None]) -> None:
    """Edit the artd metadata JSON of a saved file, keeping the tensor data (and its checksum)."""
    header, body = split_safetensors(path.read_bytes())
    meta = json.loads(header["__metadata__"]["artd"])
    mutate(meta)
    header["__metadata__"]["artd"] = json.dumps(meta)
    path.write_bytes(join_safetensors(header, body))


def tensor_data_offset(path: Path, name: str) -> int:
    data = path.read_bytes()
    header, _ = split_safetensors(data)
    return 8 + int.from_bytes(data[:8], "little") + header[name]["data_offsets"][0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def model_output(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.rand(1, 3, 16, 16))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(1)


@pytest.fixture
def saved(tmp_path: Path, weights: dict[str, torch.Tensor]) -> Path:
    return save_checkpoint(tmp_path / "epoch-050.safetensors", weights, sample_meta())


# --- our format ---------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    meta = sample_meta()
    path = save_checkpoint(tmp_path / "epoch-050.safetensors", weights, meta)

    ckpt = load_checkpoint(path)

    assert set(ckpt.state_dict) == set(weights)
    for name, tensor in weights.items():
        assert ckpt.state_dict[name].dtype == tensor.dtype, name
        assert torch.equal(ckpt.state_dict[name], tensor), name
    assert ckpt.meta == meta
    assert ckpt.meta.to_dict() == meta.to_dict()
    assert ckpt.meta.code_version == __version__
    assert ckpt.meta.format_version == FORMAT_VERSION
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", ckpt.meta.created)
    assert ckpt.path == path.resolve()
    assert ckpt.sha256 == file_sha256(path)
    assert ckpt.version == f"epoch-050.safetensors@{ckpt.sha256[:12]}"
    assert leftovers(tmp_path) == []


def test_saved_file_is_plain_safetensors_with_json_metadata(saved: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as handle:
        metadata = handle.metadata()
        assert set(handle.keys()) == set(ConvDiffusionModel().state_dict())
    meta = json.loads(metadata["artd"])
    assert meta["architecture"] == ARCHITECTURE
    assert meta["image_space"] == "pixel"
    assert meta["settings"]["lr"] == 0.001


def test_header_length_that_looks_like_a_pickle_is_still_safetensors(saved: Path) -> None:
    # A header of 0x..80 bytes makes the file's first byte 0x80, a pickle's opening byte.
    header, body = split_safetensors(saved.read_bytes())
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((0x80 - len(raw)) % 256)
    saved.write_bytes(len(raw).to_bytes(8, "little") + raw + body)
    assert saved.read_bytes()[:1] == b"\x80"

    ckpt = load_checkpoint(saved)
    assert (ckpt.meta.image_space, ckpt.meta.epoch) == ("pixel", 50)


def test_build_model_is_strict_eval_and_reproduces_outputs(
    saved: Path, weights: dict[str, torch.Tensor]
) -> None:
    original = ConvDiffusionModel()
    original.load_state_dict(weights)
    original.eval()

    model = build_model(load_checkpoint(saved))

    assert isinstance(model, ConvDiffusionModel)
    assert not model.training
    assert torch.equal(model_output(model), model_output(original))


def test_build_model_refuses_weights_edited_after_loading(saved: Path) -> None:
    ckpt = load_checkpoint(saved)
    ckpt.state_dict.pop("dec3.0.bias")
    with pytest.raises(CheckpointError, match=r"dec3\.0\.bias"):
        build_model(ckpt)


def test_content_decides_not_extension(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    ours = save_checkpoint(tmp_path / "looks-like-seed.pth", weights, sample_meta())
    seed = tmp_path / "looks-like-ours.safetensors"
    torch.save(weights, seed)

    assert load_checkpoint(ours).meta.image_space == "pixel"
    assert load_checkpoint(seed).meta.image_space == "seed"


def test_save_overwrites_and_strips_ddp_prefix(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, random_state_dict(2), sample_meta(epoch=1))
    wrapped = {f"module.{k}": v for k, v in weights.items()}

    save_checkpoint(path, wrapped, sample_meta(epoch=2))

    ckpt = load_checkpoint(path)
    assert ckpt.meta.epoch == 2
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"image_space": "latent"}, "image_space"),
        ({"resize": "crop"}, "resize"),
        ({"train_size": 0}, "train_size"),
        ({"metrics": {"val_loss": float("nan")}}, "metrics"),
        ({"architecture": "UNet2D"}, "UNet2D"),
    ],
)
def test_save_refuses_bad_metadata(
    tmp_path: Path, weights: dict[str, torch.Tensor], override: dict, fragment: str
) -> None:
    path = tmp_path / "bad-meta.safetensors"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, weights, sample_meta(**override))
    assert "bad-meta.safetensors" in str(info.value)
    assert fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_nan_weights(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    poisoned = dict(weights)
    poisoned["enc2.0.weight"] = weights["enc2.0.weight"].clone()
    poisoned["enc2.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"nan\.safetensors.*enc2\.0\.weight"):
        save_checkpoint(tmp_path / "nan.safetensors", poisoned, sample_meta())
    assert list(tmp_path.iterdir()) == []


def test_meta_dict_round_trip_and_defaults() -> None:
    meta = sample_meta()
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    default = CheckpointMeta()
    assert default.architecture == ARCHITECTURE
    assert default.format_version == FORMAT_VERSION
    assert default.normalization == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# --- metadata problems in a file ----------------------------------------------------------------


def test_future_format_version_is_a_clear_error(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    load_fails(saved, f"format_version {FORMAT_VERSION + 1}", "upgrade artd")


def test_wrong_architecture_in_metadata(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(architecture="StableDiffusionUNet"))
    load_fails(saved, "StableDiffusionUNet", ARCHITECTURE)


def test_unknown_image_space_in_metadata(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(image_space="latent"))
    load_fails(saved, "image_space", "latent")


def test_safetensors_without_our_metadata(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    import safetensors.torch

    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(weights, str(path))
    load_fails(path, "not an artd checkpoint")


# --- seed imports -------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_seed_state_dict_imports_and_strict_loads(
    tmp_path: Path, weights: dict[str, torch.Tensor], zip_format: bool
) -> None:
    original = ConvDiffusionModel()
    original.load_state_dict(weights)
    path = tmp_path / "model_epoch_150.pth"
    # Exactly what the seed's training script does.
    torch.save(original.state_dict(), path, _use_new_zipfile_serialization=zip_format)

    ckpt = load_checkpoint(path)

    assert ckpt.meta.image_space == "seed"
    assert (ckpt.meta.train_size, ckpt.meta.resize, ckpt.meta.epoch) == (128, "stretch", 150)
    assert ckpt.meta.architecture == ARCHITECTURE
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    assert ckpt.version.startswith("model_epoch_150.pth@")
    model = build_model(ckpt)
    assert torch.equal(model_output(model), model_output(original.eval()))


def test_seed_round_trips_through_our_format(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    seed = tmp_path / "model_epoch_10.pth"
    torch.save(weights, seed)
    imported = load_checkpoint(seed)

    converted = save_checkpoint(tmp_path / "seed.safetensors", imported.state_dict, imported.meta)

    again = load_checkpoint(converted)
    assert again.meta == imported.meta
    assert all(torch.equal(again.state_dict[k], v) for k, v in weights.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 30},
        lambda sd: {"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        lambda sd: {"model_state_dict": sd, "epoch": 3, "loss": 0.5},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    ],
    ids=["ddp", "nested-ddp", "state_dict-key", "model_state_dict-key", "torch-compile"],
)
def test_wrapped_seed_variants_load(
    tmp_path: Path, weights: dict[str, torch.Tensor], wrap: Callable[[dict], object]
) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(weights), path)

    ckpt = load_checkpoint(path)

    assert set(ckpt.state_dict) == set(weights)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    build_model(ckpt)


def test_dict_without_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "training-log.pth"
    torch.save({"epoch": 3, "losses": [0.5, 0.25], "model": {"not": "tensors"}}, path)
    load_fails(path, "no state_dict")


def test_tensor_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    load_fails(path, "not a state_dict")


# --- validation ---------------------------------------------------------------------------------


def test_wrong_shape_names_key_expected_and_got(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    bad = dict(weights)
    bad["enc1.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "wrong-shape.pth"
    torch.save(bad, path)
    load_fails(path, "enc1.0.weight", "(64, 3, 3, 3)", "(32, 3, 3, 3)")


def test_missing_and_unexpected_keys_are_listed(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    bad = {k: v for k, v in weights.items() if not k.startswith("dec3.")}
    bad["head.weight"] = torch.zeros(1)
    path = tmp_path / "missing.pth"
    torch.save(bad, path)
    load_fails(path, "2 missing keys", "dec3.0.bias", "dec3.0.weight", "unexpected", "head.weight")


def test_many_missing_keys_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "other-model.pth"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(40)}, path)
    error = load_fails(path, "missing keys", "more")
    assert len(str(error)) < 1000


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(
    tmp_path: Path, weights: dict[str, torch.Tensor], bad_value: float
) -> None:
    bad = dict(weights)
    bad["dec1.2.running_var"] = weights["dec1.2.running_var"].clone()
    bad["dec1.2.running_var"][5] = bad_value
    path = tmp_path / "poisoned.pth"
    torch.save(bad, path)
    load_fails(path, "non-finite", "dec1.2.running_var")


def test_integer_weights_are_refused(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    bad = dict(weights)
    bad["enc1.0.bias"] = torch.zeros(64, dtype=torch.int32)
    path = tmp_path / "ints.pth"
    torch.save(bad, path)
    load_fails(path, "enc1.0.bias", "int32")


def test_validate_state_dict_accepts_fresh_model_and_names_source() -> None:
    validate_state_dict(ConvDiffusionModel().state_dict(), "fresh")
    with pytest.raises(CheckpointError, match=r"^somewhere\.pth: .*enc1\.0\.weight"):
        validate_state_dict({"enc1.0.weight": torch.zeros(1)}, "somewhere.pth")


# --- hostile and broken files -------------------------------------------------------------------


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


class OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model_epoch_150.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(RunsShellCommand(marker), protocol=2))
    else:
        torch.save({"enc1.0.weight": OpensFile(marker)}, path)

    load_fails(path, "refused")
    assert not marker.exists()

    # Control: an ordinary unpickle of the same file does run the payload.
    unpickle = (
        "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
        if writer == "pickle"
        else "import torch, sys; torch.load(sys.argv[1], weights_only=False)"
    )
    subprocess.run([sys.executable, "-c", unpickle, str(path)], check=False, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.safetensors", b"", "empty file"),
        ("notes.pth", b"these are my notes about the model\n" * 10, "not a checkpoint"),
        ("noise.safetensors", b"\x13" + os.urandom(4095), "not a checkpoint"),
        ("short.bin", b"\x01\x02\x03", "not a checkpoint"),
        ("config.safetensors", b'{"architecture": "ConvDiffusionModel"}', "not a checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints(
    tmp_path: Path, name: str, content: bytes, fragment: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    load_fails(path, fragment)


def test_plain_zip_archive_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")
    load_fails(path, "unreadable torch file")


def test_random_bytes_after_torch_magic_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle-noise.pth"
    path.write_bytes(b"\x80" + bytes(range(256)) * 4)
    load_fails(path)


def test_directory_and_missing_paths(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.safetensors"
    folder.mkdir()
    load_fails(folder, "not a regular file")
    load_fails(tmp_path / "missing.safetensors", "does not exist")


def test_flipped_header_bytes_are_detected(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[8] ^= 0xFF  # the header's opening brace
    saved.write_bytes(bytes(data))
    load_fails(saved, "header")


def test_flipped_metadata_bytes_are_detected(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    at = data.index(b"val_psnr")
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    saved.write_bytes(bytes(data))
    load_fails(saved, "header")


@pytest.mark.parametrize("tensor", ["enc3.0.weight", "dec2.2.running_mean"])
def test_flipped_tensor_bytes_are_detected(saved: Path, tensor: str) -> None:
    offset = tensor_data_offset(saved, tensor) + 40
    data = bytearray(saved.read_bytes())
    data[offset] ^= 0x01  # one bit: still a finite float, only the checksum can tell
    saved.write_bytes(bytes(data))
    load_fails(saved, "SHA-256")


def test_truncated_safetensors_always_raise_checkpoint_error(saved: Path) -> None:
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cuts = [1, 7, 8, 9, 8 + header_len // 2, 8 + header_len, 8 + header_len + 3]
    cuts += [len(data) // 2, len(data) - 4, len(data) - 1]
    for cut in cuts:
        saved.write_bytes(data[:cut])
        try:
            load_fails(saved)
        except BaseException as exc:
            raise AssertionError(f"cut at {cut}") from exc


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_torch_files_always_raise_checkpoint_error(
    tmp_path: Path, weights: dict[str, torch.Tensor], zip_format: bool
) -> None:
    buffer = io.BytesIO()
    torch.save(weights, buffer, _use_new_zipfile_serialization=zip_format)
    data = buffer.getvalue()
    path = tmp_path / "model_epoch_10.pth"
    for cut in [1, 2, 10, 100, 1000, len(data) // 2, len(data) - 100, len(data) - 1]:
        path.write_bytes(data[:cut])
        try:
            load_fails(path)
        except BaseException as exc:
            raise AssertionError(f"cut at {cut}") from exc


# --- durability ---------------------------------------------------------------------------------


def test_atomic_write_bytes_and_hash(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, memoryview(b"second version"))

    assert target.read_bytes() == b"second version"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_process_umask())
    assert leftovers(tmp_path) == []
    import hashlib

    assert file_sha256(target) == hashlib.sha256(b"second version").hexdigest()
    fsync_dir(tmp_path)


def _process_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    (occupied / "child").mkdir(parents=True)
    with pytest.raises(OSError):
        atomic_write_bytes(occupied, b"data")
    assert leftovers(tmp_path) == []
    assert (occupied / "child").is_dir()


def test_write_killed_by_file_size_limit_leaves_old_file(tmp_path: Path) -> None:
    # A real mid-write failure: the kernel refuses bytes past RLIMIT_FSIZE (EFBIG).
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old checkpoint")
    script = (
        "import resource, signal, sys\n"
        "from core.checkpoint import atomic_write_bytes\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    atomic_write_bytes(sys.argv[1], b'x' * 1_000_000)\n"
        "except OSError as exc:\n"
        "    print('raised', exc.errno)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
    )
    assert result.stdout.startswith("raised"), result.stdout + result.stderr
    assert target.read_bytes() == b"old checkpoint"
    assert leftovers(tmp_path) == []


def _without_root_privileges() -> list[str]:
    """Command prefix under which permission bits bind: root is stripped of its overrides."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: read-only folders do not bind root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_save_into_read_only_folder_fails_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    script = (
        "import sys\n"
        "from core.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint\n"
        "from core.model import ConvDiffusionModel\n"
        "try:\n"
        "    save_checkpoint(sys.argv[1], ConvDiffusionModel().state_dict(), CheckpointMeta())\n"
        "except CheckpointError as exc:\n"
        "    print('raised', exc)\n"
    )
    try:
        result = subprocess.run(
            [*_without_root_privileges(), sys.executable, "-c", script, f"{folder}/ckpt.st"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            check=True,
        )
        assert result.stdout.startswith("raised"), result.stdout + result.stderr
        assert "ckpt.st" in result.stdout
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_save_into_missing_folder_is_a_checkpoint_error(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    with pytest.raises(CheckpointError, match=r"ckpt\.safetensors"):
        save_checkpoint(tmp_path / "nope" / "ckpt.safetensors", weights, sample_meta())


# --- the current pointer ------------------------------------------------------------------------


@pytest.fixture
def two_runs(tmp_path: Path, weights: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    run = tmp_path / "checkpoints" / "run-1"
    run.mkdir(parents=True)
    first = save_checkpoint(run / "epoch-010.safetensors", random_state_dict(3), sample_meta())
    second = save_checkpoint(run / "epoch-020.safetensors", weights, sample_meta(epoch=20))
    return first, second


def test_promote_switches_pointer_and_load_follows(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"

    promote(current, first)
    assert os.readlink(current) == "run-1/epoch-010.safetensors"
    assert load_checkpoint(current).version == load_checkpoint(first).version

    promote(current, second)
    ckpt = load_checkpoint(current)
    assert ckpt.path == second.resolve()
    assert ckpt.meta.epoch == 20
    assert ckpt.version.startswith("epoch-020.safetensors@")
    assert resolve_current(current) == second.resolve()
    assert leftovers(current.parent) == []


def test_promote_is_atomic_for_concurrent_readers(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    stop = current.parent / "stop-reading"
    # A separate process, so the reader really runs between the writer's system calls.
    reader_script = (
        "import os, sys\n"
        "current, stop = sys.argv[1], sys.argv[2]\n"
        "seen, failures, reads = set(), 0, 0\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(stop):\n"
        "    try:\n"
        "        seen.add(os.path.basename(os.path.realpath(current, strict=True)))\n"
        "        reads += 1\n"
        "    except OSError:\n"
        "        failures += 1\n"
        "print(reads, failures, ','.join(sorted(seen)), flush=True)\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", reader_script, str(current), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        for i in range(20):
            promote(current, second if i % 2 == 0 else first)
    finally:
        stop.touch()
        output, _ = reader.communicate(timeout=30)
    reads, failures, seen = output.split()
    assert int(failures) == 0
    assert int(reads) > 0
    assert set(seen.split(",")) == {first.name, second.name}


def test_promote_replaces_a_copied_regular_file(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    current = first.parent.parent / "current"
    current.write_bytes(first.read_bytes())  # an operator copied a file over the pointer

    promote(current, second)

    assert current.is_symlink()
    assert load_checkpoint(current).meta.epoch == 20


def test_promote_outside_the_tree_uses_an_absolute_link(
    tmp_path: Path, two_runs: tuple[Path, Path]
) -> None:
    _, second = two_runs
    elsewhere = tmp_path / "pointers"
    elsewhere.mkdir()
    promote(elsewhere / "current", second)
    assert os.readlink(elsewhere / "current") == str(second.resolve())


def test_promote_refuses_bad_targets_and_keeps_pointer(
    tmp_path: Path, two_runs: tuple[Path, Path]
) -> None:
    first, _ = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights")

    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        promote(current, garbage)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors"):
        promote(current, tmp_path / "missing.safetensors")
    folder_pointer = first.parent.parent / "as-dir"
    folder_pointer.mkdir()
    with pytest.raises(CheckpointError, match="as-dir"):
        promote(folder_pointer, first)

    assert os.readlink(current) == "run-1/epoch-010.safetensors"
    assert leftovers(current.parent) == []


def test_dangling_pointer_is_a_clear_error(two_runs: tuple[Path, Path]) -> None:
    first, _ = two_runs
    current = first.parent.parent / "current"
    promote(current, first)
    first.unlink()
    load_fails(current, "epoch-010.safetensors", "does not exist")


def test_checkpoint_version_property() -> None:
    ckpt = Checkpoint(
        path=Path("/x/epoch-050.safetensors"),
        state_dict={},
        meta=CheckpointMeta(),
        sha256="1a2b3c4d5e6f" + "0" * 52,
    )
    assert ckpt.version == "epoch-050.safetensors@1a2b3c4d5e6f"
