"""Model plumbing: loading (and the embedded models), where θ goes (sites, hooks, the head),
the cached prefix and the layers above S (segment), the batched JVP/VJP, SteeringVector, steered
generation. Imports steerlab.base, steerlab.store and steerlab.questions."""
