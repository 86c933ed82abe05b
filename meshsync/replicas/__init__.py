"""The three replicas of every item, each with its own I/O and detection."""
