"""Images to run a detector on: one file, a folder, or the images of a COCO JSON, checked before anything runs.

Every function raises ``ValueError`` / ``FileNotFoundError`` with one line naming the file and the problem.
Only headers are read here (sizes, whether PIL knows the format); pixels are decoded by
:func:`defeat.data.coco.load_image` when the detector runs.

A folder is read non-recursively in sorted file-name order; hidden files (``.DS_Store``, ...) are ignored and
other files whose suffix is not an image format (``classes.txt``, label files, ...) are *skipped* and returned,
so that the caller can print one warning line listing them: real image folders often hold such files, and
refusing would force users to copy their images elsewhere. A file with an image suffix that PIL cannot read
is refused, since that is a damaged image rather than an unrelated file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from defeat.utils import read_json

#: suffixes (lower case) that count as images in a folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ImageList:
    """Images with COCO ids: ``images`` are ``{id, file_name, width, height}`` dicts (``file_name`` relative to
    ``root``), in the order they run. ``categories``: a COCO JSON's categories (None for a folder or a file)."""

    root: Path
    images: list[dict]
    categories: list[dict] | None = None
    skipped: list[Path] | None = None  # folder files that are not images (see the module docstring)
    source: str = ""

    def path(self, image: dict) -> Path:
        return self.root / image["file_name"]


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header; one-line errors for a missing file or one PIL cannot read."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or corrupt image ({type(err).__name__}: {err})") from None


def _suffixes() -> str:
    return ", ".join(IMAGE_SUFFIXES)


def list_folder(folder: Path) -> ImageList:
    """The images directly in ``folder``, sorted by file name, with ids 1..N; non-image files are skipped."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    if not files:
        what = f" ({len(skipped)} other files, e.g. {skipped[0].name})" if skipped else ""
        raise ValueError(f"{folder}: no images in this folder{what}; expected files ending in {_suffixes()}")
    images = []
    for i, path in enumerate(files):
        width, height = image_size(path)
        images.append({"id": i + 1, "file_name": path.name, "width": width, "height": height})
    return ImageList(folder, images, None, skipped, str(folder))


def single_image(path: Path) -> ImageList:
    """One image file, id 1."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{path}: not an image file (suffix {path.suffix or 'none'!r}; expected {_suffixes()}, "
            "a folder of images or a COCO JSON)"
        )
    width, height = image_size(path)
    return ImageList(
        path.parent, [{"id": 1, "file_name": path.name, "width": width, "height": height}], None, [], str(path)
    )


def coco_images(annotation_file: Path, images_dir: Path) -> ImageList:
    """The images of a COCO JSON (``images`` + ``categories``; annotations are not needed), in id order.

    Refused: no images, entries without an integer ``id`` / ``file_name``, images missing from ``images_dir``
    (the first few named), and files whose size differs from the JSON's ``width``/``height`` (boxes would not
    line up with its annotations). Missing ``width``/``height`` are taken from the files.
    """
    data = read_json(annotation_file)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise ValueError(f"{annotation_file}: not a COCO JSON (needs 'images' and 'categories' lists)")
    if not data["images"]:
        raise ValueError(f"{annotation_file}: no images listed")
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir}: image folder not found (the folder {annotation_file.name}'s "
            "file_name entries are relative to)"
        )
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{annotation_file}: images[{i}] needs an integer 'id' and a 'file_name'")
    ordered = sorted(data["images"], key=lambda im: im["id"])
    missing = [im["file_name"] for im in ordered if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{images_dir}: {len(missing)} of the {len(ordered)} images of {annotation_file} are "
            f"missing, e.g. {', '.join(missing[:3])}"
        )
    images = []
    for im in ordered:
        path = images_dir / im["file_name"]
        width, height = image_size(path)
        if (im.get("width"), im.get("height")) not in ((width, height), (None, None)):
            raise ValueError(
                f"{path}: image is {width}x{height}, {annotation_file.name} says {im.get('width')}x{im.get('height')}"
            )
        images.append({"id": im["id"], "file_name": im["file_name"], "width": width, "height": height})
    return ImageList(images_dir, images, list(data["categories"]), [], str(annotation_file))


def list_inputs(inputs: str | Path, images_dir: str | Path | None = None) -> ImageList:
    """An image file, a folder of images, or a COCO JSON (``.json``; then ``images_dir`` is its image folder)."""
    path = Path(inputs)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (expected an image, a folder of images or a COCO JSON)")
    if path.is_dir():
        if images_dir is not None:
            raise ValueError(f"{path}: images_dir is only for a COCO JSON input, not for a folder")
        return list_folder(path)
    if path.suffix.lower() == ".json":
        if images_dir is None:
            raise ValueError(
                f"{path}: a COCO JSON input needs images_dir (--images DIR: the folder its file_name "
                "entries are relative to)"
            )
        return coco_images(path, Path(images_dir))
    if images_dir is not None:
        raise ValueError(f"{path}: images_dir is only for a COCO JSON input, not for an image file")
    return single_image(path)
