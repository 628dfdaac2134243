"""The payloads behind Visage's custom ports. Frozen dataclasses of tensors and plain numbers.

Nothing here holds a model, so payloads are cheap to cache, copy between nodes and save.

Port type names (permanent once shipped):

* ``VISAGE_ANALYZER``  -> :class:`nodes.face.analyzer.FaceAnalyzer` (holds model handles)
* ``VISAGE_FACES``     -> :class:`FaceSet`
* ``VISAGE_EMBEDS``    -> :class:`FaceEmbeds`
* ``VISAGE_ALIGNED``   -> :class:`AlignedFaces`

Conventions
-----------
* Coordinates are pixels of the *source image* (x right, y down, pixel centres at integers,
  as OpenCV and insightface use them).
* ``bbox`` is ``[x1, y1, x2, y2]`` float32; ``kps`` is ``[5, 2]`` float32 in insightface order
  (left eye, right eye, nose, left mouth corner, right mouth corner — "left" as seen in the image).
* Embeddings are kept raw (as the recognizer outputs them; InstantID consumes these) and
  L2-normalised (IP-Adapter FaceID, Arc2Face and similarity use these).
* Affine matrices are float32 ``[2, 3]``; ``matrix`` maps source-image pixels to crop pixels,
  ``inverse`` maps crop pixels back to the source image (paste-back uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

VISAGE_ANALYZER = "VISAGE_ANALYZER"
VISAGE_FACES = "VISAGE_FACES"
VISAGE_EMBEDS = "VISAGE_EMBEDS"
VISAGE_ALIGNED = "VISAGE_ALIGNED"


@dataclass(frozen=True)
class Face:
    """One detected face in one image of a batch."""

    image_index: int  # index of the image in the IMAGE batch
    bbox: torch.Tensor  # [4] x1, y1, x2, y2 (pixels)
    score: float  # detector confidence
    kps: torch.Tensor  # [5, 2]
    landmarks_2d_106: Optional[torch.Tensor] = None  # [106, 2]
    landmarks_3d_68: Optional[torch.Tensor] = None  # [68, 3] (x, y in pixels, z relative)
    landmarks_2d_68: Optional[torch.Tensor] = None  # [68, 2] (from a 2D 68-point model, or 3d_68[:, :2])
    pose: Optional[torch.Tensor] = None  # [3] pitch, yaw, roll in degrees
    age: Optional[int] = None
    gender: Optional[str] = None  # "F" or "M"
    embedding: Optional[torch.Tensor] = None  # [D] raw recognizer output
    normed_embedding: Optional[torch.Tensor] = None  # [D] L2-normalised
    encoder: Optional[str] = None  # recognizer id of ``embedding``, e.g. "glintr100"
    # every recognizer that ran on this face: recognizer id -> raw embedding [D] (``embedding`` included)
    embeddings: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> Tuple[float, float]:
        return (float(self.bbox[0] + self.bbox[2]) / 2.0, float(self.bbox[1] + self.bbox[3]) / 2.0)

    @property
    def landmarks_68(self) -> Optional[torch.Tensor]:
        """68 2D landmarks from whichever model supplied them (2D model preferred)."""
        if self.landmarks_2d_68 is not None:
            return self.landmarks_2d_68
        if self.landmarks_3d_68 is not None:
            return self.landmarks_3d_68[:, :2]
        return None

    @property
    def embedding_dim(self) -> int:
        return 0 if self.embedding is None else int(self.embedding.shape[-1])

    @property
    def recognizers(self) -> Tuple[str, ...]:
        """Ids of the recognizers whose embedding this face carries (primary first)."""
        ids = list(self.embeddings)
        if self.embedding is not None and (self.encoder or "unknown") not in ids:
            ids.insert(0, self.encoder or "unknown")
        elif self.encoder in ids:
            ids.remove(self.encoder)
            ids.insert(0, self.encoder)
        return tuple(ids)

    def embedding_for(self, recognizer: str) -> Optional[torch.Tensor]:
        """Raw embedding of ``recognizer`` (an id, e.g. "w600k_r50"), or None when it did not run."""
        e = self.embeddings.get(recognizer)
        if e is None and recognizer == self.encoder:
            e = self.embedding
        return e

    def with_embedding(self, recognizer: str, raw: torch.Tensor) -> "Face":
        """This face with one more recognizer's embedding (the first one also becomes the primary)."""
        emb = dict(self.embeddings)
        emb[recognizer] = raw
        if self.embedding is None:
            return replace(
                self,
                embeddings=emb,
                embedding=raw,
                normed_embedding=raw / raw.norm().clamp_min(1e-12),
                encoder=recognizer,
            )
        return replace(self, embeddings=emb)

    def with_(self, **changes) -> "Face":
        return replace(self, **changes)


@dataclass(frozen=True)
class FaceSet:
    """Faces per image of an IMAGE batch (the ``VISAGE_FACES`` port).

    ``faces[i]`` is the tuple of faces kept for image ``i`` after selection, in the selection's
    order. ``image_sizes[i]`` is ``(height, width)``. An image without a face has an empty tuple.
    """

    faces: Tuple[Tuple[Face, ...], ...]
    image_sizes: Tuple[Tuple[int, int], ...]
    analyzer: str = ""  # analyzer description (pack name), for messages
    selection: str = "all"  # how faces were chosen
    # after on_no_face='skip': entry i describes image source_indices[i] of the analysed batch of
    # source_batch images; () = one entry per analysed image (nothing was left out)
    source_indices: Tuple[int, ...] = ()
    source_batch: int = 0

    def __post_init__(self):
        if len(self.faces) != len(self.image_sizes):
            raise ValueError("FaceSet: faces and image_sizes must have one entry per image")

    @property
    def batch_size(self) -> int:
        return len(self.faces)

    @property
    def count(self) -> int:
        return sum(len(f) for f in self.faces)

    def counts(self) -> Tuple[int, ...]:
        return tuple(len(f) for f in self.faces)

    def flat(self) -> Tuple[Face, ...]:
        return tuple(f for per_image in self.faces for f in per_image)

    def images_without_face(self) -> Tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.faces) if len(f) == 0)

    def for_image(self, i: int) -> Tuple[Face, ...]:
        return self.faces[i]

    @property
    def analysed_batch(self) -> int:
        """Images in the batch that was analysed (more than ``batch_size`` after 'skip')."""
        return self.source_batch or self.batch_size

    def rows_for(self, n_images: int) -> Optional[Tuple[int, ...]]:
        """Which image of an ``n_images`` batch each entry of ``faces`` describes, or None when the
        batch is neither the kept images nor the whole analysed batch."""
        if n_images == self.batch_size:
            return tuple(range(self.batch_size))
        if self.source_indices and n_images == self.source_batch:
            return self.source_indices
        return None


@dataclass(frozen=True)
class FaceEmbeds:
    """Identity embeddings (the ``VISAGE_EMBEDS`` port).

    ``raw`` and ``normed`` are ``[K, D]``: K identities (after fusion usually K == 1; several when
    a node keeps one embedding per face). ``sources`` counts how many faces went into each row.
    """

    raw: torch.Tensor
    normed: torch.Tensor
    encoder: str  # recognizer id of raw/normed
    sources: Tuple[int, ...] = ()
    fusion: str = "none"
    # the same identities in other recognizers' spaces: recognizer id -> raw [K, D']
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def recognizers(self) -> Tuple[str, ...]:
        return (self.encoder,) + tuple(r for r in self.extra if r != self.encoder)

    def for_recognizer(self, recognizer: str, normed: bool = True) -> Optional[torch.Tensor]:
        """[K, D] rows of ``recognizer`` (L2-normalised when ``normed``), or None when absent."""
        if recognizer == self.encoder:
            return self.normed if normed else self.raw
        raw = self.extra.get(recognizer)
        if raw is None:
            return None
        raw = raw.float()
        return raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normed else raw

    def __post_init__(self):
        if self.raw.ndim != 2 or self.raw.shape != self.normed.shape:
            raise ValueError(
                f"FaceEmbeds: raw and normed must both be [K, D]; got "
                f"{tuple(self.raw.shape)} and {tuple(self.normed.shape)}"
            )
        for k, v in self.extra.items():
            if v.ndim != 2 or v.shape[0] != self.raw.shape[0]:
                raise ValueError(
                    f"FaceEmbeds: extra[{k!r}] must be [K, D] with K = {self.raw.shape[0]}; got {tuple(v.shape)}"
                )

    @property
    def dim(self) -> int:
        return int(self.raw.shape[-1])

    @property
    def count(self) -> int:
        return int(self.raw.shape[0])

    @staticmethod
    def from_raw(
        raw: torch.Tensor,
        encoder: str,
        sources: Sequence[int] = (),
        fusion: str = "none",
        extra: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> "FaceEmbeds":
        raw = raw.detach().float().reshape(-1, raw.shape[-1]).cpu()
        normed = raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        extra = {
            k: v.detach().float().reshape(raw.shape[0], -1).cpu() for k, v in (extra or {}).items() if k != encoder
        }
        return FaceEmbeds(
            raw=raw,
            normed=normed,
            encoder=encoder,
            sources=tuple(sources) or (1,) * raw.shape[0],
            fusion=fusion,
            extra=extra,
        )


@dataclass(frozen=True)
class AlignedFaces:
    """Aligned crops plus the transforms to paste them back (the ``VISAGE_ALIGNED`` port)."""

    crops: torch.Tensor  # [N, S, S, 3] float 0..1 (ComfyUI IMAGE layout)
    matrix: torch.Tensor  # [N, 2, 3] source pixels -> crop pixels
    inverse: torch.Tensor  # [N, 2, 3] crop pixels -> source pixels
    image_index: torch.Tensor  # [N] long: which image of the batch each crop came from
    template: str  # "arcface_112", "ffhq_512", ...
    size: int
    image_sizes: Tuple[Tuple[int, int], ...] = field(default=())

    @property
    def count(self) -> int:
        return int(self.crops.shape[0])
