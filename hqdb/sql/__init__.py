"""The SQL face of hqdb: the apsw ``hq`` virtual-table module, its SQL functions and
:func:`connect`. No storage or search logic lives here."""
