"""Counted-work model: what the Triton kernels do, counted under the interpreter, and a roofline
that turns the counts into modeled GPU time (a model, not a measurement)."""
