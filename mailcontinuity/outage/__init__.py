"""The outage: the ``recorder`` (sync agent) keeps a record of what users do on the standby
(``scan``); failback ``plan``s from that record and the ``primary``'s index, ``merge``s it back,
and ``verify`` audits the result."""
