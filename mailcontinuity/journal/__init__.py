"""The journal milter: every message Postfix accepts gets an id, and a copy for each local
recipient (and the sender's Sent) goes durably into the ``spool``, then the ``shipper`` moves it
into the standby through a ``sinks`` entry; ``prune`` drops copies past the retention."""
