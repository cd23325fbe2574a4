"""Property-based fuzzing of prompt -> final prompt; see run_fuzz.py."""
