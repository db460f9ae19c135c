"""``sernf-label``: the reward labeling widget in its own window (PySide6), no rqt needed.

    sernf-label [STORE_OR_BAG_FOLDER] [--subtasks retrieve,cut] [--episode ID] [--live]

Settings (last store, labeler name, window geometry) are kept with QSettings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import __version__
from .qt import QtCore, QtGui, QtWidgets
from .widget import RewardLabelingWidget

__all__ = ["LabelingWindow", "live_link_factory", "main"]


def live_link_factory() -> Any:
    """Builds the ROS link on demand; raises ImportError where ROS 2 is not installed."""
    from .live_node import LiveLink

    return LiveLink()


class LabelingWindow(QtWidgets.QMainWindow):
    def __init__(self, settings: QtCore.QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle(f"SERNF reward labeling {__version__}")
        self.widget = RewardLabelingWidget(self, live_link_factory=live_link_factory)
        self.setCentralWidget(self.widget)
        self.widget.statusMessage.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.settings = settings
        self.resize(1400, 900)

    def restore(self) -> None:
        if self.settings is None:
            return
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QtCore.QByteArray):
            self.restoreGeometry(geometry)
        values = {key: self.settings.value(f"widget/{key}") for key in self.widget.settings_dict()}
        self.widget.apply_settings(values)

    def save(self) -> None:
        if self.settings is None:
            return
        self.settings.setValue("geometry", self.saveGeometry())
        for key, value in self.widget.settings_dict().items():
            self.settings.setValue(f"widget/{key}", value)
        self.settings.sync()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt override
        unsaved = self.widget.unsaved_episodes()
        if unsaved:
            answer = QtWidgets.QMessageBox.question(
                self, "Unsaved labels",
                f"{len(unsaved)} episode(s) have unsaved labels ({', '.join(unsaved[:5])}). Quit anyway?")
            if answer != QtWidgets.QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.save()
        self.widget.shutdown()
        event.accept()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sernf-label", description="Label sparse rewards on SERNF episodes.")
    parser.add_argument("location", nargs="?", help="episode store (path or URL) or a folder of rosbag2 bags")
    parser.add_argument("--subtasks", default="", help="comma-separated subtasks for live buttons without a store")
    parser.add_argument("--episode", default="", help="episode id to open first")
    parser.add_argument("--live", action="store_true", help="start on the live page, connected to ROS")
    args, qt_args = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0], *qt_args])
    window = LabelingWindow(QtCore.QSettings("sernf", "sernf-label"))
    window.restore()
    if args.location and not window.widget.open_location(args.location):
        print(f"sernf-label: {window.widget.last_message}", file=sys.stderr)
        return 2
    if args.subtasks and window.widget.source is None:
        window.widget.set_subtasks(tuple(s for s in args.subtasks.split(",") if s))
    if args.episode:
        window.widget.apply_settings({"episode": args.episode})
    if args.live:
        window.widget.tabs.setCurrentIndex(1)
        window.widget.connect_live()
    window.show()
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
