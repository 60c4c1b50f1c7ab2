"""What every room uses: the error types users see, the one atomic file writer and where the
repository is, the ranks of a torchrun job, progress lines and bars. Imports nothing else of steerlab."""
