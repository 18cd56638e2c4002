"""What every entry point shares: Ray start-up, run identity for --resume, progress lines, atomic
writes, versioned JSON manifests and config flags."""
