"""core.checkpoint's own format against real files: round trips, broken files, atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_kit import (
    leftovers,
    load_fails,
    model_output,
    random_state_dict,
    sample_meta,
    saved_fixture,  # noqa: F401  (the saved fixture)
    split_safetensors,
    tensor_data_offset,
    weights_fixture,  # noqa: F401  (the weights fixture)
)

from core import __version__
from core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from core.durable import file_sha256, fsync_dir, write_atomic
from core.network.model import ARCHITECTURE, ConvDiffusionModel
from core.network.space import POST_IMAGE_SPACE

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- our format ----------------------------------------------------------------------------------


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


def test_content_decides_not_extension(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    ours = save_checkpoint(tmp_path / "looks-like-post.pth", weights, sample_meta())
    post = tmp_path / "looks-like-ours.safetensors"
    torch.save(weights, post)

    assert load_checkpoint(ours).meta.image_space == "pixel"
    assert load_checkpoint(post).meta.image_space == POST_IMAGE_SPACE


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


# --- broken files --------------------------------------------------------------------------------


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


# --- durability ----------------------------------------------------------------------------------


def test_write_atomic_and_hash(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_atomic(target, b"first")
    write_atomic(target, memoryview(b"second version"))

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
        write_atomic(occupied, b"data")
    assert leftovers(tmp_path) == []
    assert (occupied / "child").is_dir()


def test_write_killed_by_file_size_limit_leaves_old_file(tmp_path: Path) -> None:
    # A real mid-write failure: the kernel refuses bytes past RLIMIT_FSIZE (EFBIG).
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old checkpoint")
    script = (
        "import resource, signal, sys\n"
        "from core.durable import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    write_atomic(sys.argv[1], b'x' * 1_000_000)\n"
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
        "from core.network.model import ConvDiffusionModel\n"
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
