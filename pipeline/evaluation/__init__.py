"""Evaluation tooling, apart from the processing path (which never imports it): prepare-data builds aligned training
sets (prepare), and evaluate judges a generator's edits (evaluate, with judges, sources, metrics, flicker, report)."""
