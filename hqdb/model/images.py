"""Images → pooled backbone features: an image featurizer stored with a model as configuration.

Needs the ``images`` extra (``pip install 'hqdb[images]'``: timm, open_clip, Pillow, on torch).
The state kept with a model is JSON: which library and backbone (a name timm or open_clip
knows), where its weights are (a local file, recorded with its SHA-256 so a changed file is
noticed, or ``null`` for the library's pretrained weights already in the user's Hugging Face
cache: nothing is downloaded), the square input size, the normalisation and the feature size.
No code is stored: the backbone is built by the library from its name, then the weights are
read as tensors only (``safetensors``, or ``torch.load(weights_only=True)``).

Preprocessing (Pillow, no torchvision transforms): RGB, the shorter side resized to
``image_size`` (bicubic), centre crop to ``image_size`` × ``image_size``, scaled to [0, 1],
normalised by ``mean`` / ``std``. The output is the backbone's pooled features (timm:
``num_classes=0``; open_clip: the image tower's embedding), float32 (N, dim).

Inputs, one per item: a file path (``str`` or ``os.PathLike``), the file's bytes, a PIL image,
or an image array (H, W), (H, W, 3) or (H, W, 4), uint8 or floats in [0, 1]. An unreadable
or corrupt image is a ``ValueError`` naming the item.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import math
import os
import re
import warnings

import numpy as np

from ..tabular import column_type

LIBRARIES = ("timm", "open_clip")
MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 16
MAX_DIM = 65536
MAX_PATH = 4096
BATCH = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")  # no path, no hub prefix
_SHA = re.compile(r"[0-9a-f]{64}\Z")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_BACKBONES: dict[tuple, object] = {}  # (library, name, weights, sha256) -> ready module (one per process)


def available() -> bool:
    """Whether the image stack (torch, timm, Pillow) is installed."""
    try:
        import PIL  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"this model featurizes images with {module}: install the extra (pip install 'hqdb[images]')"
        ) from None


def parse_backbone(spec: str) -> tuple[str, str]:
    """``'timm:resnet50'`` → ('timm', 'resnet50'); a bare name means timm."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone must be 'timm:NAME' or 'open_clip:NAME', got {spec!r}")
    library, sep, name = spec.partition(":")
    if not sep:
        library, name = "timm", spec
    library = library.replace("-", "_")
    if library not in LIBRARIES:
        raise ValueError(f"backbone {spec!r}: unknown library {library!r} (known: {', '.join(LIBRARIES)})")
    _check_name(name, library)
    return library, name


def _check_name(name, library: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"featurizer state: backbone name {name!r:.80} is not a {library} model name")


def _known(library: str, name: str) -> None:
    """Refuse a backbone the library does not list (before it builds anything)."""
    if library == "timm":
        timm = _need("timm")
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
    else:
        open_clip = _need("open_clip")
        if name not in open_clip.list_models():
            raise ValueError(f"open_clip has no model {name!r} (see open_clip.list_models())")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str) -> dict:
    """Tensors of a weights file: ``.safetensors``, or a torch file read with
    ``weights_only=True`` (a checkpoint dict holding ``state_dict`` / ``model`` is unwrapped)."""
    torch = _need("torch")
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the file is someone else's bytes: any failure is "cannot read"
        raise ValueError(f"cannot read weights file {path!r}: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ValueError(f"weights file {path!r} does not hold a state dict (names -> tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_weights(
    module, sd: dict, path: str, optional_prefixes: tuple[str, ...], unused: tuple[str, ...] = ()
) -> None:
    """Load ``sd`` into ``module``: every parameter must be given, except those under ``unused``
    (a part of the model the featurizer does not run: CLIP's image tower for its text); extra
    tensors are allowed only under ``optional_prefixes`` (a classifier head it does not use)."""
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(unused)} if unused else module.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own and not k.startswith(optional_prefixes + unused)]
    if missing or extra:
        what = (f"{len(missing)} missing, e.g. {missing[:3]}" if missing else "") + (
            f"{'; ' if missing else ''}{len(extra)} unexpected, e.g. {extra[:3]}" if extra else ""
        )
        raise ValueError(f"weights file {path!r} does not fit this backbone ({what})")
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"weights file {path!r} does not fit this backbone: {k} has shape {tuple(sd[k].shape)}, "
            f"the backbone needs {tuple(own[k].shape)}"
        )
    result = module.load_state_dict({k: sd[k] for k in own}, strict=not unused)
    if unused and (result.unexpected_keys or any(not k.startswith(unused) for k in result.missing_keys)):
        raise ValueError(f"weights file {path!r} does not fit this model")


def _build(library: str, name: str, weights: str | None, part: str = "image"):
    """The backbone module in eval mode, its weights loaded (never downloaded); ``part`` "text":
    the whole open_clip model, of which only the text tower's weights are needed."""
    _known(library, name)
    torch = _need("torch")
    if weights is None:
        raise ValueError(f"the {library} backbone {name!r} needs a weights file")
    if library == "timm":
        import timm

        try:
            module = timm.create_model(name, pretrained=False, num_classes=0)
        except Exception as e:
            raise ValueError(f"timm cannot build {name!r}: {type(e).__name__}: {e}") from None
        head = module.pretrained_cfg.get("classifier") or "fc"
        heads = tuple(f"{h}." for h in ([head] if isinstance(head, str) else head))
        _load_weights(module, read_state_dict(weights), weights, heads)
    else:
        import open_clip

        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg") or {}
        if part == "text" and (text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")):
            raise ValueError(
                f"open_clip's {name!r} uses a Hugging Face text model or tokenizer, which hqdb does not fetch: "
                "use a model with open_clip's own tokenizer (e.g. ViT-B-32)"
            )
        try:
            logging.disable(logging.WARNING)  # "no pretrained weights loaded": they are loaded next
            try:
                model = open_clip.create_model(name, pretrained=None, device="cpu")
            finally:
                logging.disable(logging.NOTSET)
        except Exception as e:
            raise ValueError(f"open_clip cannot build {name!r}: {type(e).__name__}: {e}") from None
        sd = read_state_dict(weights)
        if part == "text":
            _load_weights(model, sd, weights, (), unused=("visual.",))
            model.visual = torch.nn.Identity()  # not run: the text tower alone
            module = model
        else:
            # Either the whole CLIP state dict or the image tower's own.
            if any(k.startswith("visual.") for k in sd):
                sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
            _load_weights(model.visual, sd, weights, ())
            module = model.visual
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    del torch
    return module


def cached_weights(library: str, name: str) -> str:
    """The local file of timm's pretrained weights for ``name`` in the user's Hugging Face cache
    (``HF_HUB_CACHE``, default ~/.cache/huggingface/hub); never downloads."""
    if library != "timm":
        raise ValueError(f"{library} backbones need a weights file (weights=...)")
    timm = _need("timm")
    _known(library, name)
    cfg = timm.models.get_pretrained_cfg(name)
    repo_id = getattr(cfg, "hf_hub_id", None)
    if not repo_id:
        raise ValueError(f"timm's {name!r} has no Hugging Face weights to find in a cache: give a weights file")
    from huggingface_hub import try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE") or None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    raise ValueError(
        f"timm's pretrained weights of {name!r} ({repo_id}) are not in the Hugging Face cache here "
        "(hqdb never downloads): fetch them once (e.g. timm.create_model(name, pretrained=True)) or give a weights file"
    )


def _backbone(library: str, name: str, weights: str | None, sha256: str | None, part: str = "image"):
    key = (library, name, weights, sha256, part)
    if key not in _BACKBONES:
        if weights is not None:
            if not os.path.isfile(weights):
                raise ValueError(
                    f"the model's image featurizer reads its {library} weights from {weights!r}, which does not "
                    "exist here: put the file there (the same file the model was trained with)"
                )
            if sha256 is not None and file_sha256(weights) != sha256:
                raise ValueError(
                    f"weights file {weights!r} is not the one the model was trained with (SHA-256 differs): "
                    "its features, and so the codes, would not match"
                )
        _BACKBONES[key] = _build(library, name, weights, part)
    return _BACKBONES[key]


def _describe(value) -> str:
    if isinstance(value, (str, os.PathLike)):
        return repr(os.fspath(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {value.shape}"
    return type(value).__name__


def is_image_value(value) -> bool:
    """Whether ``value`` is an image input (not a feature vector): a path, bytes, a PIL image,
    or an array with 2 or more dimensions whose last is 3/4 channels or which is 2-D uint8."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if type(value).__module__.startswith("PIL.") and hasattr(value, "convert"):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 3 or (value.ndim == 2 and value.dtype == np.uint8)
    return False


def open_image(value, where: str):
    """An input as an RGB PIL image; ``ValueError`` naming ``where`` if it cannot be read."""
    pil = _need("PIL")
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(value, (str, os.PathLike)):
                with Image.open(os.fspath(value)) as im:
                    im.load()
                    return im.convert("RGB")
            if isinstance(value, (bytes, bytearray, memoryview)):
                with Image.open(io.BytesIO(bytes(value))) as im:
                    im.load()
                    return im.convert("RGB")
            if isinstance(value, Image.Image):
                value.load()
                return value.convert("RGB")
            if isinstance(value, np.ndarray):
                return _from_array(value, Image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"{where} ({_describe(value)}) is not a readable image: {e}") from None
    del pil
    raise ValueError(
        f"{where}: expected an image file path, bytes, a PIL image or an image array, got {_describe(value)}"
    )


def _from_array(a: np.ndarray, Image):
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or min(a.shape[:2]) < 1:
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError("a float image array must hold values in [0, 1]")
        u8 = np.round(a * 255).astype(np.uint8)
    else:
        raise ValueError(f"an image array must be uint8 or float in [0, 1], got {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(u8)).convert("RGB")


class ImageFeaturizer:
    """A backbone's pooled features of images (see the module docstring); stateless apart from
    its configuration, which :meth:`state` returns as JSON-able values."""

    kind = "image"

    def __init__(
        self,
        library: str,
        backbone: str,
        weights: str | None,
        *,
        image_size: int,
        dim: int,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        sha256: str | None = None,
        threads: int = 1,
    ):
        self.library, self.backbone, self.weights, self.sha256 = library, backbone, weights, sha256
        self.image_size, self.dim = image_size, dim
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.threads = threads

    # -------------------------------------------------------------- creation
    @classmethod
    def create(cls, backbone: str, weights=None, *, image_size: int | None = None, threads: int = 1) -> ImageFeaturizer:
        """Build the backbone once (checking the weights fit it) and return its featurizer:
        ``backbone`` 'timm:NAME' or 'open_clip:NAME', ``weights`` a local .safetensors / .pth
        state dict (None: timm's pretrained weights from the user's cache)."""
        library, name = parse_backbone(backbone)
        path = cached_weights(library, name) if weights is None else os.path.abspath(os.fspath(weights))
        if not os.path.isfile(path):
            raise ValueError(f"weights file {path!r} does not exist")
        sha = file_sha256(path)
        module = _backbone(library, name, path, sha)
        if library == "timm":
            cfg = getattr(module, "pretrained_cfg", {}) or {}
            size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
            mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        else:
            size = image_size or int(getattr(module, "image_size", (224, 224))[0])
            mean = getattr(module, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
            std = getattr(module, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        fz = cls(library, name, path, image_size=size, dim=1, mean=mean, std=std, sha256=sha, threads=threads)
        fz._validate()
        probe = fz._forward([np.zeros((size, size, 3), dtype=np.uint8)])
        fz.dim = int(probe.shape[1])
        fz._validate()
        return fz

    def state(self) -> dict:
        return {
            "type": "image",
            "library": self.library,
            "backbone": self.backbone,
            "weights": self.weights,
            "sha256": self.sha256,
            "image_size": self.image_size,
            "dim": self.dim,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_state(cls, state: dict) -> ImageFeaturizer:
        """Check a stored state (a hostile file's JSON) before anything is built from it."""
        if not isinstance(state, dict) or state.get("type") != "image":
            raise ValueError("featurizer state must be a dict with type 'image'")
        known = {"type", "library", "backbone", "weights", "sha256", "image_size", "dim", "mean", "std"}
        if set(state) - known:
            raise ValueError(f"featurizer state: unknown keys {sorted(set(state) - known)}")
        library = state.get("library")
        if library not in LIBRARIES:
            raise ValueError(f"featurizer state: 'library' must be one of {LIBRARIES}, got {library!r:.60}")
        _check_name(state.get("backbone"), library)
        weights, sha = state.get("weights"), state.get("sha256")
        if weights is not None and (
            not isinstance(weights, str) or not weights or len(weights) > MAX_PATH or "\x00" in weights
        ):
            raise ValueError("featurizer state: 'weights' must be a file path (or null)")
        if sha is not None and (not isinstance(sha, str) or not _SHA.match(sha)):
            raise ValueError("featurizer state: 'sha256' must be 64 lowercase hex digits (or null)")
        fz = cls(
            library,
            state["backbone"],
            weights,
            image_size=state.get("image_size"),  # type: ignore[arg-type]
            dim=state.get("dim"),  # type: ignore[arg-type]
            mean=_triple(state.get("mean"), "mean"),
            std=_triple(state.get("std"), "std"),
            sha256=sha,
        )
        fz._validate()
        return fz

    def _validate(self) -> None:
        for key, lo, hi in (("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), ("dim", 1, MAX_DIM)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"featurizer state: {key!r} must be an integer in {lo}..{hi}, got {v!r:.40}")
        if not all(s > 0 for s in self.std):
            raise ValueError("featurizer state: 'std' must be positive")

    # -------------------------------------------------------------- featurizing
    def fit(self, values) -> ImageFeaturizer:
        return self

    def fit_transform(self, values, **kw) -> np.ndarray:
        return self.transform(values, **kw)

    def _pixels(self, im) -> np.ndarray:
        from PIL import Image

        s = self.image_size
        w, h = im.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - s) // 2, (nh - s) // 2
        im = im.crop((left, top, left + s, top + s))
        pixels = np.asarray(im, dtype=np.float32) / np.float32(255.0)
        x = (pixels - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def _forward(self, images: list) -> np.ndarray:
        torch = _need("torch")
        module = _backbone(self.library, self.backbone, self.weights, self.sha256)
        prev = torch.get_num_threads()
        rows = []
        try:
            torch.set_num_threads(self.threads)
            with torch.inference_mode():
                # One image per forward pass: an image's features (so its codes) must not depend on
                # the batch it came in (batched convolutions differ in the last bits), and on a CPU
                # a batch is not faster.
                for v in images:
                    x = self._pixels(open_image(v, "image") if not _is_pil(v) else v)
                    try:
                        y = module(torch.from_numpy(x[None]))
                    except (RuntimeError, ValueError, AssertionError) as e:
                        raise ValueError(
                            f"the {self.library} backbone {self.backbone!r} cannot run on {self.image_size}-pixel "
                            f"images (a fixed-size backbone needs its own image_size): {e}"
                        ) from None
                    if isinstance(y, (tuple, list)):
                        y = y[0]
                    rows.append(y.float().reshape(-1).numpy())
        finally:
            torch.set_num_threads(prev)
        out = np.stack(rows)
        if not np.isfinite(out).all():
            raise ValueError(f"the {self.library} backbone {self.backbone!r} produced NaN or infinite features")
        return np.ascontiguousarray(out, dtype=np.float32)

    def transform(self, values, *, progress=None) -> np.ndarray:
        """Images → float32 (N, dim), ``BATCH`` at a time. ``progress``: a callable told how many
        images each batch finished (a progress bar's ``update``)."""
        single = isinstance(values, (str, os.PathLike, bytes, bytearray)) or _is_pil(values)
        if single or (isinstance(values, np.ndarray) and values.ndim in (2, 3) and is_image_value(values)):
            values = [values]
        values = list(values)
        n = len(values)
        out = np.zeros((n, self.dim), dtype=np.float32)
        for start in range(0, n, BATCH):
            chunk = values[start : start + BATCH]
            images = [
                open_image(v, f"image {start + i + 1} of {n}" if n > 1 else "the image") for i, v in enumerate(chunk)
            ]
            f = self._forward(images)
            if f.shape[1] != self.dim:
                raise ValueError(
                    f"the {self.library} backbone {self.backbone!r} makes {f.shape[1]}-d features, "
                    f"the model expects {self.dim}"
                )
            out[start : start + len(chunk)] = f
            if progress is not None:
                progress(len(chunk))
        return out


def _is_pil(value) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert")


def _triple(v, key: str) -> list[float]:
    if (
        not isinstance(v, list)
        or len(v) != 3
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    ):
        raise ValueError(f"featurizer state: {key!r} must be a list of 3 finite numbers")
    return [float(x) for x in v]


def image_files(folder: str) -> list[str]:
    """Image files directly in ``folder`` (by suffix, case-insensitive), sorted by name."""
    return sorted(
        f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))
    )


CAPTIONS_CSV = "captions.csv"


def read_folder(folder, captions=None) -> tuple[list[dict], dict[str, type]]:
    """The items of a folder of images: ``[{"file", "path", "caption", **metadata}]`` and the
    type of each metadata column.

    Captions come from a CSV (``captions``, default ``FOLDER/captions.csv`` if present) with a
    header ``file,caption[,more columns...]`` (``file`` relative to the folder; the extra columns
    are metadata, typed int / float / str by their values), else from sidecar text files
    (``photo.jpg`` + ``photo.txt``); an image without one has caption None. With a CSV, its rows
    are the items, in its order; without one, the folder's image files sorted by name."""
    import csv

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder!r} is not a folder")
    if captions is None and os.path.isfile(os.path.join(folder, CAPTIONS_CSV)):
        captions = os.path.join(folder, CAPTIONS_CSV)
    items: list[dict] = []
    types: dict[str, type] = {}
    if captions is not None:
        captions = os.fspath(captions)
        try:
            with open(captions, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"cannot read the captions file {captions!r}: {e}") from None
        if header[:2] != ["file", "caption"]:
            raise ValueError(f"{captions}: the header must start with 'file,caption' (got {','.join(header)!r:.80})")
        extra = header[2:]
        seen: set[str] = set()
        for line, r in enumerate(rows, start=2):
            if None in r or None in r.values():
                raise ValueError(f"{captions} line {line}: the number of fields differs from the header")
            rel = r["file"].strip()
            path = os.path.normpath(os.path.join(folder, rel))
            if not rel or not os.path.isfile(path):
                raise ValueError(f"{captions} line {line}: no image file {rel!r} in {folder!r}")
            if rel in seen:
                raise ValueError(f"{captions} line {line}: {rel!r} is listed twice")
            seen.add(rel)
            items.append({"file": rel, "path": path, "caption": r["caption"] or None, **{k: r[k] for k in extra}})
        for k in extra:
            types[k] = column_type(it[k] for it in items if it[k] != "")
            for it in items:
                it[k] = None if it[k] == "" else types[k](it[k])
        return items, types
    for name in image_files(folder):
        path = os.path.join(folder, name)
        side = os.path.splitext(path)[0] + ".txt"
        caption = None
        if os.path.isfile(side):
            try:
                with open(side, encoding="utf-8") as f:
                    caption = f.read().strip() or None
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read the caption file {side!r}: {e}") from None
        items.append({"file": name, "path": path, "caption": caption})
    return items, types


class ClipTextFeaturizer:
    """Raw text → an open_clip model's text embeddings (L2-normalised, float32 (N, dim)), a text
    featurizer next to tf-idf and MiniLM. Stored as configuration like :class:`ImageFeaturizer`:
    the open_clip model name, the weights file's path and SHA-256 (a whole CLIP state dict, or its
    text tower's tensors alone), the embedding size. The tokenizer is open_clip's own BPE, which
    ships with the package (models that need a Hugging Face tokenizer are refused)."""

    kind = "text"

    def __init__(self, model: str, weights: str, *, dim: int, sha256: str | None = None, threads: int = 1):
        self.model, self.weights, self.sha256, self.dim, self.threads = model, weights, sha256, dim, threads

    @classmethod
    def create(cls, model: str, weights, *, threads: int = 1) -> ClipTextFeaturizer:
        """``model`` 'open_clip:NAME' (or NAME); ``weights`` a local state dict."""
        library, name = parse_backbone(model if ":" in model else f"open_clip:{model}")
        if library != "open_clip":
            raise ValueError(f"a CLIP text encoder comes from open_clip, got {model!r}")
        if weights is None:
            raise ValueError("an open_clip text encoder needs a weights file")
        path = os.path.abspath(os.fspath(weights))
        if not os.path.isfile(path):
            raise ValueError(f"weights file {path!r} does not exist")
        fz = cls(name, path, dim=1, sha256=file_sha256(path), threads=threads)
        fz.dim = int(fz._encode(["a photo"]).shape[1])
        _check_dim(fz.dim)
        return fz

    def state(self) -> dict:
        return {
            "type": "clip_text",
            "library": "open_clip",
            "model": self.model,
            "weights": self.weights,
            "sha256": self.sha256,
            "dim": self.dim,
        }

    @classmethod
    def from_state(cls, state: dict) -> ClipTextFeaturizer:
        if not isinstance(state, dict) or state.get("type") != "clip_text":
            raise ValueError("featurizer state must be a dict with type 'clip_text'")
        known = {"type", "library", "model", "weights", "sha256", "dim"}
        if set(state) - known:
            raise ValueError(f"featurizer state: unknown keys {sorted(set(state) - known)}")
        if state.get("library") != "open_clip":
            raise ValueError(f"featurizer state: 'library' must be 'open_clip', got {state.get('library')!r:.60}")
        _check_name(state.get("model"), "open_clip")
        weights, sha = state.get("weights"), state.get("sha256")
        if not isinstance(weights, str) or not weights or len(weights) > MAX_PATH or "\x00" in weights:
            raise ValueError("featurizer state: 'weights' must be a file path")
        if sha is not None and (not isinstance(sha, str) or not _SHA.match(sha)):
            raise ValueError("featurizer state: 'sha256' must be 64 lowercase hex digits (or null)")
        _check_dim(state.get("dim"))
        return cls(state["model"], weights, dim=state["dim"], sha256=sha)

    def fit(self, texts) -> ClipTextFeaturizer:
        return self

    def fit_transform(self, texts) -> np.ndarray:
        return self.transform(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = _need("torch")
        import open_clip

        model = _backbone("open_clip", self.model, self.weights, self.sha256, part="text")
        tokenizer = open_clip.get_tokenizer(self.model)
        prev = torch.get_num_threads()
        rows = []
        try:
            torch.set_num_threads(self.threads)
            with torch.inference_mode():
                for t in texts:  # one text per pass, as for images: a text's vector is its own
                    y = model.encode_text(tokenizer([t]), normalize=True)
                    rows.append(y.float().reshape(-1).numpy())
        finally:
            torch.set_num_threads(prev)
        out = np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"the open_clip text tower {self.model!r} produced NaN or infinite embeddings")
        return np.ascontiguousarray(out, dtype=np.float32)

    def transform(self, texts, *, strict: bool = True) -> np.ndarray:
        """Embeddings (N, dim); an empty text (no letters or digits) is refused: every such text
        would get the same code."""
        if isinstance(texts, str):
            raise TypeError("expected a sequence of strings, got a single string")
        texts = [str(t) for t in texts]
        for i, t in enumerate(texts):
            if strict and not any(c.isalnum() for c in t):
                which = f"text {i + 1} of {len(texts)}" if len(texts) > 1 else "the text"
                raise ValueError(f"{which} is empty (no words): give some words to encode")
        out = self._encode(texts)
        if out.shape[1] != self.dim:
            raise ValueError(
                f"open_clip {self.model!r} makes {out.shape[1]}-d embeddings, the model expects {self.dim}"
            )
        return out


def _check_dim(v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM:
        raise ValueError(f"featurizer state: 'dim' must be an integer in 1..{MAX_DIM}, got {v!r:.40}")
