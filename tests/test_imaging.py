"""core.images (decode, pixels, loading) and core.outputs.encoding: safe decode of real
(good, broken, hostile) files, resize, tensors, encode."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
from pathlib import Path

import imaging_samples as samples
import numpy as np
import pytest
import torch
from conftest import textured_image
from PIL import Image, ImageFile
from torchvision import transforms
from torchvision.utils import save_image

from core.images import loading
from core.images.decode import ImageError, decode
from core.images.loading import load
from core.images.pixels import from_tensor, resize, target_size, to_tensor, to_uint8_array
from core.outputs.encoding import OUTPUT_FORMATS, encode, read_metadata
from core.reasons import DECODE_REASONS

WHITE = (255, 255, 255)


def reason_of(source: object, **kw: object) -> str:
    with pytest.raises(ImageError) as info:
        decode(source, **kw)
    err = info.value
    assert err.message and str(err) == f"{err.reason}: {err.message}"
    assert err.reason in DECODE_REASONS
    return err.reason


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int16)


# --- decode failures, one real file per class -------------------------------------------


def test_empty_file_in_every_source_form(tmp_path: Path) -> None:
    path = samples.write_empty(tmp_path)
    assert reason_of(path) == "empty_file"
    assert reason_of(str(path)) == "empty_file"
    assert reason_of(b"") == "empty_file"
    assert reason_of(io.BytesIO()) == "empty_file"


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    assert reason_of(samples.write_text_as_jpeg(tmp_path)) == "not_an_image"
    assert reason_of(b"\x00" * 100) == "not_an_image"


@pytest.mark.parametrize("keep", [3, 20, 200, 0.3, 0.6, 0.9, -2, -1])
def test_truncated_jpeg(tmp_path: Path, keep: float) -> None:
    full = samples.write_jpeg(tmp_path, size=(64, 48))
    cut = int(full.stat().st_size * keep) if isinstance(keep, float) else int(keep)
    assert reason_of(samples.write_truncated(full, tmp_path, cut)) == "truncated"


@pytest.mark.parametrize("keep", [12, 30, 60, 0.5, 0.9, -30])
def test_truncated_png(tmp_path: Path, keep: float) -> None:
    full = samples.write_noise_png(tmp_path)
    cut = int(full.stat().st_size * keep) if isinstance(keep, float) else int(keep)
    assert reason_of(samples.write_truncated(full, tmp_path, cut)) == "truncated"


@pytest.mark.parametrize("keep", [30, 0.5, -1])
def test_truncated_webp(tmp_path: Path, keep: float) -> None:
    full = samples.write_webp(tmp_path)
    cut = int(full.stat().st_size * keep) if isinstance(keep, float) else int(keep)
    assert reason_of(samples.write_truncated(full, tmp_path, cut)) == "truncated"


def test_truncated_gif(tmp_path: Path) -> None:
    full = samples.write_animated_gif(tmp_path)
    assert reason_of(samples.write_truncated(full, tmp_path, 20)) == "truncated"
    # Only the first frame is decoded: losing later frames costs nothing.
    assert decode(samples.write_truncated(full, tmp_path, -1)).size == (16, 16)


def test_png_with_undecodable_pixel_data_is_corrupt(tmp_path: Path) -> None:
    assert reason_of(samples.write_png_corrupt_idat(tmp_path)) == "corrupt"


def test_decompression_bomb_header_is_refused_from_a_tiny_file(tmp_path: Path) -> None:
    bomb = samples.write_png_bomb(tmp_path)
    assert bomb.stat().st_size < 200
    assert reason_of(bomb) == "too_many_pixels"
    # Far above PIL's own guard too: still our reason, never PIL's exception type.
    assert reason_of(bomb, max_pixels=10**12) == "too_many_pixels"


def test_pixel_limit_is_checked_from_the_header_before_any_decoding(tmp_path: Path) -> None:
    # No pixel data at all: decoding would say "truncated", the header check says too big.
    header_only = samples.write_png_header_only(tmp_path, 3000, 2000)
    assert reason_of(header_only, max_pixels=5_999_999) == "too_many_pixels"
    assert reason_of(header_only, max_pixels=6_000_000) == "truncated"


def test_pixel_limit_boundary_on_a_real_image(tmp_path: Path) -> None:
    path = samples.write_png(tmp_path, size=(48, 32))
    assert decode(path, max_pixels=48 * 32).size == (48, 32)
    assert reason_of(path, max_pixels=48 * 32 - 1) == "too_many_pixels"


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PDF", "EPS", "PSD", "QOI"])
def test_real_images_outside_the_allow_list_are_unsupported(tmp_path: Path, fmt: str) -> None:
    path = samples.write_unsupported(tmp_path, fmt)
    with pytest.raises(ImageError) as info:
        decode(path)
    assert info.value.reason == "unsupported_format"
    assert "not accepted" in info.value.message


def test_os_errors_are_unreadable(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "vanished.jpg") == "unreadable"
    assert reason_of(tmp_path) == "unreadable"  # a directory
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(reason_of(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done == ["unreadable"], "a FIFO must be refused, not block the decoder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_unreadable(tmp_path: Path) -> None:
    path = samples.write_jpeg(tmp_path)
    path.chmod(0)
    try:
        assert reason_of(path) == "unreadable"
    finally:
        path.chmod(0o644)


class _HostileReader(io.RawIOBase):
    """A binary file object whose reads raise ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        raise self.exc


def test_foreign_exceptions_never_leak_but_interrupts_do() -> None:
    assert reason_of(_HostileReader(RuntimeError("boom"))) == "unreadable"
    with pytest.raises(MemoryError):
        decode(_HostileReader(MemoryError()))
    with pytest.raises(KeyboardInterrupt):
        decode(_HostileReader(KeyboardInterrupt()))


def test_image_error_carries_path_and_survives_pickling(tmp_path: Path) -> None:
    path = samples.write_text_as_jpeg(tmp_path)
    with pytest.raises(ImageError) as info:
        decode(path)
    err = info.value
    assert err.path == str(path)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.message, clone.path, str(clone)) == (
        err.reason,
        err.message,
        err.path,
        str(err),
    )


def test_decode_leaves_pil_globals_alone(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    reason_of(samples.write_png_bomb(tmp_path), max_pixels=10**12)
    reason_of(samples.write_truncated(samples.write_jpeg(tmp_path), tmp_path, 300))
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- decoding every mode to RGB ---------------------------------------------------------


@pytest.mark.parametrize(
    "writer", [samples.write_png, samples.write_bmp, samples.write_tiff, samples.write_webp]
)
def test_lossless_formats_decode_exactly(tmp_path: Path, writer) -> None:
    img = decode(writer(tmp_path))
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img), samples.pattern())


def test_jpeg_decodes_close_to_its_source(tmp_path: Path) -> None:
    img = decode(samples.write_jpeg(tmp_path))
    assert np.abs(pixels(img) - samples.pattern()).mean() < 3


def test_every_source_form_gives_the_same_pixels(tmp_path: Path) -> None:
    path = samples.write_png(tmp_path)
    reference = np.asarray(decode(path))

    class Unseekable(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[override]
            chunk = self.inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = path.read_bytes()
    with path.open("rb") as fp:
        forms = [str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), fp]
        for form in [*forms, Unseekable(data)]:
            assert np.array_equal(np.asarray(decode(form)), reference), type(form)


def test_cmyk_jpeg_colours_are_approximately_right(tmp_path: Path) -> None:
    img = decode(samples.write_cmyk_jpeg(tmp_path))
    assert img.mode == "RGB"
    assert np.abs(pixels(img) - (255, 0, 0)).max() <= 12


def test_16_bit_png_gradient_is_scaled_not_clipped(tmp_path: Path) -> None:
    row = pixels(decode(samples.write_png16_gradient(tmp_path)))[0]
    assert np.array_equal(row[:, 0], np.arange(256))  # x * 257 / 257 == x, every level kept
    assert np.array_equal(row[:, 0], row[:, 2])


def test_float_and_int32_tiffs_are_scaled(tmp_path: Path) -> None:
    assert Image.open(samples.write_float_tiff(tmp_path)).mode == "F"
    assert Image.open(samples.write_int32_tiff(tmp_path)).mode.startswith("I")
    for writer in (samples.write_float_tiff, samples.write_int32_tiff):
        row = pixels(decode(writer(tmp_path)))[0, :, 0]
        assert np.abs(row - np.arange(256)).max() <= 1, writer.__name__


def test_palette_transparency_is_composited_on_the_background(tmp_path: Path) -> None:
    img = pixels(decode(samples.write_palette_png_transparent(tmp_path), background=(10, 20, 30)))
    assert (img[:, :8] == (10, 20, 30)).all()
    assert (img[:, 8:] == (0, 255, 0)).all()


@pytest.mark.parametrize(
    ("writer", "colour"),
    [(samples.write_rgba_png, (255, 0, 0)), (samples.write_la_png, (200,) * 3)],
)
def test_alpha_is_composited_on_the_background(tmp_path: Path, writer, colour) -> None:
    background = (0, 0, 255)
    img = pixels(decode(writer(tmp_path, alpha=128), background=background))
    expected = np.array(colour) * 128 / 255 + np.array(background) * 127 / 255
    assert np.abs(img - expected).max() <= 1
    opaque = pixels(decode(writer(tmp_path, name="opaque.png", alpha=255)))
    assert (opaque == colour).all()


def test_rgb_and_grey_png_transparency_colour_is_composited(tmp_path: Path) -> None:
    rgb = Image.fromarray(samples.pattern())
    rgb.save(tmp_path / "trns.png", transparency=tuple(int(v) for v in samples.pattern()[0, 0]))
    img = pixels(decode(tmp_path / "trns.png", background=(1, 2, 3)))
    assert tuple(img[0, 0]) == (1, 2, 3) and tuple(img[5, 5]) == tuple(samples.pattern()[5, 5])
    Image.new("L", (8, 8), 7).save(tmp_path / "grey.png", transparency=7)
    assert (pixels(decode(tmp_path / "grey.png", background=(1, 2, 3))) == (1, 2, 3)).all()


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "LAB"])
def test_uncommon_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    source = Image.fromarray(samples.pattern()).convert(mode)
    fmt = "PNG" if mode in ("1", "L", "P") else "TIFF"
    source.save(tmp_path / f"mode.{fmt.lower()}", fmt)
    out = decode(tmp_path / f"mode.{fmt.lower()}")
    assert out.tobytes() == source.convert("RGB").tobytes()
    if mode in ("CMYK", "YCbCr", "LAB"):  # colour models: the colours survive
        assert np.abs(pixels(out) - samples.pattern()).mean() < 3


@pytest.mark.parametrize(("orientation", "corner"), [(1, (0, 0)), (3, (23, 39)), (6, (0, 23))])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, corner) -> None:
    img = decode(samples.write_exif_rotated_jpeg(tmp_path, orientation))
    assert img.size == ((24, 40) if orientation == 6 else (40, 24))
    y, x = corner
    assert pixels(img)[y, x, 0] > 200 and pixels(img)[y, x, 1:].max() < 60


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    img = pixels(decode(samples.write_animated_gif(tmp_path)))
    assert (np.abs(img - (255, 0, 0)) <= 2).all()


# --- draft / reduce when the caller will shrink -----------------------------------------


def test_jpeg_draft_shrinks_but_never_below_the_requested_size(tmp_path: Path) -> None:
    path = samples.write_jpeg(tmp_path, size=(800, 600), quality=80)
    assert decode(path).size == (800, 600)
    for draft in [(100, 75), (128, 128), (64, 200), (799, 599)]:
        w, h = decode(path, draft_size=draft).size
        assert w >= draft[0] and h >= draft[1], draft
    assert decode(path, draft_size=(100, 75)).size[0] <= 200
    assert decode(path, draft_size=(1000, 1000)).size == (800, 600)


def test_draft_respects_exif_rotation(tmp_path: Path) -> None:
    big = Image.new("RGB", (640, 320), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    w, h = decode(tmp_path / "rot.jpg", draft_size=(40, 80)).size  # upright: 320 x 640
    assert 40 <= w < 320 and 80 <= h < 640 and h == 2 * w


def test_non_jpeg_shrinks_with_reduce(tmp_path: Path) -> None:
    path = samples.write_png(tmp_path, size=(480, 320))
    assert decode(path, draft_size=(48, 32)).size == (48, 32)
    assert decode(path, draft_size=(50, 50)).size == (80, 54)  # factor 6: ceil keeps >= 50


# --- resize policies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "size", "policy", "expected"),
    [
        (640, 480, 128, "stretch", (128, 128)),
        (640, 480, 128, "fit", (128, 96)),
        (480, 640, 128, "fit", (96, 128)),
        (1000, 333, 512, "fit", (512, 168)),  # 170.5 -> 168 (21.3 rounded to 21 eighths)
        (1000, 20, 256, "fit", (256, 8)),  # never below 8
        (100, 100, 64, "fit", (64, 64)),
        (12, 10, 64, "fit", (64, 56)),  # small images are scaled up: 53.3 -> 56
    ],
)
def test_target_size(w: int, h: int, size: int, policy: str, expected) -> None:
    out = target_size(w, h, size, policy)  # type: ignore[arg-type]
    assert out == expected and out[0] % 8 == 0 and out[1] % 8 == 0


@pytest.mark.parametrize("size", [0, -8, 100, 8.0])
def test_target_size_rejects_sizes_that_are_not_positive_multiples_of_8(size) -> None:
    with pytest.raises(ValueError):
        target_size(64, 64, size)


def test_target_size_rejects_unknown_policies() -> None:
    with pytest.raises(ValueError):
        target_size(64, 64, 64, "crop")  # type: ignore[arg-type]


def test_resize_matches_torchvision_pixel_for_pixel(tmp_path: Path) -> None:
    img = decode(samples.write_jpeg(tmp_path, size=(300, 200)))
    assert resize(img, 128, "stretch").tobytes() == transforms.Resize((128, 128))(img).tobytes()
    w, h = target_size(300, 200, 128, "fit")
    assert resize(img, 128, "fit").tobytes() == transforms.Resize((h, w))(img).tobytes()
    assert resize(img, 128, "fit").size == (128, 88)


def test_load_without_draft_is_decode_plus_resize(tmp_path: Path) -> None:
    path = samples.write_jpeg(tmp_path, size=(400, 300))
    exact = load(path, 64, "fit", draft=False)
    assert exact.tobytes() == resize(decode(path), 64, "fit").tobytes()
    fast = load(path, 64, "fit")
    assert fast.size == exact.size == (64, 48)
    assert np.abs(pixels(fast) - pixels(exact)).mean() < 4  # draft changes pixels a little
    # Reduce rounding (200x112 -> 67x38) must not change the output size (64x32, not 64x40).
    odd = samples.write_png(tmp_path, "odd.png", size=(200, 112))
    assert load(odd, 64).size == load(odd, 64, draft=False).size == (64, 32)
    with pytest.raises(ValueError):
        load(path, 60)
    with pytest.raises(ImageError):
        load(samples.write_empty(tmp_path), 64)


# --- tensors ----------------------------------------------------------------------------


def test_to_tensor_matches_torchvision_exactly() -> None:
    img = Image.fromarray(samples.pattern())
    tensor = to_tensor(img)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 32, 48)
    assert torch.equal(tensor, transforms.ToTensor()(img))
    assert tensor.is_contiguous()


def test_to_uint8_array_is_hwc_rgb() -> None:
    arr = to_uint8_array(Image.fromarray(samples.pattern()).convert("L"))
    assert arr.dtype == np.uint8 and arr.shape == (32, 48, 3)


def test_from_tensor_rounds_as_save_image(tmp_path: Path) -> None:
    t = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    save_image(t, tmp_path / "ref.png")
    with Image.open(tmp_path / "ref.png") as ref:
        assert from_tensor(t).tobytes() == ref.convert("RGB").tobytes()
    assert from_tensor(t.unsqueeze(0)).size == (24, 16)
    assert from_tensor(t.half()).size == (24, 16)
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(2, 4, 4))


def test_tensor_round_trip_is_lossless() -> None:
    img = Image.fromarray(samples.pattern())
    assert from_tensor(to_tensor(img)).tobytes() == img.tobytes()


# --- encode -----------------------------------------------------------------------------

METADATA = {"artd:model": "run-7 (a1b2c3)", "artd:source": "été/日本.jpg", "empty": ""}


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_encode_round_trips_pixels_and_metadata(fmt: str) -> None:
    img = Image.fromarray(samples.pattern())
    data = encode(img, fmt, metadata=METADATA)
    back = decode(data)
    assert back.size == img.size
    tolerance = 0 if fmt == "png" else 12
    assert np.abs(pixels(back) - samples.pattern()).mean() <= tolerance
    assert read_metadata(data) == METADATA
    assert read_metadata(encode(img, fmt)) == {}


def test_metadata_is_stored_where_other_tools_look() -> None:
    img = Image.fromarray(samples.pattern())
    with Image.open(io.BytesIO(encode(img, "png", metadata=METADATA))) as png:
        png.load()
        assert png.text == METADATA  # tEXt, or iTXt for the non-Latin-1 value
    with Image.open(io.BytesIO(encode(img, "jpeg", metadata=METADATA))) as jpeg:
        assert json.loads(jpeg.info["comment"]) == METADATA
    with Image.open(io.BytesIO(encode(img, "webp", metadata=METADATA))) as webp:
        xmp = webp.info["xmp"].decode()
        assert "x:xmpmeta" in xmp and "run-7 (a1b2c3)" in xmp and "日本" in xmp


def test_encode_options_and_errors() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert len(encode(img, "jpeg", quality=30)) < len(encode(img, "jpeg", quality=95))
    smooth = Image.fromarray(samples.pattern())  # noise does not compress at any level
    assert len(encode(smooth, "png", png_compress_level=9)) < len(
        encode(smooth, "png", png_compress_level=0)
    )
    assert encode(img.convert("RGBA"), "jpeg")[:3] == b"\xff\xd8\xff"
    with pytest.raises(ValueError):
        encode(img, "gif")
    with pytest.raises(ValueError):
        encode(img, "png", metadata={"": "no key"})


@pytest.mark.parametrize("policy", ["stretch", "fit"])
def test_draft_decoding_stays_close_to_a_full_decode(tmp_path: Path, policy: str) -> None:
    # Photo-like texture (gradients + grain): drafting straight to the target size was up to
    # 7/255 off; keeping twice the target bounds it. Pure white noise is worse (5/255).
    path = tmp_path / "big.jpg"
    textured_image(1600, 1200, seed=3).save(path, quality=90)
    fast = np.asarray(loading.load(path, 128, policy, draft=True)).astype(int)
    full = np.asarray(loading.load(path, 128, policy, draft=False)).astype(int)
    assert fast.shape == full.shape
    assert np.abs(fast - full).max() <= 3
    assert np.abs(fast - full).mean() < 1
