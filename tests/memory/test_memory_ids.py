"""Image ids are opaque and strictly validated: nothing path-shaped or mistyped reaches the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from memory_helpers import solid_image
from seedx_agent.memory import ImageMemory, InvalidImageIdError, UnknownImageError, validate_image_id


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "img_0123456789abcdef/../../x",
        "images/01/0123.png",
        "img_0123456789ABCDEF",  # upper case is not what the memory issues
        "img_0123456789abcde",  # 15 hex digits
        "img_0123456789abcdef0",
        "img_0123456789abcdef\n",
        " img_0123456789abcdef",
        "img_0123456789abcdeg",
        "",
        "x" * 10_000,
    ],
)
def test_path_shaped_and_malformed_ids_are_refused(memory: ImageMemory, bad_id: str) -> None:
    for call in (memory.get, memory.load, memory.lineage, memory.children, memory.delete, memory.image_path):
        with pytest.raises(InvalidImageIdError, match="is not an image id") as caught:
            call(bad_id)
        assert caught.value.image_id == bad_id
        assert len(str(caught.value)) < 400  # long junk is shortened in the message
    with pytest.raises(InvalidImageIdError):
        memory.search_image(bad_id)
    with pytest.raises(InvalidImageIdError):
        memory.add(solid_image((1, 1, 1)), kind="edited", namespace="u", parent_id=bad_id)


@pytest.mark.parametrize("bad_id", [None, 123, b"img_0123456789abcdef", ["img_0123456789abcdef"], Path("img_x")])
def test_wrong_types_are_refused(memory: ImageMemory, bad_id: object) -> None:
    with pytest.raises(InvalidImageIdError, match="image id must be a string"):
        memory.get(bad_id)  # type: ignore[arg-type]


def test_invalid_ids_are_a_kind_of_unknown_id(memory: ImageMemory) -> None:
    # Tools catch UnknownImageError once and tell the model the id does not exist.
    with pytest.raises(UnknownImageError):
        memory.load("../../etc/passwd")
    with pytest.raises(UnknownImageError, match="no image with id 'img_0123456789abcdef'") as caught:
        memory.load("img_0123456789abcdef")
    assert not isinstance(caught.value, InvalidImageIdError)


def test_issued_ids_are_random_and_valid(memory: ImageMemory) -> None:
    records = [memory.add(solid_image((5, 5, 5)), kind="input", namespace="u") for _ in range(5)]
    assert len({record.id for record in records}) == 5
    assert all(validate_image_id(record.id) == record.id for record in records)
