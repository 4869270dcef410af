"""The container images: what the Containerfiles promise, and their install steps run for real.

Container builds need a registry for the base image and user namespaces or chroot for
RUN (docs/cluster.md, "Images"), which CI machines may lack. The images' builder stages
run nothing but ``images/install.sh``; the slow tests here run that same script into a
fresh venv, so the install the image gets is what is checked, and the venv's size
stands in for the image's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
INSTALL = IMAGES / "install.sh"
KINDS = ("controller", "train", "agent")


def containerfile(kind: str) -> str:
    return (IMAGES / f"{kind}.Containerfile").read_text(encoding="utf-8")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip()]


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


@pytest.mark.parametrize("kind", KINDS)
def test_containerfile_is_multi_stage_pinned_non_root_and_installs_with_install_sh(kind: str) -> None:
    ins = instructions(containerfile(kind))
    (base,) = [args for op, args in ins if op == "ARG" and args.startswith("BASE=")]
    image = base.split("=", 1)[1]
    assert re.search(r":\d+\.\d+\.\d+-slim-\w+$", image), f"base not pinned to a patch release: {image}"
    froms = [args for op, args in ins if op == "FROM"]
    assert froms == ["${BASE} AS builder", "${BASE}"], froms
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    runs = [args for op, args in ins if op == "RUN"]
    assert runs == [f"sh /src/images/install.sh {kind} /opt/edgeloop /src"], runs
    assert not [args for op, args in final if op == "RUN"], "the final stage runs nothing: only the venv"
    assert ("COPY", "--from=builder /opt/edgeloop /opt/edgeloop") in final
    (user,) = [args for op, args in final if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    # The uid the manifests run as (runAsNonRoot needs a numeric USER to verify it).
    assert uid == "10001"


def test_install_sh_pins_torch_as_the_train_extra_does_and_is_shellcheck_clean() -> None:
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    (torch,) = [d for d in train if d.startswith("torch")]
    assert f'TORCH_VERSION={torch.split("==")[1]}' in INSTALL.read_text()
    if subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0:
        subprocess.run(["shellcheck", str(INSTALL), str(IMAGES / "local-base.sh")], check=True, timeout=60)


def test_constraints_pin_every_package() -> None:
    text = (IMAGES / "constraints.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines, "images/constraints.txt is empty: make images-lock"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+", ln) for ln in lines), [
        ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in lines}
    assert {"kubernetes", "psycopg", "torch", "onnxruntime", "paho-mqtt"} <= names
    assert "edgeloop" not in names


def test_make_images_names_are_the_manifests_images() -> None:
    """`make images` tags what the Deployment and the Job template pull (kind load needs no edit)."""
    make = (REPO / "Makefile").read_text()
    repo = re.search(r"^IMAGE_REPO \?= (\S+)", make, re.M)
    tag = re.search(r"^IMAGE_TAG\s+\?= (\S+)", make, re.M)
    assert repo and tag
    names = dict(re.findall(r"^IMAGE_NAME_(\w+)\s+= (\S+)", make, re.M))
    want = {k: f"{repo.group(1)}/{names[k]}:{tag.group(1)}" for k in ("controller", "train")}
    dep = yaml.safe_load((REPO / "deploy/kubernetes/controller/deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {want["controller"]}
    job = yaml.safe_load((REPO / "deploy/kubernetes/distillation/job-template.yaml").read_text())
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == want["train"]


def clean_env() -> dict[str, str]:
    """This environment without what would make the venv import the checkout instead of its install."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run_install(kind: str, venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(INSTALL), kind, str(venv), str(REPO)], cwd=venv.parent, env=clean_env(),
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.images
@pytest.mark.timeout(900)
def test_controller_install_in_a_fresh_venv_runs_and_finds_the_job_template(tmp_path: Path) -> None:
    venv = tmp_path / "controller"
    proc = run_install("controller", venv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    py = str(venv / "bin" / "python")
    out = subprocess.run([str(venv / "bin" / "cloud-controller"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=True, env=clean_env()).stdout
    assert "run" in out
    template = subprocess.run(
        [py, "-c", "from cloud_controller.reconcilers.distillation.launchers import DEFAULT_TEMPLATE as t;"
                   "import psycopg, kubernetes; print(t)"],
        capture_output=True, text=True, cwd=tmp_path, check=True, env=clean_env(),
    ).stdout.strip()
    assert Path(template).is_relative_to(venv), template  # the installed copy, not the checkout's
    repo_template = REPO / "deploy/kubernetes/distillation/job-template.yaml"
    assert Path(template).read_bytes() == repo_template.read_bytes()
    print(f"\ncontroller venv: {du_mb(venv):.0f} MiB", file=sys.stderr)


@pytest.mark.slow
@pytest.mark.images
@pytest.mark.timeout(900)
def test_agent_install_in_a_fresh_venv_is_lean(tmp_path: Path) -> None:
    venv = tmp_path / "agent"
    proc = run_install("agent", venv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    subprocess.run([str(venv / "bin" / "edge-agent"), "--help"], capture_output=True, cwd=tmp_path,
                   check=True, env=clean_env())
    heavy = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u; print([m for m in ('torch', 'transformers', 'kubernetes', 'psycopg')"
         " if u.find_spec(m)])"], capture_output=True, text=True, cwd=tmp_path, check=True, env=clean_env(),
    ).stdout.strip()
    assert heavy == "[]"
    size = du_mb(venv)
    print(f"\nagent venv: {size:.0f} MiB", file=sys.stderr)
    assert size < 400, f"the lean edge install grew to {size:.0f} MiB"
