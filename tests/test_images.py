"""Reading user images: colour conversion, orientation, limits, sizes and every error."""

import io

import numpy as np
import pytest
from PIL import Image

from somtok import limits
from somtok.errors import SomtokError
from somtok.tokenizer import images

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def solid(colour, size=(32, 32), mode="RGB"):
    return Image.new(mode, size, colour)


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


def png_bytes(img):
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    if transparent:
        img.info["transparency"] = 1
    return img


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (solid(100, mode="L"), (100, 100, 100)),
        (solid(1, mode="1"), WHITE),
        (palette_image(transparent=False), (0, 200, 0)),
        (palette_image(transparent=True), WHITE),
        (solid((50, 0), mode="LA"), WHITE),
        (solid((50, 255), mode="LA"), (50, 50, 50)),
        (solid((0, 0, 255, 0), mode="RGBA"), WHITE),
        (solid((255, 0, 0, 128), mode="RGBA"), (255, 127, 127)),
        (Image.fromarray(np.full((4, 4), 65535, np.uint16)), WHITE),
        (Image.fromarray(np.full((4, 4), 257 * 128, np.uint16)), (128, 128, 128)),
        (solid((0, 0, 0, 0), mode="CMYK"), WHITE),
    ],
    ids=["L", "1", "P", "P+transparency", "LA clear", "LA opaque", "RGBA clear", "RGBA half",
         "I;16 max", "I;16 mid", "CMYK"],
)  # fmt: skip
def test_to_rgb_converts_every_mode(img, expected):
    rgb = images.to_rgb(img)
    assert rgb.mode == "RGB"
    assert np.abs(np.subtract(rgb.getpixel((0, 0)), expected)).max() <= 1


def test_read_image_png_exactly_and_jpeg_closely(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = images.read_image(save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert png.mode == "RGB" and png.size == (32, 24)
    np.testing.assert_array_equal(np.asarray(png), pixels)

    jpeg = images.read_image(save(solid(BLUE), tmp_path / "b.jpg", quality=95))
    assert np.abs(np.asarray(jpeg).astype(int) - BLUE).max() <= 3


def test_read_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = images.read_image(save(solid(RED, (40, 20)), tmp_path / "r.jpg", exif=exif))
    assert img.size == (20, 40)


def test_read_image_takes_first_frame_and_16_bit(tmp_path):
    frames = [solid(RED, (8, 8)), solid(BLUE, (8, 8))]
    gif = save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert images.read_image(gif).getpixel((0, 0)) == RED

    wide = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert images.read_image(save(wide, tmp_path / "w.png")).getpixel((0, 0)) == WHITE


def test_read_image_bytes_reads_an_upload():
    img = images.read_image_bytes(png_bytes(solid(RED)), "upload.png")
    assert img.mode == "RGB" and img.getpixel((3, 3)) == RED
    with pytest.raises(SomtokError, match="'upload.png' could not be read"):
        images.read_image_bytes(b"GIF89a", "upload.png")


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "note.png").write_text("not an image")
    truncated = png_bytes(Image.fromarray(np.arange(3072, dtype=np.uint8).reshape(32, 32, 3)))
    (tmp_path / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    cases = {
        tmp_path / "missing.png": "does not exist",
        tmp_path: "is a folder",
        tmp_path / "note.png": "could not be read",
        tmp_path / "cut.png": "could not be read",
    }
    for path, words in cases.items():
        with pytest.raises(SomtokError, match=words) as err:
            images.read_image(path)
        assert str(path) in str(err.value)


def test_read_image_refuses_big_files_and_pixel_bombs(tmp_path, monkeypatch):
    big = save(solid(RED), tmp_path / "big.png")
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 50)
    with pytest.raises(SomtokError, match="bytes; expected at most 50"):
        images.read_image(big)
    monkeypatch.undo()

    # Above MAX_IMAGE_PIXELS Pillow's own guard fires while reading the header.
    bomb = save(Image.new("L", (4100, 4100)), tmp_path / "bomb.png")
    with pytest.raises(SomtokError, match="too many pixels") as err:
        images.read_image(bomb)
    assert "bomb.png" in str(err.value)

    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(SomtokError, match="32 x 32 = 1,024 pixels; expected at most 100"):
        images.read_image(big)


def test_conform_resizes_shorter_side_then_centre_crops():
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16], wide[:, 16:48], wide[:, 48:] = RED, BLUE, RED
    out = images.conform(Image.fromarray(wide), 32)
    assert out.size == (32, 32)
    assert (np.asarray(out) == BLUE).all()  # the red sides were cropped away

    assert images.conform(solid(RED, (100, 50)), 32).size == (32, 32)
    assert images.conform(solid(RED, (16, 20)), 32).size == (32, 32)
    square = solid(RED)
    assert images.conform(square, 32) is square


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save(solid(RED), folder / "a.png")
    save(solid(BLUE), folder / "b.jpg", quality=95)
    save(solid(90, mode="L"), folder / "c.png")
    save(solid((0, 0, 0, 0), mode="RGBA"), folder / "d.png")
    (folder / "e.png").write_bytes(b"\x89PNG broken")
    (folder / "notes.txt").write_text("ignored: not an image ending")
    return folder


def test_load_user_images_reads_a_folder_in_name_order(user_folder):
    with pytest.raises(SomtokError, match="e.png"):
        images.load_user_images([user_folder], 32)

    out = images.load_user_images([user_folder], 32, skip_errors=True)
    assert out.images.dtype == np.uint8 and out.images.shape == (4, 3, 32, 32)
    assert [n.rsplit("/", 1)[1] for n in out.names] == ["a.png", "b.jpg", "c.png", "d.png"]
    assert [s[0].rsplit("/", 1)[1] for s in out.skipped] == ["e.png"]
    assert tuple(out.images[0, :, 0, 0]) == RED
    assert tuple(out.images[2, :, 0, 0]) == (90, 90, 90)
    assert tuple(out.images[3, :, 0, 0]) == WHITE


def test_load_user_images_files_and_globs(user_folder):
    out = images.load_user_images([user_folder / "c.png", str(user_folder / "[ab].*")], 32)
    assert [n.rsplit("/", 1)[1] for n in out.names] == ["c.png", "a.png", "b.jpg"]

    for missing in [user_folder / "zz.png", str(user_folder / "*.webp")]:
        with pytest.raises(SomtokError, match="zz.png|matched no image"):
            images.load_user_images([missing], 32)
    (user_folder / "empty").mkdir()
    with pytest.raises(SomtokError, match="matched no image file"):
        images.load_user_images([user_folder / "empty"], 32)


def test_load_user_images_sizes(tmp_path):
    a = save(solid(RED, (48, 64)), tmp_path / "a.png")
    b = save(solid(BLUE, (48, 64)), tmp_path / "b.png")
    c = save(solid(BLUE, (20, 20)), tmp_path / "c.png")

    with pytest.raises(SomtokError, match=r"48 x 64; expected 32 x 32.*--resize"):
        images.load_user_images([a], 32)
    assert images.load_user_images([a], 32, resize=True).images.shape == (1, 3, 32, 32)
    assert images.load_user_images([a, b], None).images.shape == (2, 3, 64, 48)
    with pytest.raises(SomtokError, match=r"c.png.*20 x 20; expected 48 x 64"):
        images.load_user_images([a, c], None)
    with pytest.raises(SomtokError, match="resize needs an image size"):
        images.load_user_images([a], None, resize=True)


def test_load_user_images_refuses_extreme_aspect_even_with_resize(tmp_path):
    long = save(solid(RED, (640, 20)), tmp_path / "long.png")
    with pytest.raises(SomtokError, match="long.png.*side ratio"):
        images.load_user_images([long], 32, resize=True)
