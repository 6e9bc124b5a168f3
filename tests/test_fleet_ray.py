"""The same fleet jobs on a real local Ray with 2 workers give exactly the in-process results."""

from __future__ import annotations

import pytest
from fleet_helpers import MODEL, write_recording

from edgeliquid.fleet import sweep as sw
from edgeliquid.fleet.engine import Engine, TaskFailure, local_pythonpath
from edgeliquid.fleet.replay import fleet_replay

ray = pytest.importorskip("ray", reason="Ray is the fleet extra: pip install -e '.[fleet]'")


@pytest.fixture(scope="module")
def ray_engine():
    import os

    os.environ["PYTHONPATH"] = local_pythonpath()  # workers import this checkout
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield Engine("local")  # joins the running Ray, leaves it running
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    for i in range(6):
        write_recording(d / f"r{i}.mcap", seed=10 + i, perturb_at=50 * i if i else None, perturb=0.02 * i)
    (d / "broken.mcap").write_bytes(b"\x89MCAP0\r\n\x01")
    return d


def test_fleet_replay_on_ray_equals_in_process(ray_engine, recordings):
    kw = {"threshold": 0.05, "worst": 3, "progress": False, "max_task_bytes": 1}  # one recording a task
    local = fleet_replay([str(recordings)], str(MODEL), **kw)
    remote = fleet_replay([str(recordings)], str(MODEL), engine=ray_engine, **kw)
    assert remote["engine"].startswith("ray") and remote["tasks"] == 7
    for k in ("fleet", "per_recording", "unreadable"):
        assert remote[k] == local[k], k
    assert local["fleet"]["worst"][0]["recording"].endswith("r5.mcap")


def test_fleet_sweep_on_ray_equals_in_process(ray_engine, tmp_path, monkeypatch):
    g = tmp_path / "g.yaml"
    g.write_text("grid: {noise: [0, 0.2], delay_steps: [0, 4]}\nfixed: {init_angle: 0.1}\n")
    monkeypatch.setattr(sw, "ROWS_PER_TASK", 16)  # several tasks for the two workers
    local = sw.fleet_sweep([str(MODEL)], str(g), rollouts=12, seconds=1.5, progress=False)
    remote = sw.fleet_sweep([str(MODEL)], str(g), rollouts=12, seconds=1.5, engine=ray_engine, progress=False)
    assert remote["tasks"] == local["tasks"] == 3
    assert remote["conditions"] == local["conditions"]
    assert remote["plant_steps"] == local["plant_steps"]


def test_a_failing_task_on_ray_is_retried_then_reported(ray_engine):
    # replay_task takes (job, paths): a bare string fails on every worker
    from edgeliquid.fleet.replay import replay_task

    out = ray_engine.map(replay_task, ["not a task"])
    assert isinstance(out[0], TaskFailure) and out[0].index == 0 and "ValueError" in out[0].error


def test_a_ray_task_runs_on_the_cpus_ray_assigned_it(ray_engine):
    # each task takes one CPU: one numba thread, not the node's every core. A lambda travels
    # by value (workers cannot import this test module).
    threads = ray_engine.map(lambda _: __import__("numba").get_num_threads(), [0, 1, 2])
    assert threads == [1, 1, 1]
