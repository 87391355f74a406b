"""Seeded simulations: real gossip engines on virtual time (meshd/sim), bounds in protocol periods."""
