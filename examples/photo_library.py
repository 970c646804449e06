"""A small local captioned-photo library on hqdb: stores photos (image features + caption +
album + year) in one SQLite file and answers text→image ("find photos of ...") and image→text
("what captions fit this photo?") queries.

Run it: ``python examples/photo_library.py --db library.db``. It fills the library from hqdb's
generated, clearly SYNTHETIC paired set (feature vectors standing in for a CNN's, short
captions), so it runs anywhere; swap in your own features and captions to use it for real.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

import hqdb


@dataclass
class Photo:
    path: str
    caption: str
    album: str
    year: int
    image: Optional[np.ndarray] = None  # the photo's features: an input of the model, not a column
    text: Optional[str] = None          # the caption as model input (also kept in `caption`)


class PhotoLibrary:
    """Photos in a collection ``photos`` of the database at ``path``, encoded by a stored model."""

    def __init__(self, path: str, model: str = "photos"):
        self.db = hqdb.connect(path)
        self.model = model
        self.photos = self.db.create_collection("photos", model=model, columns=Photo, key="path", exist_ok=True) \
            if model in [m["name"] for m in hqdb.list_models(self.db)] else None

    def train(self, image_features: np.ndarray, captions: Sequence[str], labels: np.ndarray, **options) -> None:
        """Train the encoders on example photos with labels (topics), once per library."""
        model = hqdb.train({"image": image_features, "text": list(captions), "labels": labels},
                           progress=False, **options)
        hqdb.save_model(self.db, self.model, model)
        self.photos = self.db.create_collection("photos", model=self.model, columns=Photo, key="path")

    def add(self, photos: Sequence[Photo]) -> list[int]:
        """Store photos (the caption is encoded as the photo's text); re-adding a path updates it."""
        items = [Photo(p.path, p.caption, p.album, p.year, image=p.image, text=p.caption) for p in photos]
        known = {row["path"] for row in self.photos}
        with self.db.transaction():  # one transaction: all photos or none
            self.photos.insert_all([p for p in items if p.path not in known])
            self.photos.upsert_all([p for p in items if p.path in known])
        rowid = {row["path"]: row["rowid"] for row in self.photos}
        return [rowid[p.path] for p in items]

    def find_photos(self, description: str, k: int = 5, album: str | None = None,
                    since: int | None = None) -> list[dict]:
        """Photos whose pictures match a description (text → image), best first."""
        where, args = [], []
        if album is not None:
            where.append("album = ?")
            args.append(album)
        if since is not None:
            where.append("year >= ?")
            args.append(since)
        hits = self.photos.search(text=description, target="image", k=k, where=" AND ".join(where) or None,
                                  where_args=args)
        return hits.to_dicts()

    def suggest_captions(self, image_features: np.ndarray, k: int = 3) -> list[str]:
        """Captions in the library that fit a photo's features (image → text), best first."""
        return [h.caption for h in self.photos.search(image=image_features, target="text", k=k)]

    def __len__(self) -> int:
        return len(self.photos)

    def close(self) -> None:
        self.db.close()


def build_demo_library(path: str, n_photos: int = 1500, seed: int = 0) -> tuple[PhotoLibrary, dict]:
    """A library of synthetic photos; returns it and the held-out part of the data."""
    from hqdb import datasets

    data = datasets.synthetic_pairs(n_photos + 100, seed=seed)
    topics = [str(data["label_names"][c]) for c in data["labels"]]
    library = PhotoLibrary(path)
    if library.photos is None:
        library.train(data["image"][:n_photos], [str(t) for t in data["text"][:n_photos]], data["labels"][:n_photos],
                      bits=32, epochs=10, seed=seed)
    library.add([Photo(path=f"/photos/{topics[i]}/{i:05d}.jpg", caption=str(data["text"][i]), album=topics[i],
                       year=2000 + i % 25, image=data["image"][i]) for i in range(n_photos)])
    held_out = {"image": data["image"][n_photos:], "topic": topics[n_photos:]}
    return library, held_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="library.db")
    args = parser.parse_args(argv)
    library, held_out = build_demo_library(args.db)
    print(f"{args.db}: {len(library)} photos (SYNTHETIC features and captions)")
    for description in ("a castle on a hill", "snow on the mountain peak"):
        print(f"\nphotos of {description!r}:")
        for hit in library.find_photos(description, k=5, since=2010):
            print(f"  {hit['path']:<32} {hit['year']}  {hit['caption']}")
    print(f"\ncaptions for a new photo (its topic: {held_out['topic'][0]}):")
    for caption in library.suggest_captions(held_out["image"][0]):
        print(f"  {caption}")
    library.close()


if __name__ == "__main__":
    main()
