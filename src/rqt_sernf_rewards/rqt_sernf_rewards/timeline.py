"""Timeline of one episode: every camera's frames as a strip, scalar plots and the reward
events, under one shared cursor; plus the large frame views of the cursor's step.

Mouse: click sets the cursor; drag a reward marker to move it (one undo step per drag);
double-click the reward row to place a reward there.
"""

from __future__ import annotations

import numpy as np

from .episode_source import EpisodeData
from .label_model import LabelDocument, clamp_step
from .qt import QtCore, QtGui, QtWidgets, Signal

__all__ = ["FrameView", "TimelineWidget", "numpy_to_qimage"]

_TITLE_W = 150
_STRIP_H = 46
_PLOT_H = 64
_REWARD_H = 46
_PAD = 4
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


def numpy_to_qimage(image: np.ndarray) -> QtGui.QImage:
    """uint8 ``[h, w, 3]`` RGB -> QImage (a copy: the array may go away)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    return QtGui.QImage(image.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()


def subtask_color(subtask: str, subtasks: tuple[str, ...]) -> QtGui.QColor:
    index = subtasks.index(subtask) + 1 if subtask in subtasks else 0
    return QtGui.QColor(_PALETTE[index % len(_PALETTE)])


class FrameView(QtWidgets.QWidget):
    """One camera's frame at the cursor, scaled to fit with its aspect ratio kept."""

    def __init__(self, title: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self._image: QtGui.QImage | None = None
        self.setMinimumSize(160, 140)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Expanding)

    def set_frame(self, image: np.ndarray | None) -> None:
        self._image = None if image is None else numpy_to_qimage(image)
        self.update()

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt override
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), QtGui.QColor("#202020"))
        area = self.rect().adjusted(2, 18, -2, -2)
        if self._image is not None:
            scaled = self._image.size().scaled(area.size(), QtCore.Qt.AspectRatioMode.KeepAspectRatio)
            target = QtCore.QRect(0, 0, scaled.width(), scaled.height())
            target.moveCenter(area.center())
            p.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(target, self._image)
        p.setPen(QtGui.QColor("#e0e0e0"))
        p.drawText(QtCore.QRect(4, 0, self.width() - 8, 18), QtCore.Qt.AlignmentFlag.AlignVCenter, self.title)
        p.end()


class TimelineWidget(QtWidgets.QWidget):
    """Camera strips, scalar plots and reward events of one episode, with a shared cursor."""

    cursorChanged = Signal(int)  # noqa: N815 - Qt signal naming
    labelsEdited = Signal()  # noqa: N815
    selectionChanged = Signal(int)  # noqa: N815 - event index, -1 for none
    placeRequested = Signal(int)  # noqa: N815 - double-click on the reward row at this step

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.data: EpisodeData | None = None
        self.doc: LabelDocument | None = None
        self.subtasks: tuple[str, ...] = ()
        self.cursor = 0
        self.selected: int | None = None
        self._thumbs: dict[str, list[tuple[int, QtGui.QImage]]] = {}
        self._drag: int | None = None
        self._drag_step: int | None = None
        self.setMouseTracking(False)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)

    # ------------------------------------------------------------------------ content

    def set_episode(self, data: EpisodeData | None, doc: LabelDocument | None, subtasks: tuple[str, ...]) -> None:
        self.data, self.doc, self.subtasks = data, doc, subtasks
        self.cursor, self.selected, self._drag = 0, None, None
        self._thumbs = {}
        if data is not None:
            for key in data.camera_keys:
                frames = data.steps[key]
                count = min(len(frames), 48)
                steps = np.linspace(0, len(frames) - 1, count).round().astype(int)
                thumbs = []
                for s in steps:
                    img = numpy_to_qimage(frames[s])
                    thumbs.append((int(s), img.scaledToHeight(_STRIP_H - 2 * _PAD,
                                                              QtCore.Qt.TransformationMode.SmoothTransformation)))
                self._thumbs[key] = thumbs
        self.setFixedHeight(self.sizeHint().height())
        self.update()

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt override
        if self.data is None:
            return QtCore.QSize(600, _REWARD_H + 20)
        h = len(self.data.camera_keys) * _STRIP_H + len(self.data.scalars) * _PLOT_H + _REWARD_H + 20
        return QtCore.QSize(600, h)

    def set_cursor(self, step: int) -> None:
        if self.data is None:
            return
        step = clamp_step(step, self.data.length)
        if step != self.cursor:
            self.cursor = step
            self.cursorChanged.emit(step)
            self.update()

    def select(self, index: int | None) -> None:
        self.selected = index
        self.selectionChanged.emit(-1 if index is None else index)
        self.update()

    # ------------------------------------------------------------------------ geometry

    def _x_of(self, step: float) -> float:
        assert self.data is not None
        span = max(self.data.length - 1, 1)
        return _TITLE_W + (self.width() - _TITLE_W - 10) * step / span

    def _step_of(self, x: float) -> int:
        assert self.data is not None
        span = max(self.data.length - 1, 1)
        return clamp_step(round((x - _TITLE_W) / max(self.width() - _TITLE_W - 10, 1) * span), self.data.length)

    def _reward_row_top(self) -> int:
        assert self.data is not None
        return len(self.data.camera_keys) * _STRIP_H + len(self.data.scalars) * _PLOT_H

    # ------------------------------------------------------------------------ painting

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt override
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), self.palette().color(QtGui.QPalette.ColorRole.Base))
        if self.data is None or self.doc is None:
            p.drawText(self.rect(), QtCore.Qt.AlignmentFlag.AlignCenter, "no episode open")
            p.end()
            return
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
        text = self.palette().color(QtGui.QPalette.ColorRole.Text)
        y = 0
        for key in self.data.camera_keys:
            p.setPen(text)
            p.drawText(QtCore.QRect(4, y, _TITLE_W - 8, _STRIP_H), QtCore.Qt.AlignmentFlag.AlignVCenter, key)
            thumbs = self._thumbs.get(key, [])
            for i, (step, img) in enumerate(thumbs):
                x0 = int(self._x_of(step))
                x1 = int(self._x_of(thumbs[i + 1][0])) if i + 1 < len(thumbs) else self.width() - 10
                width = max(min(img.width(), x1 - x0), 1)
                p.drawImage(QtCore.QRect(x0, y + _PAD, width, img.height()), img,
                            QtCore.QRect(0, 0, width, img.height()))
            y += _STRIP_H
        for track in self.data.scalars:
            p.setPen(text)
            p.drawText(QtCore.QRect(4, y, _TITLE_W - 8, _PLOT_H), QtCore.Qt.TextFlag.TextWordWrap
                       | QtCore.Qt.AlignmentFlag.AlignVCenter, track.title)
            p.setPen(QtGui.QPen(QtGui.QColor("#c8c8c8"), 1))
            p.drawLine(_TITLE_W, y + _PLOT_H - 2, self.width() - 10, y + _PLOT_H - 2)
            values = track.values
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            scale = (hi - lo) or 1.0
            xs = [self._x_of(s) for s in range(len(values))]
            for col in range(values.shape[1]):
                p.setPen(QtGui.QPen(QtGui.QColor(_PALETTE[col % len(_PALETTE)]), 1.4))
                ys = y + _PAD + (1 - (values[:, col] - lo) / scale) * (_PLOT_H - 3 * _PAD)
                p.drawPolyline(QtGui.QPolygonF([QtCore.QPointF(xx, float(yy)) for xx, yy in zip(xs, ys, strict=True)]))
            y += _PLOT_H
        # reward row
        p.setPen(text)
        p.drawText(QtCore.QRect(4, y, _TITLE_W - 8, _REWARD_H), QtCore.Qt.AlignmentFlag.AlignVCenter, "rewards")
        p.setPen(QtGui.QPen(QtGui.QColor("#909090"), 1))
        base = y + _REWARD_H - 12
        p.drawLine(_TITLE_W, base, self.width() - 10, base)
        for i, e in enumerate(self.doc.events):
            step = self._drag_step if (self._drag == i and self._drag_step is not None) else e.step
            x = self._x_of(step)
            color = subtask_color(e.subtask, self.subtasks)
            if i == self.selected:
                p.setPen(QtGui.QPen(QtGui.QColor("#000000"), 2.5))
            else:
                p.setPen(QtGui.QPen(color.darker(150), 1))
            p.setBrush(color)
            tri = QtGui.QPolygonF([QtCore.QPointF(x, base), QtCore.QPointF(x - 7, base - 14),
                                   QtCore.QPointF(x + 7, base - 14)])
            p.drawPolygon(tri)
            p.setPen(text)
            label = f"{e.value:+g} {e.subtask}".strip()
            width = p.fontMetrics().horizontalAdvance(label)
            left = x + 8 if x + 8 + width < self.width() - 4 else x - 8 - width  # keep it on screen
            p.drawText(QtCore.QPointF(left, base - 4), label)
        # ticks: seconds
        p.setPen(QtGui.QPen(QtGui.QColor("#909090"), 1))
        rate = self.data.control_rate_hz
        seconds = (self.data.length - 1) / rate
        stride = max(1, int(np.ceil(seconds / 12)))
        for sec in range(0, int(seconds) + 1, stride):
            x = self._x_of(sec * rate)
            p.drawLine(QtCore.QPointF(x, base), QtCore.QPointF(x, base + 3))
            p.drawText(QtCore.QPointF(x - 6, base + 12), f"{sec}s")
        # the shared cursor
        x = self._x_of(self.cursor)
        p.setPen(QtGui.QPen(QtGui.QColor("#e02020"), 2))
        p.drawLine(QtCore.QPointF(x, 0), QtCore.QPointF(x, self.height()))
        p.end()

    # ------------------------------------------------------------------------ mouse

    def _event_under(self, pos: QtCore.QPointF) -> int | None:
        if self.doc is None or pos.y() < self._reward_row_top():
            return None
        best, best_d = None, 9.0
        for i, e in enumerate(self.doc.events):
            d = abs(self._x_of(e.step) - pos.x())
            if d < best_d:
                best, best_d = i, d
        return best

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self.data is None:
            return
        pos = event.position()
        hit = self._event_under(pos)
        if hit is not None:
            self.select(hit)
            self._drag, self._drag_step = hit, self.doc.events[hit].step
        elif pos.x() >= _TITLE_W:
            self.set_cursor(self._step_of(pos.x()))
        self.setFocus()

    def mouseMoveEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self.data is None:
            return
        if self._drag is not None:
            self._drag_step = self._step_of(event.position().x())
            self.set_cursor(self._drag_step)
            self.update()
        elif event.position().x() >= _TITLE_W:
            self.set_cursor(self._step_of(event.position().x()))

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        if (self._drag is not None and self.doc is not None and self._drag_step is not None
                and self._drag_step != self.doc.events[self._drag].step):
            self.select(self.doc.move_event(self._drag, self._drag_step))
            self.labelsEdited.emit()
        self._drag, self._drag_step = None, None
        self.update()

    def mouseDoubleClickEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self.data is None or event.position().y() < self._reward_row_top():
            return
        self.set_cursor(self._step_of(event.position().x()))
        # The owning widget places the event (it knows the chosen value and subtask).
        self.placeRequested.emit(self.cursor)
