"""The references the parity tests compare with are independent of the code under test: no
tests/*_reference.py module imports segserve, directly or through another tests module."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _reachable_imports(path: Path, seen: set[Path] | None = None) -> set[str]:
    """A module's imports, plus those of the tests modules it imports."""
    seen = set() if seen is None else seen
    seen.add(path)
    names = _imports(path)
    for name in list(names):
        parts = name.split(".")
        if parts[0] == "tests" and len(parts) > 1:
            target = TESTS / f"{parts[1]}.py"
            if target.is_file() and target not in seen:
                names |= _reachable_imports(target, seen)
    return names


def test_no_reference_module_imports_segserve():
    references = sorted(TESTS.glob("*_reference.py"))
    assert len(references) >= 4, references  # sam2, sam2_video, automask, grounding
    for path in references:
        bad = sorted(n for n in _reachable_imports(path) if n == "segserve" or n.startswith("segserve."))
        assert not bad, f"{path.name} imports {bad}"


def test_the_check_sees_imports(tmp_path):
    """The scan finds top-level, aliased and function-level imports (so the test above can fail)."""
    sample = tmp_path / "x_reference.py"
    sample.write_text("import numpy as np\n\ndef f():\n    from segserve.common import rle\n    import segserve.api\n")
    assert {"segserve.common", "segserve.api", "numpy"} <= _imports(sample)


def test_comparisons_refuse_to_pass_on_nothing():
    """Two empty masks are no match, and a parity comparison refuses a trivial reference mask."""
    import numpy as np
    import pytest

    from tests import sam2_reference, sam2_video_reference

    empty, full = np.zeros((4, 5), bool), np.ones((4, 5), bool)
    some = empty.copy()
    some[1:3, 1:3] = True
    for iou in (sam2_reference.iou, sam2_video_reference.iou):
        with pytest.raises(ValueError):
            iou(empty, empty)
        assert iou(some, some) == 1.0 and iou(empty, some) == 0.0
    assert sam2_video_reference.compare([(0, {1: some})], [(0, {1: some})]) == (1.0, 1)
    for trivial in (empty, full):
        with pytest.raises(AssertionError, match="reference mask of object 1 on frame 0"):
            sam2_video_reference.compare([(0, {1: trivial})], [(0, {1: trivial})])
