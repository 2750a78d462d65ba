"""Images for prompts: local files, data URLs and URLs, checked before anything is sent."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from llmrun.images import ImageError, load_image

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_a_local_png_is_read_and_typed_by_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "pic.dat"  # the extension says nothing: the signature decides
    path.write_bytes(PNG)
    image = load_image(str(path))
    assert image.media_type == "image/png"
    assert image.data == PNG
    assert image.data_url() == "data:image/png;base64," + base64.b64encode(PNG).decode()


def test_a_data_url_round_trips_and_a_url_is_passed_through() -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert load_image(url).data == PNG
    remote = load_image("https://example.test/a.jpg?x=1")
    assert remote.url == "https://example.test/a.jpg?x=1"
    assert remote.media_type == "image/jpeg"
    with pytest.raises(ImageError, match="needs the bytes"):
        remote.b64()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing.png"), "cannot read image"),
        (lambda p: (p / "t.png").write_text("not an image") and str(p / "t.png"), "not a PNG"),
        (lambda p: "data:image/png;base64,@@@", "not valid base64"),
        (lambda p: "data:image/png,rawtext", "must be base64"),
    ],
)
def test_unreadable_or_fake_images_are_record_errors(tmp_path: Path, make, message) -> None:
    with pytest.raises(ImageError, match=message) as info:
        load_image(make(tmp_path))
    assert info.value.code == "image"


def test_an_oversized_image_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG + b"\0" * 100)
    with pytest.raises(ImageError, match="over the 50 limit"):
        load_image(str(path), max_bytes=50)
