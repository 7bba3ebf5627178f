"""`pip install segserve` is the light client: the package without extras, installed from this source
into a fresh venv, holds only grpcio, protobuf, numpy, pillow and pycocotools, cannot import torch,
transformers or onnxruntime, segments through the test stack with its own `segserve` CLI, and its
server-side commands name the extra they need. Skipped only when the package registry is unreachable."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DISTRIBUTIONS = {"segserve", "grpcio", "protobuf", "numpy", "pillow", "pycocotools"}
HEAVY = ("torch", "transformers", "onnxruntime", "onnx", "openvino", "tritonclient", "pytriton", "grpc_health",
         "scipy", "av")


def _run(args: list, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    # No PYTHONPATH or venv of the test run leaks in: the venv sees only what it installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bare_client")
    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", venv], timeout=300)
    assert made.returncode == 0, made.stderr
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    probe = _run([*pip, "download", "--no-deps", "-q", "-d", work / "probe", "pycocotools==2.0.11"], timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the package registry is unreachable from here: {probe.stderr.strip()[-300:]}")

    # The sources a wheel needs, copied, so that building writes nothing into the checkout.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "segserve", source / "segserve", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # With this environment's setuptools when it has one (no download), else in pip's isolated build.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    wheels = work / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", wheels, source],
                 timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("segserve-*.whl")
    installed = _run([*pip, "install", "-q", wheel], timeout=900)
    assert installed.returncode == 0, installed.stderr
    return venv


def test_bare_install_is_the_client_only(bare_venv):
    listed = _run([bare_venv / "bin" / "python", "-m", "pip", "list", "--format=json"], timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)} - {"pip", "setuptools", "wheel"}
    assert names == CLIENT_DISTRIBUTIONS | {"typing-extensions"}  # grpcio's own dependency
    requires = _run([bare_venv / "bin" / "python", "-c", "import importlib.metadata as m, json; "
                     "print(json.dumps(m.requires('segserve')))"], timeout=120)
    direct = {r.split("==")[0].lower() for r in json.loads(requires.stdout) if "extra ==" not in r}
    assert direct == CLIENT_DISTRIBUTIONS - {"segserve"}
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {list(HEAVY)!r} if importlib.util.find_spec(m) is not None]))")
    found = _run([bare_venv / "bin" / "python", "-c", probe], timeout=120)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []


def test_bare_cli_segments_through_the_stack(bare_venv, stack, client, photo, tmp_path):
    image_path, mask_path = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(photo).save(image_path)
    done = _run([bare_venv / "bin" / "segserve", "segment", image_path, "--point", "120,150,1", "--box",
                 "60,40,330,380", "--out", mask_path, "--overlay", tmp_path / "overlay.png",
                 "--server", stack.address], timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["random_weights"] is True and len(summary["objects"]) == 1
    expected = client.mask_from_prompt(image=photo, points=[(120, 150, 1)], boxes=[(60, 40, 330, 380)])
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)) > 0, expected.objects[0].best.mask)
    # the SDK of the bare install, health check included (no grpcio-health-checking there)
    healthy = _run([bare_venv / "bin" / "python", "-c",
                    "import sys; from segserve.client import SegservClient; "
                    f"c = SegservClient({stack.address!r}); print(c.healthy(), c.model_info().ListFields() != [])"],
                   timeout=120, cwd=tmp_path)
    assert healthy.returncode == 0 and healthy.stdout.split() == ["True", "True"], healthy.stderr


@pytest.mark.parametrize("command, extra", [
    (["export", "--families", "sam2"], "export"),
    (["fetch-weights"], "export"),
    (["build-repo"], "server"),
    (["serve"], "server"),
    (["orchestrator"], "server"),
    (["triton"], "server"),
])
def test_bare_server_commands_name_their_extra(bare_venv, tmp_path, command, extra):
    done = _run([bare_venv / "bin" / "segserve", *command], timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert f"needs the '{extra}' extra: pip install 'segserve[{extra}]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
