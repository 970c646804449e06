"""A trained encoder, ready to encode: numpy only (no torch), so the engine runs without it.

State = a JSON-able config + named float32 tensors (the database stores them as JSON and raw
little-endian blobs; nothing is pickled). Tensors:

- ``codebooks``: (books, codewords, bits), shared by all modalities (AQD works across them);
  absent when ``books`` is 0 (Hamming-only methods: chn, dcmh, lossless);
- per modality ``m``: ``m.input_mean``, ``m.input_scale`` (d,) — the input standardisation;
  ``m.layer{i}.weight`` (out, in) and ``m.layer{i}.bias`` (out,) of the tower's linear layers,
  ReLU between them. The last layer has ``bits + private`` outputs (tower config ``private``,
  default 0: SPDQ's modality-private units, used only in training); its ``output`` is
  ``linear`` (default), ``tanh`` or ``normalize`` (unit length, after keeping the first ``bits``);
  the search vector is its first ``bits`` values;
- optional ``hash.m.*``: a second tower per modality (config ``hash_towers``) whose signs give
  the bit code instead of the search vector's (the c+d baseline: DCMH bits, CDQ features).

Config keys beyond the towers: ``metric`` ('ip' or 'l2': how AQD compares a query with a
reconstruction), ``epsilon`` (CQ's constant inter-dictionary product, added to l2 distances),
``search`` (the search mode the method is meant for: two_stage, hamming, aqd or float).
"""

from __future__ import annotations

import re

import numpy as np
from numba import njit

from ..kernels import MAX_BITS
from . import aq
from .featurize import featurizer_from_state, is_image_featurizer

FORMAT = "hqdb-model/1"
ACTIVATIONS = ("relu",)
OUTPUTS = ("linear", "tanh", "normalize")
METRICS = ("ip", "l2")
SEARCHES = ("two_stage", "hamming", "aqd", "float")
MAX_BOOKS = MAX_BITS  # more books than bits quantize nothing more
MAX_AQ_ITERS = 100  # ICM rounds per encode (a stored config cannot make every query crawl)
# Modality names become SQL column names (input ``m``, codes ``m_code``/``m_qcode``, locators
# ``m_chunk``/``m_slot``): identifiers of at most 128 characters, anchored with \Z (``$`` would
# let a trailing newline through), none of the names an hq table uses itself
# (hqdb.engine.options.RESERVED, the same set).
_MODALITY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
RESERVED_NAMES = frozenset(
    {"rowid", "oid", "_rowid_", "code", "qcode", "distance", "hamming", "k", "candidates", "mode"}
)


def _int(cfg, key, lo, hi=None, where="config"):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{where}: {key!r} must be an integer {rng}, got {v!r}")
    return v


def _check_modality_names(mods: list[str]) -> None:
    """Modality names are SQL column names: identifiers, not reserved, and no two modalities'
    columns alike (SQLite compares column names case-insensitively)."""
    owner: dict[str, str] = {}
    for m in mods:
        if not _MODALITY.fullmatch(m):
            raise ValueError(f"config: modality name {m!r:.60} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        if m.lower() in RESERVED_NAMES:
            raise ValueError(f"config: modality name {m!r} is reserved by hq tables")
        for col in (m, f"{m}_code", f"{m}_qcode", f"{m}_chunk", f"{m}_slot"):
            if col.lower() in owner:
                raise ValueError(
                    f"config: modality {m!r} needs column {col!r}, already used by modality {owner[col.lower()]!r}"
                )
            owner[col.lower()] = m


@njit(cache=True)
def _dense(x, wt, b, relu):
    """x (N, d) @ wt (d, o) + b, each output summed over d in ascending order in float32 (inner
    loop over outputs: vectorised without reordering a sum), so a row's result never depends
    on the batch it comes in or on the machine's BLAS. Zero inputs are skipped (sparse tf-idf);
    that changes at most the sign of a zero."""
    n, d = x.shape
    o = wt.shape[1]
    out = np.empty((n, o), dtype=np.float32)
    acc = np.empty(o, dtype=np.float32)
    for i in range(n):
        for j in range(o):
            acc[j] = 0.0
        for k in range(d):
            v = x[i, k]
            if v != 0.0:
                for j in range(o):
                    acc[j] += v * wt[k, j]
        for j in range(o):
            y = acc[j] + b[j]
            out[i, j] = max(y, np.float32(0.0)) if relu else y
    return out


class TrainedModel:
    """Towers + codebooks of a trained model (see the module docstring for the state layout)."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray]):
        # Use from_state(): it validates. This only stores what it is given.
        self.config = config
        self._tensors = tensors
        self.modalities = tuple(config["modalities"])
        self.bits = config["bits"]
        self.books = config["books"]
        self.codewords = config["codewords"]
        self.codebooks = tensors.get("codebooks")  # None when books == 0
        self.metric = config.get("metric", "ip")
        self.epsilon = float(config.get("epsilon", 0.0))
        self.search = config.get("search", "two_stage")
        self._layers = {m: self._fold(m) for m in self.modalities}
        self._hash_layers = {m: self._fold(m, "hash.") for m in config.get("hash_towers") or {}}
        self._featurizers = {
            m: (featurizer_from_state(s) if s is not None else None) for m, s in config["featurizers"].items()
        }

    # ------------------------------------------------------------------ state
    @staticmethod
    def expected_shapes(config: dict) -> dict[str, tuple]:
        """Every tensor a config calls for, with its shape."""
        shapes: dict[str, tuple] = (
            {"codebooks": (config["books"], config["codewords"], config["bits"])} if config["books"] else {}
        )
        for prefix, towers in (("", config["towers"]), ("hash.", config.get("hash_towers") or {})):
            for m, tower in towers.items():
                d = tower["input_dim"]
                shapes[f"{prefix}{m}.input_mean"] = (d,)
                shapes[f"{prefix}{m}.input_scale"] = (d,)
                prev = d
                for i, width in enumerate(tower["layers"]):
                    shapes[f"{prefix}{m}.layer{i}.weight"] = (width, prev)
                    shapes[f"{prefix}{m}.layer{i}.bias"] = (width,)
                    prev = width
        return shapes

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, np.ndarray]) -> TrainedModel:
        """Rebuild a model, checking the config and every tensor's presence, shape and values;
        ``ValueError`` with a message naming the problem otherwise."""
        if not isinstance(config, dict):
            raise ValueError("model config must be a dict")
        if not isinstance(tensors, dict):
            raise ValueError("model tensors must be a dict of name -> array")
        if config.get("format") != FORMAT:
            raise ValueError(f"model config format {config.get('format')!r} is not {FORMAT!r}")
        bits = _int(config, "bits", 8, MAX_BITS)
        if bits % 8:
            raise ValueError(f"config: 'bits' must be a multiple of 8, got {bits}")
        _int(config, "books", 0, MAX_BOOKS)
        _int(config, "codewords", 1, 65536)
        _int({"aq_iters": config.get("aq_iters", 3)}, "aq_iters", 0, MAX_AQ_ITERS)
        if config.get("metric", "ip") not in METRICS:
            raise ValueError(f"config: 'metric' must be one of {METRICS}, got {config.get('metric')!r}")
        if config.get("search", "two_stage") not in SEARCHES:
            raise ValueError(f"config: 'search' must be one of {SEARCHES}, got {config.get('search')!r}")
        eps = config.get("epsilon", 0.0)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps):
            raise ValueError(f"config: 'epsilon' must be a finite number, got {eps!r}")
        mods = config.get("modalities")
        if (
            not isinstance(mods, list)
            or not mods
            or not all(isinstance(m, str) and m for m in mods)
            or len(set(mods)) != len(mods)
        ):
            raise ValueError(f"config: 'modalities' must be a non-empty list of distinct names, got {mods!r:.200}")
        _check_modality_names(mods)
        towers, feats = config.get("towers"), config.get("featurizers")
        if not isinstance(towers, dict) or set(towers) != set(mods):
            raise ValueError(f"config: 'towers' must describe exactly the modalities {mods}")
        if not isinstance(feats, dict) or set(feats) != set(mods):
            raise ValueError(f"config: 'featurizers' must have an entry (state or null) for each of {mods}")
        hash_towers = config.get("hash_towers")
        if hash_towers is not None and (not isinstance(hash_towers, dict) or set(hash_towers) != set(mods)):
            raise ValueError(f"config: 'hash_towers' must describe exactly the modalities {mods}")
        checks = [(m, towers[m], f"config tower {m!r}") for m in mods]
        checks += [(m, t, f"config hash tower {m!r}") for m, t in (hash_towers or {}).items()]
        for m, t, where in checks:
            if not isinstance(t, dict):
                raise ValueError(f"{where} must be a dict")
            d = _int(t, "input_dim", 1, where=where)
            if t is not towers[m] and d != towers[m].get("input_dim"):
                # encode() feeds the hash tower the main tower's input: another size would make
                # the dense kernel read past the hash tower's weights.
                raise ValueError(
                    f"{where}: input_dim is {d} but the {m!r} tower takes {towers[m].get('input_dim')!r} "
                    "inputs (both towers read the same features)"
                )
            layers = t.get("layers")
            if (
                not isinstance(layers, list)
                or not layers
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in layers)
            ):
                raise ValueError(f"{where}: 'layers' must be a non-empty list of positive widths")
            private = t.get("private", 0)
            if isinstance(private, bool) or not isinstance(private, int) or private < 0:
                raise ValueError(f"{where}: 'private' must be a non-negative integer, got {private!r}")
            if layers[-1] != bits + private:
                raise ValueError(
                    f"{where}: the last layer has {layers[-1]} outputs but the model has {bits} bits"
                    + (f" + {private} private units" if private else "")
                )
            if t.get("activation") not in ACTIVATIONS:
                raise ValueError(f"{where}: unknown activation {t.get('activation')!r} (known: {ACTIVATIONS})")
            if t.get("output", "linear") not in OUTPUTS:
                raise ValueError(f"{where}: unknown output {t.get('output')!r} (known: {OUTPUTS})")
            if feats[m] is not None:
                fz = featurizer_from_state(feats[m])
                if fz.dim != d:
                    raise ValueError(f"{where}: featurizer makes {fz.dim}-d vectors but input_dim is {d}")
        expected = cls.expected_shapes(config)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ValueError(f"model tensors missing: {missing}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ValueError(f"unexpected model tensors (not in the config): {extra}")
        clean = {}
        for name, shape in expected.items():
            arr = np.asarray(tensors[name])
            if arr.dtype.kind != "f":
                raise ValueError(f"tensor {name!r} must be floating point, got {arr.dtype}")
            if arr.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {arr.shape}, the config needs {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"tensor {name!r} contains NaN or infinity")
            clean[name] = np.ascontiguousarray(arr, dtype=np.float32)
        model = cls(config, clean)
        for prefix, folded in (("", model._layers), ("hash.", model._hash_layers)):
            for m, layers in folded.items():
                for i, (wt, b) in enumerate(layers):
                    if not (np.isfinite(wt).all() and np.isfinite(b).all()):
                        raise ValueError(
                            f"tensors {prefix}{m}.layer{i}.*: the weights overflow float32 once the input "
                            "standardisation is folded in"
                        )
        return model

    def _fold(self, m: str, prefix: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
        """(Wᵀ, b) per layer, float32, with the input standardisation (x − mean)·scale folded
        into the first layer, so sparse inputs stay sparse."""
        t = self._tensors
        towers = self.config["hash_towers"] if prefix else self.config["towers"]
        layers = []
        for i in range(len(towers[m]["layers"])):
            w = t[f"{prefix}{m}.layer{i}.weight"].astype(np.float64)
            b = t[f"{prefix}{m}.layer{i}.bias"].astype(np.float64)
            if i == 0:
                scale = t[f"{prefix}{m}.input_scale"].astype(np.float64)
                b = b - w @ (t[f"{prefix}{m}.input_mean"].astype(np.float64) * scale)
                w = w * scale
            with np.errstate(over="ignore", invalid="ignore"):  # from_state() refuses what overflows
                layers.append((np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32)))
        return layers

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(config, tensors): JSON-able config and float32 arrays; from_state() inverts it."""
        return self.config, dict(self._tensors)

    # ------------------------------------------------------------------ inference
    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"the model has no modality {modality!r} (it has: {', '.join(self.modalities)})")

    def has_featurizer(self, modality: str) -> bool:
        self._check_modality(modality)
        return self._featurizers[modality] is not None

    def has_image_featurizer(self, modality: str) -> bool:
        """Whether ``modality`` takes images (paths, bytes, PIL images, arrays) through a backbone."""
        self._check_modality(modality)
        return is_image_featurizer(self._featurizers[modality])

    def input_dim(self, modality: str) -> int:
        self._check_modality(modality)
        return self.config["towers"][modality]["input_dim"]

    def featurize(self, modality: str, values) -> np.ndarray:
        """Inputs of one modality → float32 (N, input_dim): raw strings go through the
        modality's tf-idf featurizer; feature arrays are checked for shape and NaN/inf."""
        self._check_modality(modality)
        fz = self._featurizers[modality]
        if is_image_featurizer(fz):
            return self._featurize_images(modality, fz, values)
        if isinstance(values, str):
            values = [values]
        is_text = (isinstance(values, np.ndarray) and values.dtype.kind in "UO") or (
            isinstance(values, (list, tuple)) and len(values) > 0 and isinstance(values[0], str)
        )
        if is_text:
            if fz is None:
                raise ValueError(
                    f"modality {modality!r} has no text featurizer: give float features of "
                    f"{self.input_dim(modality)} values per item"
                )
            return fz.transform(list(values))
        return self._features(modality, values)

    def _featurize_images(self, modality: str, fz, values) -> np.ndarray:
        """Images (or features of the backbone's size, as for any modality) → float32 (N, dim)."""
        from .images import is_image_value

        d = self.input_dim(modality)
        if (
            isinstance(values, np.ndarray)
            and values.dtype.kind in "fiu"
            and values.ndim <= 2
            and values.shape[-1:] == (d,)
            and not (values.ndim == 2 and values.dtype == np.uint8)
        ):
            return self._features(modality, values)
        if is_image_value(values) or (isinstance(values, np.ndarray) and values.ndim == 4):
            return fz.transform(values)
        values = list(values)
        if values and all(not is_image_value(v) for v in values):
            return self._features(modality, np.asarray(values))  # a list of feature vectors
        return fz.transform(values)

    def _features(self, modality: str, values) -> np.ndarray:
        x = np.asarray(values)
        if x.dtype.kind not in "fiu":
            raise ValueError(f"{modality!r} features must be numbers, got {x.dtype}")
        if x.ndim == 1:
            x = x[None, :]
        d = self.input_dim(modality)
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{modality!r} features must have shape (N, {d}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{modality!r} features contain NaN or infinity")
        return np.ascontiguousarray(x, dtype=np.float32)

    def embed(self, modality: str, X) -> np.ndarray:
        """The tower's forward pass (no torch): f ∈ R^bits per row, float32; bit i of the code is
        set iff f_i > 0 (``kernels.pack_bits``). A row's result is the same whatever batch it is in."""
        return self.encode(modality, X)[1]

    def encode(self, modality: str, X) -> tuple[np.ndarray, np.ndarray]:
        """(bit features, search vectors), both float32 (N, bits): the code is the signs of the
        first (``kernels.pack_bits``), AQD / float search uses the second. They are the same
        array unless the model has hash towers (c+d)."""
        x = self.featurize(modality, X)  # checks shape and NaN; strings work too
        f = self._forward(x, self._layers[modality], self.config["towers"][modality])
        bitf = f
        if modality in self._hash_layers:
            bitf = self._forward(x, self._hash_layers[modality], self.config["hash_towers"][modality])
        if not (np.isfinite(f).all() and np.isfinite(bitf).all()):
            raise ValueError(
                f"the model's {modality!r} tower overflows float32 on this input (its weights are too large)"
            )
        return bitf, f

    def _forward(self, x, layers, tower) -> np.ndarray:
        for i, (wt, b) in enumerate(layers):
            # from_state() made these agree; checked again here because the numba kernel trusts them.
            if (
                x.ndim != 2
                or wt.ndim != 2
                or x.shape[1] != wt.shape[0]
                or b.shape != (wt.shape[1],)
                or not (x.dtype == wt.dtype == b.dtype == np.float32)
                or not (x.flags.c_contiguous and wt.flags.c_contiguous)
            ):
                raise ValueError(
                    f"layer {i}: inputs of shape {x.shape} do not fit weights {wt.shape} and bias {b.shape}"
                )
            x = _dense(x, wt, b, i < len(layers) - 1)
        x = x[:, : self.bits]  # private units (SPDQ) only matter in training
        out = tower.get("output", "linear")
        if out == "tanh":
            x = np.tanh(x)
        elif out == "normalize":
            norm = np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True))
            x = x / np.maximum(norm, 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def quantize(self, F) -> np.ndarray:
        """Quantization codes (N, books) of features F with the model's codebooks (see aq.encode);
        (N, 0) when the model has no quantizer."""
        F = np.asarray(F)
        if F.ndim != 2 or F.shape[1] != self.bits:
            raise ValueError(f"features to quantize must have shape (N, {self.bits}), got {F.shape}")
        if not self.books:
            return np.zeros((F.shape[0], 0), dtype=np.uint8)
        return aq.encode(F, self.codebooks, iters=self.config.get("aq_iters", 3))

    def __repr__(self) -> str:
        return (
            f"TrainedModel({self.config.get('method')!r}, {self.bits} bits, "
            + (f"{self.books}x{self.codewords} codebooks" if self.books else "no quantizer")
            + f", modalities={self.modalities})"
        )
