"""The plumbing every mode runs on, none of it about what is learned: file writes that survive a kill (files), one
writer per model_dir (runlock), stopping cleanly when the machine is taken (preemption), checkpoints and their
record (checkpoints), devices and strategies (distribute), and progress, summaries and plots (monitor)."""
