"""The policy daemon and health monitor: routes protected domains to the standby on failure."""
