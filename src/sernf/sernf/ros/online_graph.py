"""Stage IV through the ROS graph: sim robot, policy and learner as separate processes over DDS.

`python -m sernf.demo` runs the online stage this way (issue #5): the very graph that
`ros2 launch sernf sim.launch.py` starts (`sernf.graph.sim_graph`, `config/sim.yaml`), with the
run's paths and budgets written into a copy of the parameter file. This module only drives and
watches it from outside, through the same interfaces an operator uses on the robot:

* it starts each episode with the simulator's `/sim_robot/reset` service (auto-reset off, so an
  iteration is exactly K rollouts, as in the paper's "10 rollouts, then train", §V-B);
* it counts the policy's `/sernf/replay` announcements (the episode was recorded, committed to
  the replay store and handed to the learner) and reads their subtask flags;
* after K episodes it waits for the learner's `/sernf/checkpoint` and for the policy's
  `/diagnostics` to report that checkpoint step, i.e. the policy node hot-reloaded it;
* then the caller evaluates that checkpoint (in-process, the same evaluation as every other
  stage) while the graph is idle, and the next iteration starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sernf.graph import sim_graph
from sernf.online_graph import (
    SUBTASKS,
    GraphIteration,
    GraphStageConfig,
    isolated_ros_env,
    write_graph_parameters,
)
from sernf.run_graph import GraphProcesses


class OnlineGraph:
    """The running sim graph plus an observer node; use as a context manager (always stops)."""

    def __init__(self, config: GraphStageConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.log = log
        self.env = isolated_ros_env()
        self.logs = config.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.graph = GraphProcesses(sim_graph(), write_graph_parameters(config), env=self.env, log_dir=self.logs)
        self.replays: list[Any] = []
        self.checkpoints: list[Any] = []
        self.policy_steps: list[int] = []
        self.policy_status: dict[str, str] = {}
        self.episode_ends: list[Any] = []

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> OnlineGraph:
        # The observer joins the graph's domain (rclpy reads it at init).
        os.environ["ROS_DOMAIN_ID"] = self.env["ROS_DOMAIN_ID"]
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_srvs.srv import Trigger

        from sernf_interfaces.msg import CheckpointAvailable, EpisodeEvent, ReplayEpisode

        self._rclpy = rclpy
        self._trigger = Trigger
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        try:
            self.node = Node("sernf_demo", context=self.context)
            self.node.create_subscription(ReplayEpisode, "/sernf/replay", self.replays.append, 100)
            self.node.create_subscription(CheckpointAvailable, "/sernf/checkpoint", self.checkpoints.append, 20)
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
            self._episode_end = EpisodeEvent.END
            self.node.create_subscription(EpisodeEvent, "/sernf/episode", self._on_episode_event, 20)
            self.reset_client = self.node.create_client(Trigger, "/sim_robot/reset")
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            self.log(f"[demo] starting the ROS graph (sim_robot, policy, learner) in DDS domain "
                     f"{self.env['ROS_DOMAIN_ID']}; node logs in {self.logs}")
            self.graph.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.graph.stop()
        if getattr(self, "executor", None) is not None:
            self.executor.shutdown()
        if getattr(self, "node", None) is not None:
            self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "checkpoint_step" in values and "queue_depth" in values:  # the policy node's status
                self.policy_steps.append(int(values["checkpoint_step"]))
                self.policy_status = values

    def _on_episode_event(self, msg: Any) -> None:
        if msg.event == self._episode_end:
            self.episode_ends.append(msg)

    def _policy_ready(self, step: int, good_inputs: bool = True) -> bool:
        """The policy runs checkpoint ``step`` and (with ``good_inputs``) has no safety hold."""
        s = self.policy_status
        return s.get("checkpoint_step") == str(step) and (not good_inputs or s.get("safety_hold") == "false")

    def _spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; node logs in {self.logs}")
            self.executor.spin_once(timeout_sec=0.05)
            self._check_alive(what)

    def _check_alive(self, what: str) -> None:
        died = self.graph.exited()
        if died:
            tails = {name: _tail(self.logs / f"{name}.log") for name in died}
            raise RuntimeError(f"node(s) exited while waiting for {what}: {died}\n"
                               + "\n".join(f"--- {n}.log ---\n{t}" for n, t in tails.items()))

    # -- the online stage ----------------------------------------------------------------------
    def wait_until_ready(self, timeout: float = 300.0) -> int:
        """Wait until the policy runs the learner's current checkpoint; returns its step."""
        self._spin_until(lambda: bool(self.checkpoints), timeout, "the learner's first checkpoint")
        step = max(int(c.step) for c in self.checkpoints)
        # The policy refuses to record an episode that starts before its inputs arrive.
        self._spin_until(lambda: self._policy_ready(step), timeout,
                         f"the policy to run checkpoint step {step} with good inputs")
        if not self.reset_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError("/sim_robot/reset is not available")
        return step

    def run_episode(self, attempts: int = 3) -> dict[str, Any]:
        """Start one episode on the simulated robot; return the policy's announcement of it.

        An episode the policy did not record (it ended without an announcement, e.g. the
        policy was holding on bad inputs at its start) is logged and run again."""
        for attempt in range(1, attempts + 1):
            replays, ends = len(self.replays), len(self.episode_ends)
            future = self.reset_client.call_async(self._trigger.Request())
            self._spin_until(future.done, 30.0, "the /sim_robot/reset response")
            response = future.result()
            if response is None or not response.success:
                raise RuntimeError(f"/sim_robot/reset failed: {getattr(response, 'message', 'no response')}")
            self._spin_until(lambda: len(self.episode_ends) > ends, self.config.episode_timeout_s,  # noqa: B023
                             "the simulated episode to end")
            deadline = time.monotonic() + 30.0  # committing to zarr + the announcement
            while len(self.replays) <= replays and time.monotonic() < deadline:
                self.executor.spin_once(timeout_sec=0.05)
                self._check_alive("the episode's announcement on /sernf/replay")
            if len(self.replays) > replays:
                break
            status = self.policy_status
            self.log(f"[demo] warning: episode {self.episode_ends[-1].episode_id} was not recorded by the policy "
                     f"(hold reason: {status.get('hold_reason', '?')!r}, replay error: "
                     f"{status.get('last_replay_error', '?')!r}); attempt {attempt}/{attempts}")
        else:
            raise RuntimeError(f"the policy recorded none of {attempts} episodes; see {self.logs / 'policy.log'}")
        msg = self.replays[replays]
        flags = dict(zip(msg.subtask_names, msg.subtask_success, strict=True))
        return {"id": msg.episode_id, "steps": int(msg.num_steps), "return": float(msg.episode_return),
                "subtask_success": {k: bool(v) for k, v in flags.items()},
                "success": bool(flags.get(SUBTASKS[-1], False))}

    def iterations(self, count: int, first: int = 1) -> Iterator[GraphIteration]:
        """Run ``count`` online iterations (K episodes, then the learner's checkpoint, reloaded
        by the policy) and yield each; the graph is idle while the caller holds one."""
        current = self.wait_until_ready()
        for index in range(first, first + count):
            t0 = time.perf_counter()
            episodes = []
            for k in range(self.config.episodes_per_iteration):
                episodes.append(self.run_episode())
                e = episodes[-1]
                self.log(f"[demo] online iteration {index}: episode {k + 1}/{self.config.episodes_per_iteration} "
                         f"{'success' if e['success'] else 'failure'} "
                         f"({'grasp' if e['subtask_success'].get('grasp') else 'no grasp'}, {e['steps']} steps)")
            self.log(f"[demo] online iteration {index}: {sum(e['success'] for e in episodes)}/{len(episodes)} "
                     f"successful; learner training {self.config.updates_per_iteration} updates ...")
            self._spin_until(lambda: any(int(c.step) > current for c in self.checkpoints),  # noqa: B023
                             self.config.training_timeout_s, "the learner's checkpoint after the iteration")
            newest = max(self.checkpoints, key=lambda c: int(c.step))
            step = int(newest.step)
            # The checkpoint step only: an episode that ended in a safety hold (e.g. a finger
            # pushed past its range) leaves the robot where it stopped, and only the next
            # episode's reset clears that; run_episode runs again an episode the policy did
            # not record. Waiting for good inputs here waited forever.
            self._spin_until(lambda: self._policy_ready(step, good_inputs=False), 120.0,  # noqa: B023
                             f"the policy to hot-reload checkpoint step {step}")
            current = step
            yield GraphIteration(iteration=index, episodes=episodes, checkpoint_uri=str(newest.uri),
                                 checkpoint_step=step, wall_time_s=time.perf_counter() - t0)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"
