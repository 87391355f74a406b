"""Drivers for the systems bench/vs_peers.py compares meshd against, behind one interface.

A system subclasses ``common.Driver`` and adds itself to ``DRIVERS``.
"""

from .common import Driver
from .kinship_driver import KinshipDriver
from .meshd_driver import MeshdDriver
from .serf import SerfDriver

#: Drivers by the system name used on the command line and in the result tables.
DRIVERS: dict[str, type[Driver]] = {d.system: d for d in (MeshdDriver, SerfDriver, KinshipDriver)}

__all__ = ["DRIVERS", "Driver", "KinshipDriver", "MeshdDriver", "SerfDriver"]
