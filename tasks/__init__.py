"""Reusable, domain-free building blocks of every pipeline: ingest, write, manifest, report."""
