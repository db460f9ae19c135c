"""The Qt binding the widgets use: ``python_qt_binding`` inside rqt (it picks the binding rqt
was built with), PySide6 elsewhere (the standalone ``sernf-label`` window and the tests).

Widgets import ``QtCore``, ``QtGui``, ``QtWidgets`` and ``Signal`` from here only.
"""

from __future__ import annotations

try:  # a full ROS install: share rqt's binding
    from python_qt_binding import QtCore, QtGui, QtWidgets  # type: ignore[import-not-found]

    Signal = QtCore.Signal if hasattr(QtCore, "Signal") else QtCore.pyqtSignal
    BINDING = "python_qt_binding"
except ImportError:
    from PySide6 import QtCore, QtGui, QtWidgets

    Signal = QtCore.Signal
    BINDING = "PySide6"

__all__ = ["BINDING", "QtCore", "QtGui", "QtWidgets", "Signal"]
