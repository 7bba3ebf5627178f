"""One decoder call for the prompts of several image-session requests (numpy only, no Triton).

A request's prompt is P prompts of M points on its session's image. Requests of one execute() are
decoded together: their prompts are stacked (sum of P rows), padded to the longest M with points
labelled `ABSENT_LABEL` (left out of the decoder's attention, so a padded prompt decodes as it
does alone), and each row gets its own session's embeddings, mask input and has-mask flag
(`images` = rows, gathered by the runner on the embeddings' device). A single request keeps the
one-image form (R = 1), exactly the one-at-a-time call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from segserve.common.sam2_transforms import ABSENT_LABEL

ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embeddings")
MULTI = ("multi_masks", "multi_iou")
SINGLE = ("single_mask", "single_iou")
OBJECT_SCORE = "object_score_logits"


@dataclass
class Prompt:
    coords: np.ndarray  # [P, M, 2] float32, in the model frame
    labels: np.ndarray  # [P, M] int32
    mask: np.ndarray | None  # [1, 1, low_res, low_res] or None
    multimask: bool

    @property
    def rows(self) -> int:
        return int(self.coords.shape[0])

    @property
    def outputs(self) -> tuple[str, str]:
        return MULTI if self.multimask else SINGLE


def feeds(prompts: list[Prompt], features: list[dict[str, Any]], low_res: int,
          gather: Callable[[list, list[int]], Any]) -> tuple[dict[str, Any], list[str]]:
    """The decoder's feeds for `prompts` (one per request, `features[i]` the state of request i's
    session) and the outputs to ask for."""
    no_mask = np.zeros((1, 1, low_res, low_res), np.float32)
    if len(prompts) == 1:
        (prompt,), (state,) = prompts, features
        return {**state, "point_coords": prompt.coords.astype(np.float32), "point_labels": prompt.labels.astype(np.int32),
                "mask_input": (no_mask if prompt.mask is None else prompt.mask).astype(np.float32),
                "has_mask_input": np.array([0.0 if prompt.mask is None else 1.0], np.float32)}, \
            [*prompt.outputs, OBJECT_SCORE]
    points = max(p.coords.shape[1] for p in prompts)
    coords = np.zeros((sum(p.rows for p in prompts), points, 2), np.float32)
    labels = np.full(coords.shape[:2], ABSENT_LABEL, np.int32)
    row = 0
    for p in prompts:
        coords[row:row + p.rows, :p.coords.shape[1]] = p.coords
        labels[row:row + p.rows, :p.labels.shape[1]] = p.labels
        row += p.rows
    repeats = [p.rows for p in prompts]
    batch = {name: gather([state[name] for state in features], repeats) for name in ENCODER_OUTPUTS}
    masks = [no_mask if p.mask is None else p.mask.astype(np.float32) for p in prompts]
    batch.update(point_coords=coords, point_labels=labels,
                 mask_input=np.concatenate([np.repeat(m, n, axis=0) for m, n in zip(masks, repeats)]),
                 has_mask_input=np.concatenate([np.full(n, 0.0 if p.mask is None else 1.0, np.float32)
                                                for p, n in zip(prompts, repeats)]))
    wanted = {name for p in prompts for name in p.outputs}
    return batch, [n for n in (*MULTI, *SINGLE) if n in wanted] + [OBJECT_SCORE]


def split(prompts: list[Prompt], result: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per request: (logits [P, K, h, w], scores [P, K], object scores [P]) from the call's rows."""
    out, row = [], 0
    for p in prompts:
        logits, scores = (result[name][row:row + p.rows] for name in p.outputs)
        out.append((logits, scores, result[OBJECT_SCORE][row:row + p.rows].reshape(-1)))
        row += p.rows
    return out
