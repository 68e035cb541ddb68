"""Images out: encoding, the AI label, Content Credentials and the provenance every output
carries."""
