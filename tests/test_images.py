"""Image decoding: EXIF orientation, every pixel mode to 8-bit RGB, and typed errors for bad bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffcoremix.data.images import BACKGROUND, decode_image, is_image_file, open_image, read_bytes, to_rgb
from diffcoremix.errors import DiffCoReMixError, ImageReadError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width x height`` RGB, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def error_kind(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageReadError) as info:
        decode_image(data, "x.img", **kwargs)
    return info.value.kind


def marked_40x20() -> Image.Image:
    """A blue 40x20 image whose top-left 4x4 block is red."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 4, 4))
    return image


# --- EXIF orientation ------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_to_portrait_and_moves_the_corner(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored row 0 is the visual right side: rotate 90 degrees clockwise to display
    path = save(marked_40x20(), tmp_path / "rotated.png", exif=exif.tobytes())

    image = open_image(path)

    assert image.mode == "RGB"
    assert image.size == (20, 40)
    # The stored top-left corner ends up at the displayed top-right corner.
    assert image.getpixel((19, 0)) == RED
    assert image.getpixel((0, 0)) == BLUE
    assert image.getpixel((19, 39)) == BLUE


def test_exif_orientation_3_rotates_180_and_keeps_the_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    image = open_image(save(marked_40x20(), tmp_path / "upside_down.png", exif=exif.tobytes()))
    assert image.size == (40, 20)
    assert image.getpixel((39, 19)) == RED
    assert image.getpixel((0, 0)) == BLUE


def test_exif_orientation_in_a_jpeg(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    image = open_image(save(marked_40x20(), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)
    corner = image.getpixel((18, 1))  # inside the red block, away from JPEG edge ringing
    assert corner[0] > 200
    assert corner[2] < 60


def test_image_without_exif_is_unchanged(tmp_path: Path) -> None:
    image = open_image(save(marked_40x20(), tmp_path / "plain.png"))
    assert image.size == (40, 20)
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((39, 19)) == BLUE


# --- modes to RGB ----------------------------------------------------------------------------------------------


def test_grayscale_l_becomes_rgb(tmp_path: Path) -> None:
    gray = Image.new("L", (5, 3), 77)
    gray.putpixel((4, 2), 200)
    image = open_image(save(gray, tmp_path / "gray.png"))
    assert (image.mode, image.size) == ("RGB", (5, 3))
    assert image.getpixel((0, 0)) == (77, 77, 77)
    assert image.getpixel((4, 2)) == (200, 200, 200)


def test_palette_p_becomes_rgb_through_the_palette(tmp_path: Path) -> None:
    palette = Image.new("P", (5, 3), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 1), 1)
    path = save(palette, tmp_path / "palette.png")
    assert decode_image(path.read_bytes()).mode == "P"

    image = open_image(path)
    assert (image.mode, image.size) == ("RGB", (5, 3))
    assert image.getpixel((0, 0)) == (10, 20, 30)
    assert image.getpixel((1, 1)) == (200, 100, 50)


def test_palette_transparency_composites_on_white(tmp_path: Path) -> None:
    palette = Image.new("P", (5, 3), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 1), 1)
    image = open_image(save(palette, tmp_path / "palette_trns.png", transparency=0))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE  # index 0 is transparent, whatever colour it holds
    assert image.getpixel((1, 1)) == (200, 100, 50)


def test_rgba_transparent_pixels_composite_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 255, 0, 0))  # fully transparent green: must not show as green
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black over white
    image = open_image(save(rgba, tmp_path / "rgba.png"))
    assert (image.mode, image.size) == ("RGB", (6, 4))
    assert BACKGROUND == WHITE
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 2)) == RED
    # 0 * 128/255 + 255 * 127/255 = 127 per channel.
    assert all(abs(c - 127) <= 1 for c in image.getpixel((1, 0)))


def test_la_composites_on_white(tmp_path: Path) -> None:
    la = Image.new("LA", (6, 4), (100, 255))
    la.putpixel((0, 0), (0, 0))
    image = open_image(save(la, tmp_path / "la.png"))
    assert (image.mode, image.size) == ("RGB", (6, 4))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((2, 2)) == (100, 100, 100)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    cmyk.paste((0, 0, 0, 0), (8, 0, 16, 8))  # no ink at all: white
    path = save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert decode_image(path.read_bytes()).mode == "CMYK"

    image = open_image(path)
    assert (image.mode, image.size) == ("RGB", (16, 8))
    red = image.getpixel((2, 4))
    white = image.getpixel((13, 4))
    assert red[0] > 240
    assert max(red[1], red[2]) < 15
    assert min(white) > 240


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 257 * 100, 32768]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "gray16.png")
    decoded = decode_image(path.read_bytes())
    assert decoded.mode.startswith("I")  # "I;16" (or "I" on older Pillow): really 16-bit on disk

    image = open_image(path)
    assert (image.mode, image.size) == ("RGB", (4, 1))
    # 255/65535 per step: 65535 -> 255, 25700 -> 100, 32768 -> 127.50... -> 128.
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), WHITE, (100, 100, 100), (128, 128, 128)]


def test_32_bit_integer_mode_i_scales_only_when_above_8_bit() -> None:
    small = to_rgb(Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)))
    assert small.mode == "RGB"
    assert [small.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), WHITE]

    wide = to_rgb(Image.fromarray(np.array([[0, 65535, 257 * 100]], dtype=np.int32)))
    assert [wide.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), WHITE, (100, 100, 100)]


def test_float_mode_f_in_unit_range_is_scaled_to_255() -> None:
    image = to_rgb(Image.fromarray(np.array([[0.0, 1.0, 0.5]], dtype=np.float32)))
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), WHITE, (128, 128, 128)]


def test_1_bit_image_becomes_black_and_white_rgb(tmp_path: Path) -> None:
    bits = Image.new("1", (9, 7), 0)
    bits.putpixel((2, 3), 1)
    image = open_image(save(bits, tmp_path / "bits.png"))
    assert (image.mode, image.size) == ("RGB", (9, 7))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((2, 3)) == WHITE


def test_grayscale_and_rgb_with_a_transparent_colour_composite_on_white(tmp_path: Path) -> None:
    gray = Image.new("L", (4, 4), 50)
    gray.putpixel((0, 0), 9)
    image = open_image(save(gray, tmp_path / "gray_trns.png", transparency=9))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) == (50, 50, 50)

    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    rgb.putpixel((0, 0), (9, 9, 9))
    image = open_image(save(rgb, tmp_path / "rgb_trns.png", transparency=(9, 9, 9)))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) == (1, 2, 3)


def test_rgb_image_passes_through_pixel_exact(tmp_path: Path) -> None:
    source = noise(33, 17)
    image = open_image(save(source, tmp_path / "noise.png"))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(source))


def test_decode_image_keeps_the_files_own_mode() -> None:
    assert decode_image(encode(Image.new("L", (3, 3)))).mode == "L"
    assert decode_image(encode(Image.new("RGBA", (3, 3)))).mode == "RGBA"


# --- errors ----------------------------------------------------------------------------------------------------


def test_max_pixels_smaller_than_the_image_is_too_large() -> None:
    data = encode(noise(64, 48))
    assert error_kind(data, max_pixels=64 * 48 - 1) == "too_large"
    assert decode_image(data, max_pixels=64 * 48).size == (64, 48)  # exactly at the limit is allowed


def test_declared_huge_dimensions_are_too_large_before_decoding() -> None:
    # 100000 x 100000 = 1e10 pixels: past PIL's decompression-bomb error level.
    assert error_kind(png_header_only(100_000, 100_000)) == "too_large"
    # 10000 x 10000 = 1e8 pixels: past PIL's warning level (89,478,485) but below its error level.
    assert error_kind(png_header_only(10_000, 10_000)) == "too_large"


def test_empty_bytes_are_an_empty_file() -> None:
    assert error_kind(b"") == "empty_file"


def test_random_bytes_and_text_are_not_an_image() -> None:
    rng = np.random.default_rng(1)
    assert error_kind(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()) == "not_an_image"
    assert error_kind(b"hello, I am a text file named .png\n") == "not_an_image"


def test_jpeg_and_png_cut_in_half_are_truncated() -> None:
    jpeg = encode(noise(), "JPEG")
    png = encode(noise())
    assert error_kind(jpeg[: len(jpeg) // 2]) == "truncated"
    assert error_kind(png[: len(png) // 2]) == "truncated"


def test_valid_header_with_garbage_pixel_data_is_corrupt() -> None:
    rng = np.random.default_rng(2)
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        + png_chunk(b"IEND", b"")
    )
    assert error_kind(data) == "corrupt"


def test_image_read_error_names_the_file_and_is_a_library_error() -> None:
    with pytest.raises(ImageReadError) as info:
        decode_image(b"", "some/dir/empty.jpg")
    assert isinstance(info.value, DiffCoReMixError)
    assert info.value.path == Path("some/dir/empty.jpg")
    assert "some/dir/empty.jpg" in str(info.value)


def test_open_image_reports_file_level_failures(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        open_image(tmp_path / "empty.jpg")
    assert info.value.kind == "empty_file"

    with pytest.raises(ImageReadError) as info:
        open_image(tmp_path / "absent.jpg")
    assert info.value.kind == "missing"

    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageReadError) as info:
        open_image(tmp_path / "dangling.jpg")
    assert info.value.kind == "missing"

    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(ImageReadError) as info:
        read_bytes(tmp_path / "loop.jpg")
    assert info.value.kind == "symlink_loop"

    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageReadError) as info:
        open_image(tmp_path / "folder.png")
    assert info.value.kind == "not_an_image"


def test_open_image_with_max_pixels(tmp_path: Path) -> None:
    path = save(noise(10, 10), tmp_path / "n.png")
    with pytest.raises(ImageReadError) as info:
        open_image(path, max_pixels=99)
    assert info.value.kind == "too_large"
    assert open_image(path, max_pixels=100).size == (10, 10)


# --- extensions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("A.JPG", True),
        ("b.Png", True),
        ("c.jpeg", True),
        ("d.WebP", True),
        ("e.TIFF", True),
        ("dir/f.bmp", True),
        ("c.txt", False),
        ("jpg", False),
        ("g.jpg.txt", False),
        ("h", False),
    ],
)
def test_is_image_file_is_case_insensitive(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


def test_16_bit_gray_transparency_composites_on_white(tmp_path: Path) -> None:
    # Regression: the tRNS value of a 16-bit gray PNG used to be lost in the conversion to 8 bits.
    array = np.array([[0, 65535], [30000, 0]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(array).save(path, transparency=0)
    rgb = np.asarray(open_image(path))
    assert rgb[0, 0].tolist() == [255, 255, 255]  # transparent -> white background
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [255, 255, 255]  # opaque white
    assert rgb[1, 0].tolist() == [117, 117, 117]  # opaque 30000 / 65535 * 255
