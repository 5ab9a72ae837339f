"""Job configuration and the checkpoint that makes a job resumable."""
