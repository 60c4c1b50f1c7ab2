"""How steering vectors are found: CAA, power iteration on the segment's Jacobian (at 0 or at a
point), MELBO. Imports base, questions and lm, never steerlab.measure."""
