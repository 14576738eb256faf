"""Domain pipelines: one file per domain, registered in :mod:`imagingflows.pipelines.base`.

Run them with the CLI (``run-flow segment ...``) or from Python through the flows layer:
``from imagingflows.flows import segment, restore``.
"""
