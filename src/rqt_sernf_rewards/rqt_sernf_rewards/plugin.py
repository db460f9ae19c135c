"""rqt plugin: the reward labeling widget inside rqt (Plugins > Robot Tools > SERNF Reward
Labeling). Only this module imports rqt_gui_py; the widget itself is binding-neutral.
"""

from __future__ import annotations

from typing import Any

from rqt_gui_py.plugin import Plugin  # type: ignore[import-not-found]

from .standalone import live_link_factory
from .widget import RewardLabelingWidget

__all__ = ["RewardLabelingPlugin"]


class RewardLabelingPlugin(Plugin):
    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.setObjectName("SernfRewardLabeling")
        self._widget = RewardLabelingWidget(live_link_factory=live_link_factory)
        if context.serial_number() > 1:
            self._widget.setWindowTitle(f"{self._widget.windowTitle()} ({context.serial_number()})")
        context.add_widget(self._widget)

    def shutdown_plugin(self) -> None:
        self._widget.shutdown()

    def save_settings(self, plugin_settings: Any, instance_settings: Any) -> None:
        for key, value in self._widget.settings_dict().items():
            instance_settings.set_value(key, value)

    def restore_settings(self, plugin_settings: Any, instance_settings: Any) -> None:
        values = {key: instance_settings.value(key) for key in self._widget.settings_dict()}
        self._widget.apply_settings(values)
