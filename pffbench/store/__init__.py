"""What pffbench writes to disk: results files (format; writer, with encode
for attribute values and provenance for where a run was measured), the
checks before training of everything a run writes (checks), where a run goes
when its append fails (rescue), and the one atomic write (atomic) that
results, checkpoints and saved models go through."""
