"""`certseg evaluate`: metrics (pure measures), protocol (what is certified, typed rows) and writers (files)."""
