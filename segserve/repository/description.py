"""The one description of the Triton model repository, rendered for both targets.

A `ModelSpec` says what a model is (an exported graph or Python code), its signature and its
scheduling. The builder turns it into `config.pbtxt` for:
- `embedded`: every model on the Python backend, graphs run inside it by ONNX Runtime or OpenVINO
  (per graph, chosen by the builder: `graph_runner`);
- `fleet`: graphs on Triton's onnxruntime or TensorRT backend, Python only for state and glue.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton type without the TYPE_ prefix: FP32, INT32, UINT8, BOOL, STRING, UINT64
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False


@dataclass
class Sequence:
    idle_timeout_s: float
    max_candidate_sequences: int
    max_queue_delay_us: int = 0


@dataclass
class ModelSpec:
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    graph: str | None = None  # manifest artifact name, for exported graphs
    python_module: str | None = None  # segserve.triton_models.<module>, for Python models
    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_us: int = 2000
    sequence: Sequence | None = None
    instances: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    fleet_parameters: dict[str, str] = field(default_factory=dict)
    # Models this one calls through BLS in the fleet target.
    calls: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # manifest artifacts that must exist for this model
    # An ensemble (`platform: "ensemble"` in both targets): its steps, run by Triton's scheduler.
    ensemble: list[EnsembleStep] = field(default_factory=list)
    instance_kind: str | None = None  # CPU / GPU / MODEL: overrides the target's default kind
    # Folders of the artifacts directory copied into the version folder (e.g. a tokenizer).
    artifact_files: tuple[str, ...] = ()
    # Graphs this Python model runs in its own process in the embedded target (runner `inprocess`);
    # the builder renders their runtime, precision and threads (`graph_runner.render_parameters`).
    # A graph model runs its own graph.
    local_graphs: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnsembleStep:
    """One step: `inputs` maps the model's input names to ensemble tensor names, `outputs` its
    output names to ensemble tensor names (Triton's input_map / output_map)."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


# Defaults of the video tracker's byte caps (build options `max_video_frame_bytes`,
# `max_video_memory_bytes` per session, `max_video_total_bytes` for all sessions of one instance).
VIDEO_FRAME_BYTES = 1 << 30
VIDEO_MEMORY_BYTES = 2 << 30
VIDEO_TOTAL_BYTES = 8 << 30


def candidate_sequences(max_sessions: int) -> int:
    """Triton's sequence slots for a session model: headroom above the model's own cap, so that a
    START past the cap reaches the model and is refused (RESOURCE_EXHAUSTED) instead of waiting in
    Triton's backlog for a slot until the client gives up."""
    return max_sessions + max(4, max_sessions // 4)


def sequence_idle_s(session_ttl_s: float) -> float:
    """Triton's `max_sequence_idle_microseconds` for a session model, in seconds: a margin above
    the model's own eviction TTL (`session_ttl_s`). Triton drops an idle sequence silently and then
    refuses its next request itself (INVALID_ARGUMENT, "must specify the START flag"); with the
    margin the model has evicted the session first and answers that request NOT_FOUND, typed."""
    return session_ttl_s + max(60.0, 0.1 * session_ttl_s)


# `image_clicks` build option: `concurrent` (default) encodes a START off the click path (BLS to the
# encoder model from a worker thread) and decodes the clicks of one execute() in one decoder call;
# `serial` is the one-at-a-time path (START encoded inside execute(), one decoder call per
# request), kept for the concurrency benchmark's comparison.
IMAGE_CLICKS = ("concurrent", "serial")


def sam2_models(sam2_config: dict[str, Any], options: dict[str, Any], encoder_batch: int = 4) -> list[ModelSpec]:
    session_ttl_s, max_sessions = options["session_ttl_s"], options["max_sessions"]
    clicks = options.get("image_clicks", "concurrent")
    if clicks not in IMAGE_CLICKS:
        raise ValueError(f"unknown image_clicks {clicks!r}: choose {', '.join(IMAGE_CLICKS)}")
    concurrent = clicks == "concurrent"
    low_res = int(sam2_config.get("low_res_mask_size", 256))
    size = int(sam2_config.get("image_size", 1024))
    encoder = ModelSpec(
        name="sam2_image_encoder",
        graph="sam2_image_encoder",
        inputs=[Tensor("pixel_values", "FP32", (3, size, size))],
        outputs=[],  # filled from the manifest
        max_batch_size=encoder_batch,
        dynamic_batching=True,
        requires=("sam2_image_encoder",),
    )
    decoder = ModelSpec(
        name="sam2_prompt_decoder",
        graph="sam2_prompt_decoder",
        inputs=[],
        outputs=[],
        requires=("sam2_prompt_decoder",),
    )
    session = ModelSpec(
        name="sam2_image_session",
        python_module="sam2_image_session",
        inputs=[
            Tensor("IMAGE", "UINT8", (-1, -1, 3), optional=True, ragged=True),
            Tensor("POINT_COORDS", "FP32", (-1, -1, 2), optional=True, ragged=True),
            Tensor("POINT_LABELS", "INT32", (-1, -1), optional=True, ragged=True),
            Tensor("MASK_INPUT", "FP32", (1, low_res, low_res), optional=True),
            Tensor("MULTIMASK", "BOOL", (1,), optional=True),
        ],
        outputs=[
            Tensor("IMAGE_SIZE", "INT32", (2,)),
            Tensor("SCORES", "FP32", (-1, -1)),
            Tensor("OBJECT_SCORE", "FP32", (-1,)),
            Tensor("LOW_RES_LOGITS", "FP32", (-1, -1, low_res, low_res)),
            Tensor("MASKS_RLE", "STRING", (-1, -1)),
        ],
        # Oldest strategy: requests of different sessions run in one execute() call.
        max_batch_size=8,
        sequence=Sequence(idle_timeout_s=sequence_idle_s(session_ttl_s),
                          max_candidate_sequences=candidate_sequences(max_sessions),
                          # how long Triton may hold a click to batch it with others (default 0)
                          max_queue_delay_us=int(options.get("image_queue_delay_us", 0))),
        parameters={
            "runner": "inprocess",
            "encoder_model": "sam2_image_encoder",
            "decoder_model": "sam2_prompt_decoder",
            "session_ttl_s": str(session_ttl_s),
            "max_sessions": str(max_sessions),
            "image_size": str(size),
            "low_res_mask_size": str(low_res),
            "mask_threshold": str(sam2_config.get("mask_threshold", 0.0)),
            "encode": "async" if concurrent else "inline",
            "decode_batching": "batched" if concurrent else "solo",
            # a request of more prompts (automatic masks) is a decoder call of its own
            "max_batch_prompts": str(int(options.get("max_batch_prompts", 32))),
        },
        fleet_parameters={"runner": "bls"},
        calls=("sam2_image_encoder", "sam2_prompt_decoder"),
        # embedded: the decoder runs in the session's process; the encoder too on the serial path
        local_graphs=("sam2_prompt_decoder",) if concurrent else ("sam2_image_encoder", "sam2_prompt_decoder"),
        requires=("sam2_image_encoder", "sam2_prompt_decoder"),
    )
    return [encoder, decoder, session]


MASK2FORMER_TASKS = ("panoptic", "semantic", "instance")


def mask2former_models(config: dict[str, Any], options: dict[str, Any]) -> list[ModelSpec]:
    """Mask2Former as the ensemble `mask2former_segment`: RGB image -> preprocess (resize to the
    graph's fixed size, normalise) -> `mask2former` graph (dynamic batching across requests) ->
    postprocess (panoptic / semantic / instance at the original size; label map and segments with
    RLE masks). Only the image goes in and small encoded results come out; logits stay in Triton.
    `options["batching"] = False` serves the graph one request per execution (benchmarks)."""
    from segserve.common.mask2former_post import PreprocessConfig

    size = int(config["image_size"])
    queries, labels = int(config["num_queries"]), int(config["num_labels"])
    logits_size = int(config.get("mask_logits_size", size // 4))
    batching = bool(options.get("batching", True))
    post_defaults = config.get("postprocess", {})
    preprocess = ModelSpec(
        name="mask2former_preprocess",
        python_module="mask2former_preprocess",
        inputs=[Tensor("IMAGE", "UINT8", (-1, -1, 3))],
        outputs=[Tensor("PIXEL_VALUES", "FP32", (3, size, size)), Tensor("ORIGINAL_SIZE", "INT32", (2,))],
        max_batch_size=8,
        parameters={"preprocess": json.dumps(asdict(PreprocessConfig.from_model_config(config)))},
        requires=("mask2former",),
        instance_kind="CPU",
    )
    graph = ModelSpec(
        name="mask2former",
        graph="mask2former",
        inputs=[],
        outputs=[],  # filled from the manifest
        max_batch_size=8 if batching else 1,
        dynamic_batching=batching,
        max_queue_delay_us=int(options.get("max_queue_delay_us", 4000)),
        requires=("mask2former",),
    )
    controls = [Tensor("TASK", "STRING", (1,)), Tensor("THRESHOLD", "FP32", (1,)),
                Tensor("MASK_THRESHOLD", "FP32", (1,)), Tensor("OVERLAP_MASK_AREA_THRESHOLD", "FP32", (1,)),
                Tensor("LABEL_IDS_TO_FUSE", "INT32", (-1,)), Tensor("LABEL_MAP_FORMAT", "INT32", (1,))]
    results = [Tensor("LABEL_MAP", "STRING", (1,)), Tensor("SEGMENTS", "STRING", (1,))]
    postprocess = ModelSpec(
        name="mask2former_postprocess",
        python_module="mask2former_postprocess",
        inputs=[Tensor("CLASS_LOGITS", "FP32", (queries, labels + 1)),
                Tensor("MASK_LOGITS", "FP32", (queries, logits_size, logits_size)),
                Tensor("ORIGINAL_SIZE", "INT32", (2,)), *controls],
        outputs=results,
        max_batch_size=8,
        instances=int(options.get("postprocess_instances", 1)),
        parameters={
            "id2label": json.dumps(config.get("id2label", {}), sort_keys=True),
            "num_labels": str(labels),
            "mask_size": str(post_defaults.get("mask_size", 384)),
            "threshold": str(post_defaults.get("threshold", 0.5)),
            "mask_threshold": str(post_defaults.get("mask_threshold", 0.5)),
            "overlap_mask_area_threshold": str(post_defaults.get("overlap_mask_area_threshold", 0.8)),
            "tasks": ",".join(MASK2FORMER_TASKS),
        },
        requires=("mask2former",),
        instance_kind="CPU",
    )
    ensemble = ModelSpec(
        name="mask2former_segment",
        inputs=[Tensor("IMAGE", "UINT8", (-1, -1, 3)), *controls],
        outputs=results,
        max_batch_size=1,  # one image per request; the graph's batcher gathers requests
        ensemble=[
            EnsembleStep("mask2former_preprocess", {"IMAGE": "IMAGE"},
                         {"PIXEL_VALUES": "pixel_values", "ORIGINAL_SIZE": "original_size"}),
            EnsembleStep("mask2former", {"pixel_values": "pixel_values"},
                         {"class_queries_logits": "class_logits", "masks_queries_logits": "mask_logits"}),
            EnsembleStep("mask2former_postprocess",
                         {"CLASS_LOGITS": "class_logits", "MASK_LOGITS": "mask_logits",
                          "ORIGINAL_SIZE": "original_size", **{t.name: t.name for t in controls}},
                         {t.name: t.name for t in results}),
        ],
        requires=("mask2former",),
    )
    return [preprocess, graph, postprocess, ensemble]


GROUNDING_DEFAULTS = {"box_threshold": 0.35, "text_threshold": 0.25, "iou_threshold": 0.5, "max_objects": 16}


def grounding_models(config: dict[str, Any], options: dict[str, Any]) -> list[ModelSpec]:
    """Text prompts: the ensembles `grounding_detect` (boxes only) and, when SAM 2 is exported too,
    `text_to_mask`:

        IMAGE ─ grounding_preprocess ─┬─ PIXEL_VALUES/PIXEL_MASK ─┐
        TEXT ── grounding_tokenize ───┼─ INPUT_IDS/... ───────────┴─ grounding_dino ─┐
                                      │                                             grounding_select ─┐
                                      └─ SAM2_PIXEL_VALUES ─ sam2_image_encoder ─ sam2_prompt_decoder ─┴─ text_mask_postprocess ─ OBJECTS

    All one request per image (max_batch_size 0: the SAM 2 decoder takes a variable number of box
    prompts and cannot batch); the two graphs keep their dynamic batchers across requests. The
    SAM 2 encoder runs in parallel with Grounding DINO. With no detection the select step emits
    one dummy prompt whose masks the postprocess drops (see `segserve.common.text_to_mask`).
    The tokenizer travels in the version folders of the two models that use it."""
    size = int(config["image_size"])
    queries, text_len = int(config.get("num_queries", 900)), int(config.get("max_text_len", 256))
    artifacts = options.get("artifacts", {})
    sam2 = artifacts.get("sam2_image_encoder")
    sam2_size = int(sam2.get("image_size", 1024)) if sam2 else 1024
    low_res = int(sam2.get("low_res_mask_size", 256)) if sam2 else 256
    tokenizer_dir = config.get("tokenizer_dir", "grounding_dino_tokenizer")
    common = {"tokenizer_dir": Path(tokenizer_dir).name}
    preprocess = ModelSpec(
        name="grounding_preprocess",
        python_module="grounding_preprocess",
        inputs=[Tensor("IMAGE", "UINT8", (-1, -1, 3))],
        outputs=[Tensor("PIXEL_VALUES", "FP32", (1, 3, size, size)), Tensor("PIXEL_MASK", "INT64", (1, size, size)),
                 Tensor("SAM2_PIXEL_VALUES", "FP32", (1, 3, sam2_size, sam2_size)),
                 Tensor("ORIGINAL_SIZE", "INT32", (2,))],
        parameters={"image_size": str(size), "image_mean": json.dumps(config.get("image_mean", [0.485, 0.456, 0.406])),
                    "image_std": json.dumps(config.get("image_std", [0.229, 0.224, 0.225])),
                    "sam2_image_size": str(sam2_size)},
        requires=("grounding_dino",),
        instance_kind="CPU",
    )
    tokenize = ModelSpec(
        name="grounding_tokenize",
        python_module="grounding_tokenize",
        inputs=[Tensor("TEXT", "STRING", (1,))],
        outputs=[Tensor(n, "INT64", (1, -1)) for n in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS")],
        parameters={**common, "max_text_len": str(text_len)},
        artifact_files=(tokenizer_dir,),
        requires=("grounding_dino",),
        instance_kind="CPU",
    )
    graph = ModelSpec(
        name="grounding_dino",
        graph="grounding_dino",
        inputs=[],
        outputs=[],  # filled from the manifest
        max_batch_size=4,
        dynamic_batching=True,  # requests batch when their captions have the same token count
        requires=("grounding_dino",),
    )
    controls = [Tensor("BOX_THRESHOLD", "FP32", (1,)), Tensor("TEXT_THRESHOLD", "FP32", (1,)),
                Tensor("IOU_THRESHOLD", "FP32", (1,)), Tensor("MAX_OBJECTS", "INT32", (1,))]
    select = ModelSpec(
        name="grounding_select",
        python_module="grounding_select",
        inputs=[Tensor("LOGITS", "FP32", (-1, queries, text_len)), Tensor("PRED_BOXES", "FP32", (-1, queries, 4)),
                Tensor("INPUT_IDS", "INT64", (1, -1)), Tensor("ORIGINAL_SIZE", "INT32", (2,)), *controls],
        outputs=[Tensor("DETECTIONS", "STRING", (1,)), Tensor("POINT_COORDS", "FP32", (-1, 3, 2)),
                 Tensor("POINT_LABELS", "INT32", (-1, 3)), Tensor("MASK_INPUT", "FP32", (1, 1, low_res, low_res)),
                 Tensor("HAS_MASK_INPUT", "FP32", (1,))],
        parameters={**common, "sam2_image_size": str(sam2_size), "low_res_mask_size": str(low_res),
                    **{k: str(v) for k, v in GROUNDING_DEFAULTS.items()}},
        artifact_files=(tokenizer_dir,),
        requires=("grounding_dino",),
        instance_kind="CPU",
    )
    detect_steps = [
        EnsembleStep("grounding_preprocess", {"IMAGE": "IMAGE"},
                     {"PIXEL_VALUES": "pixel_values", "PIXEL_MASK": "pixel_mask", "ORIGINAL_SIZE": "original_size"}),
        EnsembleStep("grounding_tokenize", {"TEXT": "TEXT"},
                     {"INPUT_IDS": "input_ids", "ATTENTION_MASK": "attention_mask", "TOKEN_TYPE_IDS": "token_type_ids"}),
        EnsembleStep("grounding_dino", {n: n for n in ("pixel_values", "pixel_mask", "input_ids", "attention_mask",
                                                      "token_type_ids")},
                     {"logits": "logits", "pred_boxes": "pred_boxes"}),
    ]
    select_inputs = {"LOGITS": "logits", "PRED_BOXES": "pred_boxes", "INPUT_IDS": "input_ids",
                     "ORIGINAL_SIZE": "original_size", **{t.name: t.name for t in controls}}
    ensemble_inputs = [Tensor("IMAGE", "UINT8", (-1, -1, 3)), Tensor("TEXT", "STRING", (1,)), *controls]
    detect = ModelSpec(
        name="grounding_detect",
        inputs=ensemble_inputs,
        outputs=[Tensor("DETECTIONS", "STRING", (1,))],
        ensemble=[*detect_steps, EnsembleStep("grounding_select", select_inputs, {"DETECTIONS": "DETECTIONS"})],
        requires=("grounding_dino",),
    )
    specs = [preprocess, tokenize, graph, select, detect]
    if not sam2 or "sam2_prompt_decoder" not in artifacts:
        return specs
    postprocess = ModelSpec(
        name="text_mask_postprocess",
        python_module="text_mask_postprocess",
        inputs=[Tensor("DETECTIONS", "STRING", (1,)), Tensor("MASKS", "FP32", (-1, 1, low_res, low_res)),
                Tensor("MASK_SCORES", "FP32", (-1, 1)), Tensor("OBJECT_SCORES", "FP32", (-1, 1)),
                Tensor("ORIGINAL_SIZE", "INT32", (2,))],
        outputs=[Tensor("OBJECTS", "STRING", (1,))],
        parameters={"mask_threshold": str(sam2.get("mask_threshold", 0.0))},
        requires=("grounding_dino", "sam2_prompt_decoder"),
        instance_kind="CPU",
    )
    text_to_mask = ModelSpec(
        name="text_to_mask",
        inputs=ensemble_inputs,
        outputs=[Tensor("OBJECTS", "STRING", (1,))],
        ensemble=[
            EnsembleStep("grounding_preprocess", {"IMAGE": "IMAGE"},
                         {"PIXEL_VALUES": "pixel_values", "PIXEL_MASK": "pixel_mask", "ORIGINAL_SIZE": "original_size",
                          "SAM2_PIXEL_VALUES": "sam2_pixel_values"}),
            *detect_steps[1:],
            EnsembleStep("grounding_select", select_inputs,
                         {"DETECTIONS": "detections", "POINT_COORDS": "point_coords", "POINT_LABELS": "point_labels",
                          "MASK_INPUT": "mask_input", "HAS_MASK_INPUT": "has_mask_input"}),
            EnsembleStep("sam2_image_encoder", {"pixel_values": "sam2_pixel_values"},
                         {n: n for n in ("image_embeddings", "high_res_feats_0", "high_res_feats_1")}),
            EnsembleStep("sam2_prompt_decoder",
                         {n: n for n in ("image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords",
                                         "point_labels", "mask_input", "has_mask_input")},
                         {"single_mask": "masks", "single_iou": "mask_scores", "object_score_logits": "object_scores"}),
            EnsembleStep("text_mask_postprocess",
                         {"DETECTIONS": "detections", "MASKS": "masks", "MASK_SCORES": "mask_scores",
                          "OBJECT_SCORES": "object_scores", "ORIGINAL_SIZE": "original_size"},
                         {"OBJECTS": "OBJECTS"}),
        ],
        requires=("grounding_dino", "sam2_image_encoder", "sam2_prompt_decoder"),
    )
    return [*specs, postprocess, text_to_mask]


# Key artifact of each family -> its models. A family is in the repository when its key artifact is
# in the manifest.
def sam2_video_models(config: dict[str, Any], options: dict[str, Any]) -> list[ModelSpec]:
    """SAM 2 video tracking: the five graphs (served on their own in the fleet target) and the
    sequence-batched tracker that holds every session's memory bank (Oldest strategy, so steps of
    several sessions share an execute() call; the graphs run in process, `graph_runner`)."""
    from segserve.triton_models.sam2_video_core import GRAPH_NAMES

    graphs = [ModelSpec(name=name, graph=name, inputs=[], outputs=[], requires=(name,)) for name in GRAPH_NAMES]
    ttl_s = float(options.get("video_session_ttl_s", options["session_ttl_s"]))
    max_sessions = int(options.get("max_video_sessions", min(int(options["max_sessions"]), 16)))
    tracker = ModelSpec(
        name="sam2_video_tracker",
        python_module="sam2_video_tracker",
        inputs=[
            Tensor("OP", "INT32", (1,)),
            Tensor("FRAMES", "UINT8", (-1, -1, -1, 3), optional=True, ragged=True),
            Tensor("FRAME_INDEX", "INT32", (1,), optional=True),
            Tensor("OBJ_IDS", "INT64", (-1,), optional=True, ragged=True),
            Tensor("POINT_COORDS", "FP32", (-1, -1, 2), optional=True, ragged=True),
            Tensor("POINT_LABELS", "INT32", (-1, -1), optional=True, ragged=True),
            Tensor("REVERSE", "BOOL", (1,), optional=True),
            Tensor("MASKS", "UINT8", (-1, -1, -1), optional=True, ragged=True),
        ],
        outputs=[
            Tensor("NUM_FRAMES", "INT32", (1,)),
            Tensor("FRAME_SIZE", "INT32", (2,)),
            Tensor("OUT_FRAME_INDEX", "INT32", (1,)),
            Tensor("OUT_OBJ_IDS", "INT64", (-1,)),
            Tensor("OBJECT_SCORES", "FP32", (-1,)),
            Tensor("MASKS_RLE", "STRING", (-1,)),
            Tensor("FRAME", "UINT8", (-1, -1, 3)),
        ],
        max_batch_size=8,
        sequence=Sequence(idle_timeout_s=sequence_idle_s(ttl_s), max_candidate_sequences=candidate_sequences(max_sessions)),
        parameters={
            "session_ttl_s": str(ttl_s),
            "max_sessions": str(max_sessions),
            "max_objects": str(int(options.get("max_video_objects", 16))),
            "max_frames": str(int(options.get("max_video_frames", 2000))),
            "max_frame_bytes": str(int(options.get("max_video_frame_bytes", VIDEO_FRAME_BYTES))),
            "max_memory_bytes": str(int(options.get("max_video_memory_bytes", VIDEO_MEMORY_BYTES))),
            # frames + memory banks of every session of the instance together
            "max_total_bytes": str(int(options.get("max_video_total_bytes", VIDEO_TOTAL_BYTES))),
            "image_size": str(int(config["image_size"])),
            "mask_threshold": str(config.get("mask_threshold", 0.0)),
            "video_config": json.dumps(config, sort_keys=True),
            # every object of a frame (and the steps of concurrent sessions) in one call per graph;
            # option `video_batch_objects` False: one call per object (the comparison baseline)
            "batch_objects": "true" if options.get("video_batch_objects", True) else "false",
            # the five graphs inside the tracker (threads: `video_intra_op_threads`, else the builder's share)
            "graphs": "inprocess",
            **({"graph_threads": str(int(options["video_intra_op_threads"]))}
               if options.get("video_intra_op_threads") else {}),
        },
        # Fleet: the graphs are Triton's own (GPU) models, called through BLS; state stays on the device.
        fleet_parameters={"graphs": "bls"},
        calls=GRAPH_NAMES,
        requires=GRAPH_NAMES,
        local_graphs=GRAPH_NAMES,
    )
    return [*graphs, tracker]


FAMILY_MODELS = {
    "sam2_image_encoder": sam2_models,
    "sam2_video_decoder": sam2_video_models,
    "mask2former": mask2former_models,
    "grounding_dino": grounding_models,
}
