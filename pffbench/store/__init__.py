"""What pffbench writes to disk: results files (format, writer) and the one
atomic write (atomic) that results, checkpoints and saved models go through."""
