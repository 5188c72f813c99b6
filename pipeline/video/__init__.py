"""Video I/O with PyAV: probe, decode, the encoder's choices (codecs), audio, encode."""
