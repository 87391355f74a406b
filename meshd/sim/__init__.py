"""The deterministic simulator: real gossip engines on virtual time and a modelled network.

`clock.py` is the event heap, `net.py` the fate of each packet, `cluster.py`
N engines built from one seed with controls (crash, restart, partition,
starve) and what every node saw. It imports only the sans-IO modules.
"""
