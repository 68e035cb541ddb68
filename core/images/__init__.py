"""Images in: safe decoding of untrusted files, colour management, and what an output keeps
of its input."""
