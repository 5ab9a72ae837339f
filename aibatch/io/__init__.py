"""Files in and out: input sources in bounded batches, the Parquet output."""
