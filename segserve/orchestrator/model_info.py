"""What GetModelInfo may tell a client about a checkpoint: its name and hash, never a server path."""
from __future__ import annotations

from pathlib import PurePath


def checkpoint_name(value: str | None) -> str:
    """`/srv/checkpoints/sam2.1-hiera-tiny` -> `sam2.1-hiera-tiny`; a Hub id (`facebook/x`) stays whole."""
    if not value:
        return ""
    text = str(value)
    if text.startswith("hf://") or (not text.startswith(("/", ".", "~")) and text.count("/") == 1):
        return text
    return PurePath(text).name


def add_graphs(message, info: dict, names=None) -> None:
    """Fill `ModelInfo.graphs` from the repository's model_info JSON (`builder.model_info`): each
    graph's runtime, served precision and bf16 gate. `names`: the graphs of this message's family
    (default: every graph in `info`). Entries of an older repository without them are left out."""
    for name in sorted(info if names is None else names):
        entry = info.get(name) or {}
        if "runtime" not in entry:
            continue
        gate = entry.get("bf16_gate") or {}
        graph = message.graphs[name]
        graph.runtime = str(entry["runtime"])
        graph.precision = str(entry.get("precision", ""))
        graph.bf16_gate = str(gate.get("status", "not_measured"))
        detail = gate.get("headline", "") if gate.get("status") == "passed" else gate.get("reason", "")
        graph.bf16_gate_detail = str(detail or "")
