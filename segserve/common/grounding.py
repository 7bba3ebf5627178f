"""Grounding DINO pre- and post-processing in numpy (no torch): it runs inside Triton Python models.

Three parts, each matching what transformers does around `GroundingDinoForObjectDetection`:

1. Text. `normalize_caption` turns a caption or a list of labels into the form the model was
   trained on: lower-case phrases separated by '.', ending with '.' ("A cat. dog" and
   ["A cat", "dog"] both become "a cat. dog."). For a list of labels that is exactly what
   `GroundingDinoProcessor` builds (". ".join of the stripped, lower-cased labels plus "."); runs of
   whitespace are collapsed and empty phrases dropped, which changes no token. `CaptionTokenizer`
   tokenises with the checkpoint's own `tokenizer.json` through `tokenizers` (the fast tokenizer
   transformers wraps), so the ids equal the processor's. Invalid input raises `GroundingInputError`
   (a ValueError) naming the field: empty or whitespace-only text, bytes that are not UTF-8, more
   than 256 tokens (the exported graph cannot truncate as the PyTorch model does).

2. Image. The graph only runs at the square size S it was exported with, so images are
   letterboxed: `GroundingDinoImageProcessorPil` with `size={"max_height": S, "max_width": S}` and
   `pad_size={"height": S, "width": S}` does the same thing, and `letterbox` reproduces it exactly
   (same output size rule `int(side * min(S / h, S / w))`, PIL bilinear resize of the uint8 image,
   x / 255 in float64 cast to float32, (x - mean) / std in float32 with the ImageNet mean/std,
   zero padding at the bottom/right after normalisation, pixel_mask 1 on the image). The processor's
   default (`shortest_edge` 800, `longest_edge` 1333, pad to the largest image of the batch) only
   differs in the size rule, and gives a different shape per image, which a fixed-shape graph cannot
   take. Predicted boxes are normalised to the unpadded image (the model scales its proposals and
   sampling points by the valid ratio of `pixel_mask`), so going back to original pixels is a plain
   multiplication by the original width and height, exactly as the processor's post-processing
   does with `target_sizes` set to the original sizes.

3. Boxes. `select_boxes` reproduces `GroundingDinoProcessor.post_process_grounded_object_detection`:
   score = max over tokens of sigmoid(logits), keep score > box_threshold, label = decoded tokens
   whose probability > text_threshold (first and last logit columns excluded, as there), boxes
   cxcywh -> xyxy in original pixels. The kept set is returned sorted by score (descending, stable;
   transformers keeps query order), then optional class-aware NMS (per label string) and top-k.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MAX_TEXT_TOKENS = 256
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class GroundingInputError(ValueError):
    """A request field that cannot be processed; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# --------------------------------------------------------------------------- text


def _as_text(value, field: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise GroundingInputError(field, f"is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    elif isinstance(value, np.str_):
        value = str(value)
    if not isinstance(value, str):
        raise GroundingInputError(field, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GroundingInputError(field, "is not valid UTF-8 (lone surrogate)") from None
    return value


def normalize_caption(text, field: str = "text") -> str:
    """A caption (str / UTF-8 bytes) or a list of labels -> "phrase one. phrase two." in lower case."""
    if text is None:
        raise GroundingInputError(field, "is required")
    if isinstance(text, np.ndarray):
        text = text.item() if text.size == 1 else text.reshape(-1).tolist()
    pieces = list(text) if isinstance(text, (list, tuple)) else [text]
    if not pieces:
        raise GroundingInputError(field, "is empty")
    phrases = []
    for index, piece in enumerate(pieces):
        name = f"{field}[{index}]" if isinstance(text, (list, tuple)) else field
        piece = _as_text(piece, name)
        if not piece.strip():
            raise GroundingInputError(name, "is empty or whitespace only")
        phrases += [" ".join(p.split()) for p in piece.lower().split(".")]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise GroundingInputError(field, "has no words, only '.' separators")
    return ". ".join(phrases) + "."


@dataclass(frozen=True)
class TokenizedCaption:
    caption: str
    input_ids: np.ndarray  # int64 [T]
    attention_mask: np.ndarray  # int64 [T]
    token_type_ids: np.ndarray  # int64 [T]


def _token_name(value, default: str) -> str:
    if isinstance(value, dict):  # serialised AddedToken
        value = value.get("content")
    return value or default


class CaptionTokenizer:
    """The checkpoint's BERT WordPiece tokenizer, through `tokenizers` (no torch, no transformers)."""

    def __init__(self, directory: Path | str, max_tokens: int = MAX_TEXT_TOKENS):
        import tokenizers

        directory = Path(directory)
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if (directory / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        elif (directory / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            backend = BertWordPieceTokenizer(str(directory / "vocab.txt"),
                                             lowercase=bool(config.get("do_lower_case", True)))
        else:
            raise FileNotFoundError(f"{directory} holds neither tokenizer.json nor vocab.txt")
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.max_tokens = max_tokens
        # transformers 5 cleans decoded text only when the tokenizer config asks for it
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        names = {"cls": _token_name(config.get("cls_token"), "[CLS]"),
                 "sep": _token_name(config.get("sep_token"), "[SEP]"),
                 "pad": _token_name(config.get("pad_token"), "[PAD]"),
                 "period": ".", "question": "?"}
        self.special_token_ids = {}
        for key, token in names.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"tokenizer in {directory} has no {token!r} token")
            self.special_token_ids[key] = token_id
        self.pad_token_id = self.special_token_ids["pad"]

    def encode(self, text, field: str = "text") -> TokenizedCaption:
        caption = normalize_caption(text, field)
        encoding = self.backend.encode(caption)
        if len(encoding.ids) > self.max_tokens:
            raise GroundingInputError(field, f"is {len(encoding.ids)} tokens long; at most {self.max_tokens} "
                                             "are allowed (special tokens included)")
        return TokenizedCaption(caption=caption,
                                input_ids=np.asarray(encoding.ids, dtype=np.int64),
                                attention_mask=np.asarray(encoding.attention_mask, dtype=np.int64),
                                token_type_ids=np.asarray(encoding.type_ids, dtype=np.int64))

    def encode_batch(self, texts: Sequence, field: str = "text") -> dict[str, np.ndarray]:
        """[B, T] arrays, right-padded with [PAD] to the longest caption (the processor's padding=True)."""
        encoded = [self.encode(t, f"{field}[{i}]") for i, t in enumerate(texts)]
        if not encoded:
            raise GroundingInputError(field, "is empty")
        length = max(len(e.input_ids) for e in encoded)
        out = {"input_ids": np.full((len(encoded), length), self.pad_token_id, dtype=np.int64),
               "attention_mask": np.zeros((len(encoded), length), dtype=np.int64),
               "token_type_ids": np.zeros((len(encoded), length), dtype=np.int64)}
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            out["input_ids"][row, :n] = e.input_ids
            out["attention_mask"][row, :n] = e.attention_mask
            out["token_type_ids"][row, :n] = e.token_type_ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """As transformers' `decode(ids)` (special tokens kept), which labels the detections."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=False)
        if self.clean_up_spaces:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text


# --------------------------------------------------------------------------- image


@dataclass(frozen=True)
class LetterboxedImage:
    pixel_values: np.ndarray  # float32 [3, S, S]
    pixel_mask: np.ndarray  # int64 [S, S], 1 = image
    original_size: tuple[int, int]  # (height, width)
    resized_size: tuple[int, int]  # (height, width) of the image region inside the S x S canvas


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Largest (h, w) with the image's aspect ratio inside size x size (transformers' rounding: floor)."""
    scale = min(size / height, size / width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def _rgb_array(image, field: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a pinned dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise GroundingInputError(field, f"must be an RGB uint8 array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise GroundingInputError(field, f"must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise GroundingInputError(field, f"must be H x W x 3 (RGB), got shape {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise GroundingInputError(field, f"is empty (shape {tuple(image.shape)})")
    return np.ascontiguousarray(image)


def letterbox(image, size: int, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD,
              field: str = "image") -> LetterboxedImage:
    """Resize keeping the aspect ratio so the image fits size x size, normalise, pad bottom/right."""
    from PIL import Image

    rgb = _rgb_array(image, field)
    height, width = rgb.shape[:2]
    new_h, new_w = letterbox_size(height, width, size)
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample=Image.BILINEAR))
    scaled = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    normalised = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    pixel_values = np.zeros((3, size, size), dtype=np.float32)
    pixel_values[:, :new_h, :new_w] = normalised.transpose(2, 0, 1)
    pixel_mask = np.zeros((size, size), dtype=np.int64)
    pixel_mask[:new_h, :new_w] = 1
    return LetterboxedImage(pixel_values, pixel_mask, (height, width), (new_h, new_w))


def letterbox_batch(images: Sequence, size: int, mean: Sequence[float] = IMAGE_MEAN,
                    std: Sequence[float] = IMAGE_STD) -> dict[str, np.ndarray]:
    """pixel_values [B,3,S,S], pixel_mask [B,S,S] and original_sizes [B,2] (height, width)."""
    boxed = [letterbox(im, size, mean, std, field=f"image[{i}]") for i, im in enumerate(images)]
    return {"pixel_values": np.stack([b.pixel_values for b in boxed]),
            "pixel_mask": np.stack([b.pixel_mask for b in boxed]),
            "original_sizes": np.asarray([b.original_size for b in boxed], dtype=np.int64)}


def boxes_to_pixels(boxes_cxcywh: np.ndarray, original_size: tuple[int, int], clip: bool = False) -> np.ndarray:
    """Normalised (cx, cy, w, h) relative to the unpadded image -> (x0, y0, x1, y1) in original pixels."""
    boxes = np.asarray(boxes_cxcywh, dtype=np.float32)
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    half_w, half_h = np.float32(0.5) * w, np.float32(0.5) * h
    corners = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    height, width = (np.float32(v) for v in original_size)
    pixels = corners * np.asarray([width, height, width, height], dtype=np.float32)
    if clip:
        pixels = np.clip(pixels, 0, np.asarray([width, height, width, height], dtype=np.float32))
    return pixels.astype(np.float32)


# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # float32 [N, 4] x0, y0, x1, y1 in original pixels
    scores: np.ndarray  # float32 [N]
    labels: list[str]  # phrase per box, from the tokens above text_threshold
    query_indices: np.ndarray  # int64 [N], which of the model's queries

    def __len__(self) -> int:
        return len(self.scores)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


def phrase_token_ids(posmap: np.ndarray, input_ids: np.ndarray) -> list[list[int]]:
    """Token ids above text_threshold per box; the first and the last logit column never count."""
    posmap = np.array(posmap, dtype=bool, copy=True)
    posmap[:, :1] = False
    posmap[:, posmap.shape[1] - 1:] = False
    posmap[:, len(input_ids):] = False  # masked positions: never above a threshold in [0, 1]
    return [[int(input_ids[i]) for i in np.flatnonzero(row)] for row in posmap]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, [N, M]; 0 where both boxes are empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, classes: Sequence, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS within each class, highest score first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    class_ids: dict = {}
    classes = np.asarray([class_ids.setdefault(c, len(class_ids)) for c in classes], dtype=np.int64)
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    iou = box_iou(boxes, boxes)
    for rank, i in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(int(i))
        rest = order[rank + 1:]
        suppressed[rank + 1:] |= (classes[rest] == classes[i]) & (iou[i, rest] > iou_threshold)
    return np.asarray(keep, dtype=np.int64)


def _check_unit(value: float, field: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise GroundingInputError(field, f"must be within [0, 1], got {value}")
    return value


def select_boxes(
    logits: np.ndarray,
    pred_boxes: np.ndarray,
    input_ids: np.ndarray,
    original_size: tuple[int, int],
    decode: Callable[[Sequence[int]], str],
    box_threshold: float = 0.25,
    text_threshold: float = 0.25,
    iou_threshold: float | None = None,
    max_objects: int | None = None,
    clip: bool = False,
) -> Detections:
    """One image's detections from its logits [Q, L], pred_boxes [Q, 4] and caption input_ids [T].

    `decode` maps token ids to text (`CaptionTokenizer.decode`). `iou_threshold` None: no NMS;
    `max_objects` None: no limit. `clip` clamps boxes to the image (transformers does not).
    """
    box_threshold = _check_unit(box_threshold, "box_threshold")
    text_threshold = _check_unit(text_threshold, "text_threshold")
    if iou_threshold is not None:
        iou_threshold = _check_unit(iou_threshold, "iou_threshold")
    if max_objects is not None and int(max_objects) < 1:
        raise GroundingInputError("max_objects", f"must be at least 1, got {max_objects}")
    logits = np.asarray(logits, dtype=np.float32)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float32)
    input_ids = np.asarray(input_ids).reshape(-1)
    if logits.ndim != 2 or pred_boxes.shape != (logits.shape[0], 4):
        raise ValueError(f"expected logits [Q, L] and pred_boxes [Q, 4], got {logits.shape} and {pred_boxes.shape}")

    probs = sigmoid(logits)
    scores = probs.max(axis=-1)
    kept = np.flatnonzero(scores > box_threshold)
    kept = kept[np.argsort(-scores[kept].astype(np.float64), kind="stable")]
    labels = [decode(ids) for ids in phrase_token_ids(probs[kept] > text_threshold, input_ids)]
    boxes = boxes_to_pixels(pred_boxes[kept], original_size, clip=clip)
    scores = scores[kept]
    if iou_threshold is not None and len(kept):
        order = class_aware_nms(boxes, scores, labels, iou_threshold)
        kept, boxes, scores, labels = kept[order], boxes[order], scores[order], [labels[i] for i in order]
    if max_objects is not None:
        n = int(max_objects)
        kept, boxes, scores, labels = kept[:n], boxes[:n], scores[:n], labels[:n]
    return Detections(boxes=boxes.reshape(-1, 4), scores=scores.astype(np.float32), labels=labels,
                      query_indices=kept.astype(np.int64))


def select_boxes_batch(logits: np.ndarray, pred_boxes: np.ndarray, input_ids: np.ndarray,
                       original_sizes: Sequence[tuple[int, int]], decode: Callable[[Sequence[int]], str],
                       **options) -> list[Detections]:
    """`select_boxes` for each image of a batch ([B, Q, L], [B, Q, 4], [B, T], B sizes)."""
    if not (len(logits) == len(pred_boxes) == len(input_ids) == len(original_sizes)):
        raise ValueError("logits, pred_boxes, input_ids and original_sizes need the same batch size")
    return [select_boxes(lg, bx, ids, tuple(int(v) for v in size), decode, **options)
            for lg, bx, ids, size in zip(logits, pred_boxes, input_ids, original_sizes)]
