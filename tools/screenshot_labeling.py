"""Screenshot of the reward labeling window on an episode of the simulated hand task.

    python tools/screenshot_labeling.py [--out docs/img/labeling.png] [--store DIR]

Records two scripted-expert episodes of the hand pick-and-place task with rendered camera
images into an episode store (a temporary one unless --store is given), opens the standalone
window offscreen, places the operator's rewards where the task's own reward events are,
scrubs to the first of them and saves the window as a PNG. Needs MuJoCo offscreen rendering
(MUJOCO_GL=egl, set by env.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def record_store(path: Path) -> str:
    from sernf_data.labels import LabelSettings, LabelStore
    from sernf_data.store import EpisodeStore, StoreSpec
    from sernf_sim.hand_pick_place.demos import hand_demo_dataset

    episodes = hand_demo_dataset(n=2, seed=3, num_envs=2, render_images=True, image_size=160)
    store = None
    for k, (steps, meta) in enumerate(episodes):
        if store is None:
            from sernf_data.spec import ObsKeySpec

            spec = StoreSpec(
                obs={key: ObsKeySpec(tuple(steps[key].shape[1:]), "rgb" if steps[key].dtype.name == "uint8" else "lowdim")
                     for key in steps if key not in ("action", "reward", "timestamp")},
                action_dim=int(steps["action"].shape[1]), control_rate_hz=10.0)
            store = EpisodeStore(path, mode="a", spec=spec)
        meta = dict(meta, id=f"sim-hand-{k}", operator="scripted-expert")
        if meta["id"] not in store.episode_ids():
            store.append_episode(steps, meta)
    LabelStore(str(path)).write_settings(LabelSettings(reward_source="labels", subtasks=("grasp", "place")))
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img/labeling.png")
    parser.add_argument("--store", default="", help="where to record the episodes (default: a temp dir)")
    args = parser.parse_args()
    from rqt_sernf_rewards.qt import QtWidgets
    from rqt_sernf_rewards.standalone import LabelingWindow

    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(args.store) if args.store else Path(tmp) / "hand.zarr"
        uri = record_store(store_path)
        app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0]])
        window = LabelingWindow(settings=None)
        window.resize(1500, 950)
        window.show()
        widget = window.widget
        if not widget.open_location(uri):
            print(widget.last_message, file=sys.stderr)
            return 1
        widget.author_edit.setText("operator")
        doc = widget.doc
        # Label the episode as a person would: the task's reward steps become subtask rewards.
        recorded = [e.step for e in doc.events]
        for index in reversed(range(len(doc.events))):
            doc.remove_event(index)
        for name, step in zip(("grasp", "place"), recorded, strict=False):
            doc.add_event(step, 1.0, name)
            doc.set_subtask_success(name, True)
        widget._after_edit()
        widget.next_event()
        widget.step_cursor(2)
        for _ in range(5):
            app.processEvents()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(args.out):
            print(f"could not write {args.out}", file=sys.stderr)
            return 1
        print(f"wrote {args.out} ({widget.data.episode_id}, {widget.data.length} steps, "
              f"cameras {', '.join(widget.data.camera_keys)})")
        window.widget.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
