"""The long-running loop and the change sources it listens to."""
