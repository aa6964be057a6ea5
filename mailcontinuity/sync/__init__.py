"""The sync agent and failback: record outage activity on the standby, merge it into the primary."""
