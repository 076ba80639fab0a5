"""Bringing copies back in line: hint replay and resync of a returning node, the
anti-entropy sweep, and the helpers that copy keys between nodes.

It builds on the data path (the stored value format and the write script) and is driven
by the leader's duties in :mod:`cachering.control`.
"""
