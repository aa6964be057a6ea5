"""The command line: ``mailcontinuity`` and its commands, one module per part of the system."""
