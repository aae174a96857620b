"""Data-set galleries (Zeiler & Fergus, Fig. 2).

Scan a folder for each channel's strongest activations (``scan``, ``decoding``, ``crops``),
project them (``projections``), and draw and write the result (``tiles``, ``pages``,
``output``); ``build`` runs the stages in order.
"""
