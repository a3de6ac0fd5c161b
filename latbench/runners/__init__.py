"""Runners: what executes models on a device and how their output is read."""

from pathlib import Path

#: The bundled Python runner, copied to devices as it is.
PYRUNNER_PATH = Path(__file__).with_name("pyrunner.py")
