"""A trainer's image archive: what it unpacks to, and each hostile or useless archive refused with a
422 (InputError) that says what is wrong."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from server.errors import InputError
from server.media.training_zip import ZipLimits, unpack

DEFAULTS = ZipLimits()


def png(colour: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def make_zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def refused(tmp_path: Path, archive: Path, limits: ZipLimits = DEFAULTS) -> str:
    with pytest.raises(InputError) as caught:
        unpack(archive, tmp_path / "out", limits)
    assert caught.value.status == 422
    return caught.value.message


def test_images_and_captions_unpack_in_name_order(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "set.zip",
        {
            "set/b.jpg": _jpeg((200, 0, 0)),
            "set/b.txt": "\ufeffa red square \n".encode(),
            "set/a.png": png((0, 0, 200)),
            "set/": b"",
            "__MACOSX/set/._a.png": b"\0\0junk",
            "set/.DS_Store": b"\0junk",
        },
    )
    images = unpack(archive, tmp_path / "out")
    assert [i.source for i in images] == ["set/a.png", "set/b.jpg"]
    assert [i.caption for i in images] == ["", "a red square"]
    assert [i.path.name for i in images] == ["0000.png", "0001.png"]
    assert (tmp_path / "out" / "0001.txt").read_text(encoding="utf-8") == "a red square"
    assert (tmp_path / "out" / "0000.txt").read_text(encoding="utf-8") == ""
    with Image.open(images[1].path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        red, green, blue = saved.getpixel((3, 3))  # type: ignore[misc]
        assert red > 150 and green < 60 and blue < 60


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 8 wide x 4 high, left half red, right half blue; EXIF orientation 6 says "rotate 90
    # degrees clockwise to display": seen upright it is 4 wide x 8 high with red on top.
    image = Image.new("RGB", (8, 4), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif)
    [unpacked] = unpack(make_zip(tmp_path / "set.zip", {"phone.png": out.getvalue()}), tmp_path / "out")
    assert (unpacked.width, unpacked.height) == (4, 8)
    with Image.open(unpacked.path) as saved:
        assert saved.size == (4, 8)
        assert saved.getpixel((2, 1)) == (255, 0, 0)
        assert saved.getpixel((2, 6)) == (0, 0, 255)


def test_not_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "set.zip"
    archive.write_bytes(png())
    assert "not a zip archive" in refused(tmp_path, archive)


def test_zip_bomb_by_ratio(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"bomb.png": b"\0" * (4 * 1024 * 1024)})
    message = refused(tmp_path, archive)
    assert "zip bomb" in message and "bomb.png" in message


def test_zip_bomb_with_a_lying_header(tmp_path: Path) -> None:
    # The headers say 100 bytes; 2 MiB of zeros are inside. Unpacking stops at the declared size and
    # the checksum no longer matches: refused, never written out in full.
    archive = make_zip(tmp_path / "liar.zip", {"liar.png": b"\0" * (2 * 1024 * 1024)})
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at : at + 4] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    message = refused(tmp_path, archive)
    assert "liar.png" in message and "cannot be unpacked" in message
    assert not (tmp_path / "out" / "0000.png").exists()


@pytest.mark.parametrize(
    "name", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "a\\..\\evil.png", "C:evil.png"]
)
def test_path_traversal(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "set.zip", {"ok.png": png(), name: png()})
    message = refused(tmp_path, archive)
    assert "outside the archive" in message and repr(name) in message
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out").exists()


def test_symbolic_link(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        zf.writestr("ok.png", png())
        zf.writestr(link, "/etc/passwd")
    assert "symbolic link" in refused(tmp_path, tmp_path / "set.zip")


def test_text_file_renamed_png(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png(), "b.png": b"just some text, not a picture\n"})
    message = refused(tmp_path, archive)
    assert "'b.png' is not an image" in message


def test_truncated_image(tmp_path: Path) -> None:
    whole = png(size=(64, 64))
    archive = make_zip(tmp_path / "set.zip", {"cut.png": whole[: len(whole) // 2]})
    assert "'cut.png' is not a complete image" in refused(tmp_path, archive)


def test_other_file_types(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png(), "notes.pdf": b"%PDF-1.4"})
    message = refused(tmp_path, archive)
    assert "'notes.pdf' is neither an image nor a caption" in message and ".jpg" in message


@pytest.mark.parametrize(
    "entries",
    [{}, {"readme.txt": b"hello"}, {"__MACOSX/._a.png": b"x", "empty/": b""}],
    ids=["empty", "captions-only", "nothing-usable"],
)
def test_nothing_usable(tmp_path: Path, entries: dict[str, bytes]) -> None:
    message = refused(tmp_path, make_zip(tmp_path / "set.zip", entries))
    assert "no images" in message or "has no image" in message


def test_caption_without_its_image(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png(), "b.txt": b"typo"})
    assert "caption 'b.txt' has no image" in refused(tmp_path, archive)


def test_two_images_one_name(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png(), "a.jpg": _jpeg((1, 2, 3))})
    assert "have the same name" in refused(tmp_path, archive)


def test_ten_thousand_tiny_files(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "set.zip", {f"{i:05d}.txt": b"x" for i in range(10_000)}, zipfile.ZIP_STORED
    )
    message = refused(tmp_path, archive)
    assert "10000 entries" in message and "at most 1000" in message


def test_too_many_images(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {f"{i}.png": png() for i in range(5)})
    assert "holds 5 images; at most 4" in refused(tmp_path, archive, ZipLimits(max_images=4))


def test_file_too_large(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"big.png": png(size=(256, 256))}, zipfile.ZIP_STORED)
    message = refused(tmp_path, archive, ZipLimits(max_entry_bytes=100))
    assert "'big.png' unpacks to" in message and "at most 100 per file" in message


def test_archive_too_large_in_all(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {f"{i}.png": png() for i in range(3)}, zipfile.ZIP_STORED)
    size = len(png())
    assert "unpacks to more than" in refused(tmp_path, archive, ZipLimits(max_total_bytes=2 * size + 1))


def test_too_many_pixels(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"wide.png": png(size=(100, 100))})
    assert "100 x 100 pixels" in refused(tmp_path, archive, ZipLimits(max_pixels=9999))


def test_caption_too_long_or_not_text(tmp_path: Path) -> None:
    long = make_zip(tmp_path / "long.zip", {"a.png": png(), "a.txt": b"x" * 20_000})
    assert "caption 'a.txt' is 20000 bytes" in refused(tmp_path, long)
    binary = make_zip(tmp_path / "bin.zip", {"a.png": png(), "a.txt": b"\xff\xfe\xfa"})
    assert "not UTF-8" in refused(tmp_path, binary)


def test_encrypted_entry(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png()})
    data = bytearray(archive.read_bytes())  # set the "encrypted" flag bit (zipfile cannot write one)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + offset] |= 0x1
    archive.write_bytes(bytes(data))
    assert "encrypted" in refused(tmp_path, archive)
