"""Figures from plain values (colours, the matrix heatmap, the random-distribution figure)."""
