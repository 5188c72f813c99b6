"""pipeline.engine_ray: convert on a real Ray (a two-node cluster on this machine, and the CLI's own local Ray): the
local engine's outputs, the manifest, resume, a failing file, work on both nodes, a removed node, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (scripts/setup_env.sh installs the ray extra)")

from clips import decode_frames, face_frame, make_clip, portrait, psnr, tight_crop  # noqa: E402
from pipeline.batch import convert_dir  # noqa: E402
from pipeline.engines import engine_for  # noqa: E402
from test_batch import config_for, fingerprints  # noqa: E402
from test_signals import REPO, done_in_manifest, interrupt, start_cli, wait_for  # noqa: E402

PHOTOS = [f"p{index}.png" for index in range(6)]


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine, with this process connected as the driver."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def photos(tmp_path) -> Path:
    """Six face photos, a tight crop, a face-less image, a corrupt JPEG and a short clip."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(PHOTOS):
        cv2.imwrite(str(folder / name), face_frame(160, 120, index))
    cv2.imwrite(str(folder / "tight.jpg"), tight_crop())
    cv2.imwrite(str(folder / "wall.png"), face_frame(96, 72, 0, face=False))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_clip(folder / "clip.mp4", frames=4, width=160, height=120)
    return folder


def statuses(summary) -> dict[str, str]:
    return {result.source: result.status for result in summary.results}


def test_ray_gives_the_local_outputs_and_a_complete_manifest(cluster, weights, photos, tmp_path, caplog):
    before, config = fingerprints(photos), config_for(weights["random"])
    config = replace(config, encoder=replace(config.encoder, crf=10))  # the comparison sees the pipeline, not x264
    local = convert_dir(photos, tmp_path / "local", config)
    caplog.set_level(logging.DEBUG, logger="pipeline.engine_ray")
    on_ray = convert_dir(photos, tmp_path / "ray", config, engine=engine_for("ray"))
    assert statuses(on_ray) == statuses(local) and statuses(on_ray)["broken.jpg"] == "failed"
    assert {r.source: r.faces for r in on_ray.results} == {r.source: r.faces for r in local.results}
    for name in [*PHOTOS, "tight.jpg", "wall.png"]:
        local_image, ray_image = (cv2.imread(str(tmp_path / kind / name)) for kind in ("local", "ray"))
        assert local_image.shape == ray_image.shape and psnr(local_image, ray_image) > 45, name
    local_frames, ray_frames = (decode_frames(tmp_path / kind / "clip.mp4") for kind in ("local", "ray"))
    assert len(local_frames) == len(ray_frames) == 4  # the video: one whole-file task
    assert min(psnr(a, b) for a, b in zip(local_frames, ray_frames)) > 45
    files = json.loads((tmp_path / "ray" / "manifest.json").read_text())["files"]
    assert set(files) == set(statuses(local)) and "broken.jpg" in files["broken.jpg"]["reason"]
    assert fingerprints(photos) == before
    nodes = set(re.findall(r"on node (\w+) and (\w+)", caplog.text))  # the nodes that read and wrote each file
    nodes = {node for pair in nodes for node in pair}
    assert nodes == {node["NodeID"] for node in ray.nodes() if node["Alive"]} and len(nodes) == 2


def test_ray_resumes_and_redoes_only_what_changed(cluster, weights, photos, tmp_path):
    config, out = config_for(weights["random"]), tmp_path / "out"
    first = convert_dir(photos, out, config, engine=engine_for("ray"))
    written = {name: (out / name).stat().st_mtime_ns for name in PHOTOS}
    (out / "p0.png").unlink()
    again = convert_dir(photos, out, config, engine=engine_for("ray"))
    assert statuses(again) == {**statuses(first), **{name: "skipped" for name in PHOTOS[1:]},
                               "tight.jpg": "skipped", "wall.png": "skipped", "clip.mp4": "skipped"}
    assert {name: (out / name).stat().st_mtime_ns for name in PHOTOS[1:]} == {
        name: written[name] for name in PHOTOS[1:]}
    assert (out / "p0.png").is_file()


@pytest.mark.slow
def test_a_node_removed_mid_run_loses_no_file(cluster, weights, tmp_path):
    """A third node is removed once the first file is in the manifest: its work is retried or recorded."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    names = [f"q{index:02d}.png" for index in range(24)]
    for index, name in enumerate(names):
        cv2.imwrite(str(folder / name), face_frame(160, 120, index))
    doomed, finished_before = cluster.add_node(num_cpus=1), []
    cluster.wait_for_nodes()

    def remove_node() -> None:
        deadline = time.monotonic() + 120
        while not done_in_manifest(out) and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.remove_node(doomed)
        finished_before.append(len(done_in_manifest(out)))

    remover = threading.Thread(target=remove_node)
    remover.start()
    config = replace(config_for(weights["random"]), batch_size=4)  # six chunks: results arrive over time
    summary = convert_dir(folder, out, config, engine=engine_for("ray"))
    remover.join()
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert sorted(files) == names and len(summary.results) == 24
    for name, entry in files.items():
        assert entry["status"] == "done" and (out / name).is_file() or \
            entry["status"] == "failed" and entry["reason"].startswith("not converted on Ray"), (name, entry)
    # A write cut off by the node's death can leave its hidden temp file; the retry writes the output itself.
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {*names, "manifest.json"} - {
        name for name, entry in files.items() if entry["status"] == "failed"}
    assert 0 < finished_before[0] < 24, finished_before  # the node was removed mid-run


def ray_processes() -> set[int]:
    """Pids of the Ray services running on this machine (each Ray instance has its own gcs_server and raylet)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in {"gcs_server", "raylet"}:
                pids.add(int(entry.name))
    return pids


@pytest.mark.slow
def test_ctrl_c_on_ray_exits_130_with_a_true_manifest(cluster, weights, tmp_path):
    """The command's own local Ray; Ctrl-C: exit 130, every file listed is on disk and nothing else is, and the
    Ray it started is stopped."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for index in range(24):
        cv2.imwrite(str(folder / f"r{index:02d}.png"), portrait())
    before = ray_processes()
    child = start_cli("convert", folder, out, "-e", "happy", "--weights", weights["random"], "--crop-size", 64,
                      "--engine", "ray", "--jobs", 2)
    wait_for(lambda: done_in_manifest(out), child, "a first file in the manifest")
    assert ray_processes() - before  # the command started a Ray of its own
    assert interrupt(child).startswith("interrupted: finished files are kept in OUT_DIR")
    listed = done_in_manifest(out)
    assert listed == {p.name for p in out.iterdir() if p.name != "manifest.json"} and 0 < len(listed) < 24
    deadline = time.monotonic() + 30
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes() - before


def test_ray_address_needs_the_ray_engine(tmp_path):
    command = ["convert", tmp_path, tmp_path / "out", "-e", "happy", "--ray-address", "auto"]
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, command)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2 and "--ray-address needs --engine ray" in result.stderr


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_an_unreachable_ray_address_fails_at_once_in_one_line_and_leaves_nothing(weights, tmp_path):
    import socket

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), portrait())
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = run_cli("convert", folder, out, "-e", "happy", "--weights", weights["identity"], "--engine", "ray",
                     "--ray-address", address, "--no-progress")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --ray-address {address}: no Ray cluster answers there (connection refused); start one with "
        "`ray start --head`, or leave --ray-address out for a Ray of this run's own"]
    assert not out.exists()


@pytest.mark.slow
def test_a_local_ray_run_prints_no_ray_notices(weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), portrait())
    result = run_cli("convert", folder, tmp_path / "out", "-e", "happy", "--weights", weights["identity"],
                     "--engine", "ray", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Token authentication" not in result.stderr
