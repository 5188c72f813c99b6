"""The face stage: SCRFD detection (detector), the one 5-point aligner and face selection (align), and tracking with
landmark smoothing across video frames (tracking)."""
