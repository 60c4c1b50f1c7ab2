"""Scales: how big θ is, in the three units a scale can be read in (SCALE_UNIT). norms.py: ‖h_S‖
and absolute L2 norms; unit.py: the median ‖h_S‖ of a layer, measured once and stored (resid);
calibrate.py: the |θ| at which a direction costs a KL on neutral text, the search eval runs
(kl); costs.py: the same from Python (at_cost). Four modules, not one, because a stored group's
code hash covers the modules it is computed by: the stored ‖h_S‖ must not be recomputed when the
KL search changes."""
