"""How steering vectors are scored: the letter and cloze fast paths and their plain twins
(reference), KL on neutral text, eval's grid, scale units and the cost search, the eval of one
split, statistics and the val choice, the cross-behaviour matrix, the study. Imports base,
store, questions and lm, never steerlab.methods."""
