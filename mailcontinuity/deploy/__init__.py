"""What mailcontinuity asks of Postfix and Dovecot: the ``settings`` they need (one source for
check-config, the lab and the Ansible role) and the gateway's ``routing`` table."""
