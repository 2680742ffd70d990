"""Orchestration that is neither inference nor transport: the per-file pipeline, discovery and
data-root policy, the job summary, the job store, delivery decisions, settings and logging."""
