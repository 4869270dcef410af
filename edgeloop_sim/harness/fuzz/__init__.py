"""Fuzz targets: one hypothesis strategy and one entry point per inbound payload type.

Each target feeds generated input into the REAL parsing entry point of the side
that receives it (the agent's ``Pipeline.handle``, the cloud's
``Receiver.handle``, the teacher's request handler, ...). Inputs are both
structure-aware (a valid payload with one field mutated: wrong types, NaN/Inf,
huge numbers, deep nesting, unicode, topic injection strings, oversize) and raw
bytes.

"Every reject counted" is checked twice: per call, the target classifies the
outcome as ``accepted`` or a short reason label and fails on anything else
(an exception other than the documented rejection type is a crash); per run,
``accepted + sum(rejected by reason) == cases`` in the harness's tally AND in
the component's own counters (pipeline counters, receiver counters and its
SQLite ``rejects`` table, teacher stats), so a reject the component forgets to
count is caught too. Every call is timed: no call may take longer than
``MAX_CALL_S`` (no hang).

The chunk target is the exception to "real entry point": the chunk check lives
inside a closure of ``ModelManager._fetch_chunks`` and cannot be called without
a broker session, so :func:`check_chunk` mirrors it line by line on the real
primitives (``ArchiveInfo.chunk_length``, ``chunks_filter``, sha256). A pure
``check_chunk`` in ``edge_agent/updates/manager.py`` would let this test call
the real thing; see the report.
"""
