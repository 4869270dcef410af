"""Sequence epochs: when a node's summary numbering starts again, and how many numbers never came.

A node numbers its batches from its state directory; when that is lost the
numbers start again, and a batch arrives with a sequence number the node
already used in this epoch (or far below the epoch's first). That starts a new
*epoch* (recorded in ``epochs`` and on every batch), so gaps are counted within
an epoch and the reset itself is visible (``resets`` in the totals, the metrics
and the EdgeNode status) instead of hiding among the counts.

One rule for both store backends (``ingest/summaries.py`` keeps the state in
memory, ``ingest/pg_summaries.py`` in a locked row shared by replicas), so the
same batches give the same epochs whichever store counted them.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_controller.ingest.contracts import SeqState

__all__ = ["EPOCH_TOTALS_SQL", "REORDER_WINDOW", "advance", "gaps_of"]

# How far below an epoch's first number a new batch may arrive and still be a late one, not a
# restart. Batches overtake each other: the uplink's in-flight window, and with replicas on a
# shared subscription a killed replica's unacknowledged messages come back after it restarts,
# behind everything the other replica took meanwhile. A restarted node starts again at 0, so a
# real reset far below the first number is told at once; one that is not is told when it
# reuses a number of this epoch (the other rule).
REORDER_WINDOW = 65_536

# Per node and epoch: first and last sequence number and how many distinct ones arrived.
EPOCH_TOTALS_SQL = (
    "SELECT node, epoch, MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM batches "
    "GROUP BY node, epoch ORDER BY node, epoch"
)


def advance(st: SeqState, seq: int, used_in_epoch: Callable[[int, int], bool]) -> int | None:
    """Move ``st`` on by a NEW batch numbered ``seq``; the previous epoch's last number if one started.

    ``used_in_epoch(seq, epoch)`` says whether another batch of the node already
    has that number in that epoch; it is only asked for a number at or below the
    last one (out of order or reset), the rare case, so the common one needs no query.
    """
    if seq > st.last:
        st.gaps += seq - st.last - 1
        st.last = seq
        return None
    if st.first - seq > REORDER_WINDOW or seq == st.last or used_in_epoch(seq, st.epoch):
        previous = st.last
        st.epoch, st.first, st.last = st.epoch + 1, seq, seq
        return previous
    if seq < st.first:  # a late batch from before the first one this epoch saw
        st.gaps += st.first - seq - 1
        st.first = seq
        return None
    st.gaps -= 1  # a late batch filling a gap of this epoch
    return None


def gaps_of(epochs: list[tuple[int, int, int, int]]) -> int:
    """Numbers never received over ``(epoch, first, last, distinct)`` rows, each epoch on its own."""
    return sum(int(last) - int(first) + 1 - int(n) for _, first, last, n in epochs)
