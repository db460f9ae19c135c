"""The rqt plugin manifest without rqt: plugin.xml names an existing Plugin subclass with the
rqt_gui_py base type, package.xml exports it, and the build installs it."""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]


def test_plugin_xml_names_the_plugin_class():
    cls = ET.parse(PKG / "plugin.xml").getroot().find("class")
    assert cls.get("base_class_type") == "rqt_gui_py::Plugin"
    module, name = cls.get("type").rsplit(".", 1)
    tree = ast.parse((PKG / (module.replace(".", "/") + ".py")).read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert name in classes and [b.id for b in classes[name].bases] == ["Plugin"]
    methods = {n.name for n in classes[name].body if isinstance(n, ast.FunctionDef)}
    assert {"shutdown_plugin", "save_settings", "restore_settings"} <= methods
    assert cls.find("qtgui/label").text


def test_package_xml_exports_the_plugin_and_setup_installs_it():
    export = ET.parse(PKG / "package.xml").getroot().find("export/rqt_gui")
    assert export is not None and export.get("plugin") == "${prefix}/plugin.xml"
    assert '"plugin.xml"' in (PKG / "setup.py").read_text()
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    installed = [Path(p) / "share/rqt_sernf_rewards/plugin.xml" for p in prefixes]
    assert any(p.is_file() for p in installed), f"plugin.xml not installed under {prefixes}"
