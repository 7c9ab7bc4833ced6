"""What is measured: memory, latency, quality. Knows nothing about reports."""
