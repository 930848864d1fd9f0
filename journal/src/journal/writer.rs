//! The group-commit writer.
//!
//! Appenders copy their entry into the *filling* batch — one aligned buffer
//! of at most `batch_bytes_max` bytes — and wait on that batch's completion.
//! A single writer task per journal takes the filling batch whenever it has
//! entries, stamps each entry header with the segment generation and offset
//! the batch lands at, writes it with one O_DIRECT write, calls fdatasync
//! once (or, with write-through, makes the write O_DSYNC), then publishes
//! the entries in the ring index and wakes every appender of the batch. While batches are being written the next one
//! fills, so the batch size grows with load. When the filling batch is full,
//! appenders wait for the writer to take it, and the writer waits while
//! `writes_in_flight` writes (default 2) are in flight: that bound is the
//! backpressure.
//!
//! Up to `writes_in_flight` writes (each made durable) are in flight
//! at once, at increasing offsets, each in a *write slot* (a task made at
//! open, one per write in flight), and batches are acknowledged in order
//! of their sequence numbers: a batch resolves only after every earlier
//! batch is durable. Nothing is allocated per batch in the steady state:
//! slots, completions and entry lists are made once and reused (a new
//! completion only while every kept one is still held by a slow
//! appender), and the batch buffer comes from the reactor's registered I/O
//! memory (`journal/tests/allocations.rs`). So after a
//! crash up to `writes_in_flight` writes at the tail may be torn, and
//! recovery looks that many writes past damage for a later write that
//! vouches for it (see the `recovery` module); with `writes_in_flight(1)`
//! writes are strictly serial and at most one can be torn.
//!
//! A small write with nothing else in flight is made *inline*
//! ([`JournalBuilder::inline_write_bytes_max`]): the writer task lets the
//! tasks already runnable go, then writes (and syncs) with blocking calls
//! on the reactor thread and finishes the batch itself. Through io_uring
//! the fdatasync goes to a kernel worker thread and the completion comes
//! back a reactor wake-up later; inline, one appender's ack took 0.83-0.93x
//! the raw linked write + fdatasync instead of 1.2-1.8x
//! (`bench/PERFORMANCE.md`, "inline writes"). A run of inline writes ends,
//! with a write through io_uring, once it has gone [`INLINE_STREAK_MAX`]
//! without a reactor turn.

use super::*;
use std::time::{Duration, Instant};

/// When the moving average of inline write times (see
/// [`JournalBuilder::inline_write_bytes_max`]; write and sync, each write
/// weighing [`INLINE_WRITE_AVERAGE_WEIGHT`]) exceeds this, inline writes
/// pause: the disk is in a slow spell, and the reactor would stall that
/// long per write. About ten times a fast write + flush on this kind of
/// disk. An average, not each write, so that a lone slow write among fast
/// ones (a few per second on the development machine's disk; up to about
/// 8 ms) does not pause them; a spell of 4 ms writes pauses them after two
/// or three (three from an average of 0, a fresh journal's).
pub const INLINE_WRITE_SLOW: Duration = Duration::from_millis(1);

/// Weight of the newest inline write in the moving average.
pub const INLINE_WRITE_AVERAGE_WEIGHT: f64 = 1.0 / 8.0;

/// Longest run of inline writes without a turn of the reactor (queued
/// io_uring requests handed to the kernel, completions reaped): past it
/// the next write goes through io_uring, and while it is in flight the
/// reactor turns (the run starts again after that turn). Under steady
/// small appends some appender is nearly
/// always runnable, and the other tasks' file I/O waits for the turns
/// (`glommio_quirks`, quirk 1): without this, a shard's checkpoints fell
/// behind 64 submitters (`bench/PERFORMANCE.md`, "inline writes").
pub const INLINE_STREAK_MAX: Duration = Duration::from_micros(500);

/// How long inline writes stay paused: then they try again, the average
/// starting at [`INLINE_WRITE_SLOW`], so that one more slow write pauses
/// them again (one slow inline write per pause in a long slow spell).
pub const INLINE_WRITES_PAUSED_FOR: Duration = Duration::from_secs(1);

/// A run of inline writes since the reactor last turned (see
/// [`INLINE_STREAK_MAX`]): when it started. The journal's
/// [`TurnWatch`](crate::glommio_quirks::TurnWatch), marked then, tells
/// when the reactor has turned since.
pub(super) struct InlineStreak {
    started: Instant,
}

pub(super) struct Batch<B> {
    buf: Option<B>,
    len: usize,
    entries: Vec<PendingEntry>,
    done: Rc<BatchDone>,
}

impl<B> Batch<B> {
    pub(super) fn new() -> Batch<B> {
        Batch {
            buf: None,
            len: 0,
            entries: Vec::new(),
            done: Rc::new(BatchDone::default()),
        }
    }

    /// Whether no entry waits in it.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fails every append waiting on a batch that will never be written.
    pub(super) fn fail(self, error: Error) {
        self.done.complete(Err(error));
    }

    /// Whether an entry of `footprint` bytes fits, with room left for the
    /// write's index (one record more) and the padding header that may end
    /// the write.
    pub(super) fn fits(&self, footprint: usize, batch_bytes_max: usize) -> bool {
        let index = index_footprint(self.entries.len() + 1) as usize;
        self.len + footprint + index + ENTRY_HEADER_BYTES <= batch_bytes_max
    }

    /// Bytes written for this batch: its entries, its index, and padding
    /// up to the end of the write.
    fn write_bytes(&self) -> u64 {
        write_end((self.len as u64) + index_footprint(self.entries.len()))
    }
}

/// Largest capacity, in elements, of a vector [`BatchVecs`] keeps (an
/// entry vector of it is about 256 KiB): a batch of thousands of tiny
/// entries grows its own, and lets it go.
const RECYCLED_CAPACITY_MAX: usize = 4096;

/// Completions [`BatchVecs`] keeps for each batch alive at once: a finished
/// batch's completion is reused once its last appender has let it go,
/// which is usually before the batch after next is made, but an appender
/// slow to run again can hold one longer.
const RECYCLED_DONES_PER_BATCH: usize = 2;

/// What finished batches leave for the next ones: their entry lists, and
/// their completions (each with its waiters' vector) once no appender holds
/// them. A batch's vectors grow to a batch's size once, not again in every
/// batch, and neither an append nor a batch allocates a completion of its
/// own (pinned by `journal/tests/allocations.rs`).
pub(super) struct BatchVecs {
    entries: Vec<Vec<PendingEntry>>,
    dones: Vec<Rc<BatchDone>>,
    /// Entry vectors kept: one for each batch alive at once (the filling
    /// one and the writes in flight).
    kept_max: usize,
}

impl BatchVecs {
    /// Completions kept at most.
    fn dones_max(&self) -> usize {
        self.kept_max * RECYCLED_DONES_PER_BATCH
    }
}

impl BatchVecs {
    /// For a journal with `writes_in_flight` writes in flight at most.
    pub(super) fn new(writes_in_flight: u32) -> BatchVecs {
        let kept_max = writes_in_flight as usize + 1;
        BatchVecs {
            entries: Vec::with_capacity(kept_max),
            dones: Vec::with_capacity(kept_max * RECYCLED_DONES_PER_BATCH),
            kept_max,
        }
    }

    /// An empty batch, on kept vectors and a kept completion where there
    /// are some.
    pub(super) fn batch<B>(&mut self) -> Batch<B> {
        let free = self
            .dones
            .iter_mut()
            .position(|done| Rc::get_mut(done).is_some());
        let done = match free {
            Some(at) => {
                let mut done = self.dones.swap_remove(at);
                Rc::get_mut(&mut done)
                    .expect("no other holder: checked above")
                    .reset();
                done
            }
            None => Rc::new(BatchDone::default()),
        };
        Batch {
            buf: None,
            len: 0,
            entries: self.entries.pop().unwrap_or_default(),
            done,
        }
    }

    /// Keeps a finished batch's entry vector (emptied) and its completion
    /// for later batches.
    fn keep(&mut self, mut entries: Vec<PendingEntry>, done: Rc<BatchDone>) {
        entries.clear();
        if self.entries.len() < self.kept_max && entries.capacity() <= RECYCLED_CAPACITY_MAX {
            self.entries.push(entries);
        }
        if self.dones.len() < self.dones_max() && done.waiters_capacity() <= RECYCLED_CAPACITY_MAX {
            self.dones.push(done);
        }
    }
}

/// A batch's outcome, and the appenders waiting for it. The waiters are
/// plain wakers in a vector (not an `Event`): a batch completes once, on
/// the reactor that waits for it, and waking its 256 appenders should cost
/// 256 task wakes and nothing more (no listener list behind a lock).
#[derive(Default)]
pub(super) struct BatchDone {
    result: RefCell<Option<Result<()>>>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl BatchDone {
    /// Records the outcome and wakes every waiter, keeping the waiters'
    /// vector (emptied) for the completion's next use.
    fn complete(&self, result: Result<()>) {
        *self.result.borrow_mut() = Some(result);
        // Taken out while they are woken (a waker that polled at once
        // would find the vector free), then put back, emptied, to keep
        // its capacity.
        let mut waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waiter in waiters.drain(..) {
            waiter.wake();
        }
        *self.waiters.borrow_mut() = waiters;
    }

    /// Ready for another batch: no outcome, no waiter.
    fn reset(&mut self) {
        *self.result.get_mut() = None;
        self.waiters.get_mut().clear();
    }

    fn waiters_capacity(&self) -> usize {
        self.waiters.borrow().capacity()
    }

    /// Resolves with the batch's outcome. A waiter polled again before the
    /// outcome (or dropped) leaves a spare waker behind: woken once more,
    /// harmlessly, at completion.
    pub(super) fn wait(&self) -> impl std::future::Future<Output = Result<()>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(result) = self.result.borrow().as_ref() {
                return std::task::Poll::Ready(result.clone());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
    }
}

pub(super) struct PendingEntry {
    op: u64,
    epoch: u64,
    kind: EntryKind,
    batch_offset: usize,
    payload_len: u32,
    payload_checksum: u32,
    reservation: Option<Reservation>,
    /// A hard-state entry's payload: the journal's hard state once durable.
    hard_state: Option<Vec<u8>>,
}

impl<F: StorageFile> State<F> {
    /// Copies one entry into the filling batch.
    pub(super) fn enqueue(
        &mut self,
        request: Request<'_>,
        config: &JournalConfig,
    ) -> Result<(u64, Rc<BatchDone>)> {
        let (op, kind, payload, reservation) = match request {
            Request::Append(payload) => {
                let op = self.next_op;
                if op == u64::MAX {
                    return Err(Error::InvalidOp { op });
                }
                let reservation = self.index.reserve(op, self.epoch)?;
                self.next_op += 1;
                (op, EntryKind::Data, payload, Some(reservation))
            }
            Request::Write(op, payload) => {
                if op == 0 || op == u64::MAX {
                    return Err(Error::InvalidOp { op });
                }
                // The durable watermark too: slots below it are freed in
                // steps after its record (see `apply_watermark`).
                let floor = self.compacted_floor.max(self.durable_watermark);
                if op <= floor {
                    return Err(Error::BelowWatermark {
                        op,
                        watermark: floor,
                    });
                }
                let reservation = self.index.reserve(op, self.epoch)?;
                self.next_op = self.next_op.max(op + 1);
                (op, EntryKind::Data, payload, Some(reservation))
            }
            Request::Watermark(watermark) => (watermark, EntryKind::Watermark, &[][..], None),
            Request::Truncate(op) => (op, EntryKind::Truncate, &[][..], None),
            Request::HardState(bytes) => {
                // Sequenced, so that of a record and the superblock's copy
                // the newer wins (a salvage can leave an older record).
                let Some(sequence) = (self.hard_state_issued.max(self.hard_state.0))
                    .checked_add(1)
                    .filter(|s| *s != u64::MAX)
                else {
                    return Err(Error::InvalidOp { op: u64::MAX });
                };
                self.hard_state_issued = sequence;
                (sequence, EntryKind::HardState, bytes, None)
            }
        };
        if self.filling.buf.is_none() {
            self.filling.buf = Some(
                self.active()
                    .file
                    .alloc_buf(config.batch_bytes_max as usize),
            );
        }
        let footprint = entry_footprint(payload.len()) as usize;
        let batch_offset = self.filling.len;
        let buf = self
            .filling
            .buf
            .as_mut()
            .expect("allocated above")
            .as_bytes_mut();
        let payload_start = batch_offset + ENTRY_HEADER_BYTES;
        buf[payload_start..payload_start + payload.len()].copy_from_slice(payload);
        buf[payload_start + payload.len()..batch_offset + footprint].fill(0);
        self.filling.entries.push(PendingEntry {
            op,
            epoch: self.epoch,
            kind,
            batch_offset,
            payload_len: payload.len() as u32,
            payload_checksum: crc32fast::hash(payload),
            reservation,
            hard_state: match request {
                Request::HardState(bytes) => Some(bytes.to_vec()),
                _ => None,
            },
        });
        self.filling.len += footprint;
        if kind == EntryKind::Data {
            self.stats.appends += 1;
        }
        Ok((op, self.filling.done.clone()))
    }
}

impl<S: Storage> Shared<S> {
    /// Issues one batch: waits for a free place in the write pipeline, rolls
    /// over to a new segment if the batch does not fit (after the writes in
    /// flight finished), reserves the batch's position and hands its write
    /// to a free write slot (or writes it inline).
    async fn issue_batch(self: &Rc<Self>, batch: Batch<<S::File as StorageFile>::Buf>) {
        let writes_in_flight_max = self.config.writes_in_flight as usize;
        while self.state.borrow().writes_in_flight >= writes_in_flight_max {
            notified(&self.pipeline).await;
        }
        let total = batch.write_bytes();
        let place = match self.place_batch(&batch, total).await {
            Ok(place) => place,
            Err(error) => return self.fail_unissued(batch, error),
        };
        let (sequence, inline) = {
            let mut state = self.state.borrow_mut();
            let inline = self.inline_allowed(&mut state, &place, total);
            if state.writes_in_flight == 0 {
                // A new run of writes: no earlier write to answer for.
                state.previous_write_ok = true;
            }
            state.writes_in_flight += 1;
            let sequence = state.writes_issued;
            state.writes_issued += 1;
            (sequence, inline)
        };
        let job = WriteJob {
            batch,
            place,
            total,
            sequence,
        };
        if inline {
            // The tasks already runnable (an appender's next entry, a
            // socket's sends) go before the reactor blocks in the write.
            futures_lite::future::yield_now().await;
            self.run_write(job, true).await;
        } else {
            // Fewer writes are in flight than there are slots, and a slot
            // is freed in the same step as its write's count (nothing runs
            // in between): one is free.
            let slot = self
                .write_slots
                .iter()
                .find(|slot| !slot.busy.get())
                .expect("a write slot is free while fewer writes than slots are in flight");
            slot.busy.set(true);
            // With the journal itself: dropped meanwhile, it still
            // finishes every write it issued.
            *slot.job.borrow_mut() = Some((self.clone(), job));
            slot.signal.signal();
        }
    }

    /// Writes a batch and finishes it (see `finish_batch`).
    async fn run_write(&self, job: WriteJob<S::File>, inline: bool) {
        let WriteJob {
            mut batch,
            place,
            total,
            sequence,
        } = job;
        let buf = batch.buf.take().expect("a batch with entries has a buffer");
        let result = self
            .write_and_sync(buf, &batch, &place, total, inline)
            .await;
        self.finish_batch(batch, place, total, result, sequence)
            .await;
    }

    /// Whether the batch about to be issued is written inline
    /// ([`JournalBuilder::inline_write_bytes_max`]): small enough, nothing
    /// else in flight, a backend with blocking calls, and no pause (ended
    /// here once due).
    fn inline_allowed(
        &self,
        state: &mut State<S::File>,
        place: &Placement<S::File>,
        total: u64,
    ) -> bool {
        if total > self.config.inline_write_bytes_max
            || state.writes_in_flight > 0
            || !place.file.has_blocking_calls()
        {
            return false;
        }
        let now = Instant::now();
        match state.inline_paused_until {
            Some(until) if now < until => return false,
            Some(_) => state.inline_paused_until = None,
            None => {}
        }
        match &state.inline_streak {
            Some(streak) if !self.turns.turned() => now - streak.started <= INLINE_STREAK_MAX,
            _ => {
                // A new run, until the reactor's next turn.
                state.inline_streak = Some(InlineStreak { started: now });
                self.turns.mark();
                true
            }
        }
    }

    /// Where the batch goes: rolls over first if it does not fit.
    async fn place_batch(
        self: &Rc<Self>,
        batch: &Batch<<S::File as StorageFile>::Buf>,
        total: u64,
    ) -> Result<Placement<S::File>> {
        let usable = |state: &State<S::File>| {
            state.usable().or_else(|e| {
                if matches!(e, Error::Closed) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        let needs_rollover = {
            let state = self.state.borrow();
            usable(&state)?;
            let active = state.active();
            // The last block of each segment is kept for a watermark record,
            // so the watermark can advance (and free space) on a full disk.
            let has_watermark = batch.entries.iter().any(|e| e.kind == EntryKind::Watermark);
            let reserve = if has_watermark {
                0
            } else {
                WATERMARK_RESERVE_BYTES
            };
            state.needs_fresh_segment || active.write_pos + total + reserve > active.segment_bytes
        };
        if needs_rollover {
            // The new segment vouches for all of this one: let its writes finish.
            while self.state.borrow().writes_in_flight > 0 {
                notified(&self.pipeline).await;
            }
            usable(&self.state.borrow())?;
            self.rollover().await?;
        }
        let mut state = self.state.borrow_mut();
        let active = state
            .segments
            .back_mut()
            .expect("an open journal always has an active segment");
        let place = Placement {
            file: active.file.clone(),
            generation: active.generation,
            pos: active.write_pos,
            // NoSync writes are not durable when they finish: they vouch
            // for nothing.
            durable_before: if self.config.durability == Durability::NoSync {
                0
            } else {
                active.durable_end
            },
            journal_id: active.journal_id,
        };
        active.write_pos += total;
        Ok(place)
    }

    /// Stamps the headers and makes the batch durable: through io_uring,
    /// or `inline` with blocking calls.
    async fn write_and_sync(
        &self,
        mut buf: <S::File as StorageFile>::Buf,
        batch: &Batch<<S::File as StorageFile>::Buf>,
        place: &Placement<S::File>,
        total: u64,
        inline: bool,
    ) -> Result<()> {
        stamp_headers(buf.as_bytes_mut(), &batch.entries, place, batch.len, total);
        buf.trim_to(total as usize);
        let started = Instant::now();
        let written = if inline {
            place.file.write_blocking(buf, place.pos).await
        } else {
            place.file.write_at(buf, place.pos).await
        };
        if let Err(e) = written {
            let path = self.segment_path(place.generation);
            return Err(self.poison(Error::io("write", &path, Some(place.pos), e)));
        }
        if self.config.durability == Durability::Sync {
            let synced = if inline {
                place.file.sync_blocking().await
            } else {
                place.file.sync().await
            };
            if let Err(e) = synced {
                let path = self.segment_path(place.generation);
                // The range that may not be durable starts at this write.
                return Err(self.poison(Error::io("fdatasync", &path, Some(place.pos), e)));
            }
        }
        if inline {
            self.inline_write_done(started.elapsed(), total);
        }
        Ok(())
    }

    /// Counts an inline write, and pauses inline writes once their moving
    /// average is slow: in a slow spell of the disk the reactor would
    /// otherwise stall for every write.
    fn inline_write_done(&self, took: Duration, bytes: u64) {
        let mut state = self.state.borrow_mut();
        state.stats.inline_writes += 1;
        let average = state.inline_write_average.as_secs_f64();
        let average = average + (took.as_secs_f64() - average) * INLINE_WRITE_AVERAGE_WEIGHT;
        state.inline_write_average = Duration::from_secs_f64(average.max(0.0));
        if state.inline_write_average > INLINE_WRITE_SLOW {
            state.inline_write_average = INLINE_WRITE_SLOW;
            state.inline_paused_until = Some(Instant::now() + INLINE_WRITES_PAUSED_FOR);
            state.stats.inline_write_pauses += 1;
            tracing::debug!(
                dir = %self.config.dir.display(),
                took_us = took.as_micros() as u64,
                bytes,
                paused_ms = INLINE_WRITES_PAUSED_FOR.as_millis() as u64,
                "inline writes are slow on average; writing through io_uring for a while"
            );
        }
    }

    /// Acknowledges a batch in issue order: only once every earlier write
    /// finished and succeeded too, so no acknowledged entry ever follows a
    /// hole. `sequence` is the batch's place in issue order.
    async fn finish_batch(
        &self,
        batch: Batch<<S::File as StorageFile>::Buf>,
        place: Placement<S::File>,
        total: u64,
        mut result: Result<()>,
        sequence: u64,
    ) {
        while self.state.borrow().writes_finished != sequence {
            notified(&self.pipeline).await;
        }
        let earlier_ok = self.state.borrow().previous_write_ok;
        if !earlier_ok && result.is_ok() {
            let cause = self.state.borrow().poisoned.clone();
            result = Err(Error::Poisoned {
                cause: Box::new(cause.unwrap_or(Error::Closed)),
            });
        }
        {
            let mut state = self.state.borrow_mut();
            if result.is_ok() {
                publish(&mut state, &batch, &place, total, self.config.durability);
            } else {
                for entry in &batch.entries {
                    if let Some(reservation) = entry.reservation {
                        state.index.release(entry.op, reservation);
                    }
                }
            }
            state.writes_in_flight -= 1;
            state.writes_finished += 1;
            state.previous_write_ok = result.is_ok();
        }
        // The writer waiting for room in the pipeline, and the next write
        // waiting for this one to finish.
        wake_all(&self.pipeline);
        batch.done.complete(result);
        self.state
            .borrow_mut()
            .recycled
            .keep(batch.entries, batch.done);
    }

    /// The path of segment `generation` (for an error message): a segment
    /// with writes in flight is never retired.
    fn segment_path(&self, generation: u64) -> PathBuf {
        let state = self.state.borrow();
        match state.segments.iter().find(|s| s.generation == generation) {
            Some(segment) => segment.path.clone(),
            None => self.config.dir.join(crate::segment_file_name(generation)),
        }
    }

    /// Fails a batch that was never written (no room for a new segment, or
    /// the journal is poisoned), handing its reservations back — and with
    /// it everything queued after it: the filling batch, and requests still
    /// waiting for room (they fail as they find the recorded failure). The
    /// journal is written in the order it was asked to, so nothing queued
    /// behind a lost write (a hard state behind an append, an append behind
    /// another) may reach the disk without it. Later requests go on as
    /// usual: a full disk that frees up needs no reopen.
    fn fail_unissued(&self, batch: Batch<<S::File as StorageFile>::Buf>, error: Error) {
        let behind = {
            let mut state = self.state.borrow_mut();
            state.unissued_failures = (state.unissued_failures.0 + 1, Some(error.clone()));
            let next = state.recycled.batch();
            std::mem::replace(&mut state.filling, next)
        };
        // The later batch first: op numbers are handed back from the top.
        if !behind.entries.is_empty() {
            self.fail_unissued_batch(behind, error.clone());
        }
        self.fail_unissued_batch(batch, error);
        wake_all(&self.space);
        // A truncation waiting for the failed writes' ops (pending above
        // it) finds none now.
        wake_all(&self.pipeline);
    }

    /// Fails one batch that was never written (see `fail_unissued`).
    fn fail_unissued_batch(&self, batch: Batch<<S::File as StorageFile>::Buf>, error: Error) {
        // A truncation changed the index when it was queued: if its record
        // never reaches the disk, memory and disk disagree until a reopen.
        let error = if batch.entries.iter().any(|e| e.kind == EntryKind::Truncate) {
            self.poison(error)
        } else {
            error
        };
        {
            let mut state = self.state.borrow_mut();
            for entry in &batch.entries {
                if let Some(reservation) = entry.reservation {
                    state.index.release(entry.op, reservation);
                }
            }
            // If no later op was assigned meanwhile, the next op goes back
            // to one above the highest op still held (or the held floor):
            // a full disk leaves no gap in a leader's sequence (its failed
            // appends' numbers are handed out again), and a replica's next
            // op does not count writes that never happened (a consensus
            // layer checks appends against it: a log with a hole could win
            // an election).
            let failed_top = batch
                .entries
                .iter()
                .filter(|e| e.kind == EntryKind::Data)
                .map(|e| e.op)
                .max();
            if let Some(top) = failed_top {
                if state.poisoned.is_none() && state.next_op == top + 1 {
                    // `top` itself may still be held: a failed rewrite
                    // leaves the durable entry it would have replaced.
                    let floor = state.held_floor();
                    state.next_op = state.index.highest_held_below(top + 1, floor) + 1;
                }
            }
        }
        // Not recycled: a failure path.
        batch.done.complete(Err(error));
    }
}

/// A batch on its way to the disk: what a write slot is handed.
pub(super) struct WriteJob<F: StorageFile> {
    batch: Batch<F::Buf>,
    place: Placement<F>,
    total: u64,
    /// The write's place in issue order.
    sequence: u64,
}

/// A job handed to a write slot, with the journal it belongs to.
type HandedJob<S> = (Rc<Shared<S>>, WriteJob<<S as Storage>::File>);

/// One place in the write pipeline: a task made at open (see
/// [`run_write_slot`]) that writes the batches it is handed, so that a
/// write through io_uring needs no task of its own. The journal has one
/// per write it may have in flight.
pub(super) struct WriteSlot<S: Storage> {
    /// The job handed to the slot, with the journal it belongs to (held
    /// until the write is finished).
    job: RefCell<Option<HandedJob<S>>>,
    /// Handed a job and not done with it.
    busy: Cell<bool>,
    signal: WriterSignal,
    /// The writer exited or the journal is gone: the task exits.
    closed: Cell<bool>,
}

impl<S: Storage> WriteSlot<S> {
    pub(super) fn new() -> WriteSlot<S> {
        WriteSlot {
            job: RefCell::new(None),
            busy: Cell::new(false),
            signal: WriterSignal::default(),
            closed: Cell::new(false),
        }
    }

    /// Lets the slot's task exit once it has no job.
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.signal.signal();
    }
}

/// A write slot's task: writes each batch it is handed, and exits once the
/// slot is closed with no job left.
pub(super) async fn run_write_slot<S: Storage>(slot: Rc<WriteSlot<S>>) {
    loop {
        slot.signal.wait().await;
        let job = slot.job.borrow_mut().take();
        match job {
            Some((shared, job)) => {
                shared.run_write(job, false).await;
                slot.busy.set(false);
            }
            None if slot.closed.get() => return,
            None => {}
        }
    }
}

/// Where a batch is written.
struct Placement<F> {
    file: Rc<F>,
    generation: u64,
    pos: u64,
    /// Stamped into the write's first entry: see `EntryHeader::durable_before`.
    durable_before: u64,
    /// Seeds the entry headers' checksums.
    journal_id: [u8; 16],
}

/// Wakes the writer task, its one waiter, when the filling batch gets
/// entries (or the journal closes or fails). Not an `Event`: it is
/// signalled by every append, and an `Event` takes a lock to learn whether
/// anyone waits.
#[derive(Default)]
pub(super) struct WriterSignal {
    waker: RefCell<Option<std::task::Waker>>,
    signalled: Cell<bool>,
}

impl WriterSignal {
    /// Marks work to do and wakes the writer if it waits.
    pub(super) fn signal(&self) {
        self.signalled.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once signalled since the last wait resolved (at once if
    /// that happened already: the writer then looks for work again).
    fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.signalled.replace(false) {
                return std::task::Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
    }
}

/// Makes a durable batch visible: ring index, segment bookkeeping, stats.
fn publish<F: StorageFile>(
    state: &mut State<F>,
    batch: &Batch<F::Buf>,
    place: &Placement<F>,
    total: u64,
    durability: Durability,
) {
    let mut max_op = 0;
    let mut watermark = 0;
    for entry in &batch.entries {
        match entry.kind {
            EntryKind::Data => {
                let location = Location {
                    generation: place.generation,
                    offset: (place.pos + entry.batch_offset as u64) as u32,
                    payload_len: entry.payload_len,
                };
                let reservation = entry.reservation.expect("data entries hold a reservation");
                state
                    .index
                    .commit(entry.op, entry.epoch, reservation, location);
                max_op = max_op.max(entry.op);
            }
            EntryKind::Watermark => watermark = watermark.max(entry.op),
            // The index forgot the ops when the record was queued.
            EntryKind::Truncate => state.stats.truncations += 1,
            EntryKind::HardState => {
                state.hard_state = (entry.op, entry.hard_state.clone().unwrap_or_default());
                state.stats.hard_states += 1;
            }
            EntryKind::Padding | EntryKind::WriteIndex => {
                unreachable!("padding and the index are added at stamping, never queued")
            }
        }
    }
    state.durable_watermark = state.durable_watermark.max(watermark);
    let segment = state
        .segments
        .iter_mut()
        .rev()
        .find(|s| s.generation == place.generation)
        .expect("a segment with writes in flight is never retired or replaced");
    segment.max_op = segment.max_op.max(max_op);
    segment.watermark_seen = segment.watermark_seen.max(watermark);
    // Batches are published in issue order, each only once every earlier one
    // succeeded: everything before this write's end is durable.
    segment.durable_end = segment.durable_end.max(place.pos + total);
    let stats = &mut state.stats;
    stats.writes += 1;
    stats.fsyncs += u64::from(durability != Durability::NoSync);
    stats.bytes_written += total;
    stats.entries_written += batch.entries.len() as u64;
    stats.batch_entries_max = stats.batch_entries_max.max(batch.entries.len() as u64);
    let bucket = (batch.entries.len().max(1).ilog2() as usize).min(BATCH_SIZE_BUCKETS - 1);
    stats.batch_entries_log2[bucket] += 1;
}

/// Writes each entry's header into the batch buffer now that its final
/// position is known, then the write's index after the entries (at `len`),
/// and pads the tail up to the end of the write (`total`).
fn stamp_headers<F>(
    buf: &mut [u8],
    entries: &[PendingEntry],
    place: &Placement<F>,
    len: usize,
    total: u64,
) {
    let (generation, pos) = (place.generation, place.pos);
    let index_at = (pos + len as u64) as u32;
    let records_start = len + ENTRY_HEADER_BYTES;
    for (i, entry) in entries.iter().enumerate() {
        let first = i == 0;
        let header = EntryHeader {
            checksum: 0.into(),
            magic: ENTRY_MAGIC.into(),
            op: entry.op.into(),
            epoch: entry.epoch.into(),
            generation: generation.into(),
            offset: ((pos + entry.batch_offset as u64) as u32).into(),
            payload_len: entry.payload_len.into(),
            payload_checksum: entry.payload_checksum.into(),
            durable_before: if first {
                place.durable_before as u32
            } else {
                0
            }
            .into(),
            kind: entry.kind as u8,
            flags: if first { FLAG_FIRST_IN_WRITE } else { 0 },
            index_at: if first { index_at } else { 0 }.into(),
            reserved: [0; 2],
        }
        .seal(&place.journal_id);
        buf[entry.batch_offset..entry.batch_offset + ENTRY_HEADER_BYTES]
            .copy_from_slice(header.as_bytes());
        let record = records_start + i * INDEX_RECORD_BYTES;
        buf[record..record + INDEX_RECORD_BYTES]
            .copy_from_slice(IndexRecord::of(&header).as_bytes());
    }
    let records_end = records_start + entries.len() * INDEX_RECORD_BYTES;
    let index = EntryHeader {
        checksum: 0.into(),
        magic: ENTRY_MAGIC.into(),
        op: (entries.len() as u64).into(),
        epoch: 0.into(),
        generation: generation.into(),
        offset: index_at.into(),
        payload_len: ((records_end - records_start) as u32).into(),
        payload_checksum: crc32fast::hash(&buf[records_start..records_end]).into(),
        durable_before: 0.into(),
        kind: EntryKind::WriteIndex as u8,
        flags: 0,
        index_at: 0.into(),
        reserved: [0; 2],
    }
    .seal(&place.journal_id);
    buf[len..records_start].copy_from_slice(index.as_bytes());
    let entries_end = len + index.footprint() as usize;
    let end = total as usize;
    buf[records_end..end].fill(0);
    if end > entries_end {
        let gap = end - entries_end;
        let padding = EntryHeader {
            checksum: 0.into(),
            magic: ENTRY_MAGIC.into(),
            op: 0.into(),
            epoch: 0.into(),
            generation: generation.into(),
            offset: ((pos + entries_end as u64) as u32).into(),
            payload_len: ((gap - ENTRY_HEADER_BYTES) as u32).into(),
            payload_checksum: 0.into(),
            durable_before: 0.into(),
            kind: EntryKind::Padding as u8,
            flags: 0,
            index_at: 0.into(),
            reserved: [0; 2],
        }
        .seal(&place.journal_id);
        buf[entries_end..entries_end + ENTRY_HEADER_BYTES].copy_from_slice(padding.as_bytes());
    }
}

/// The writer task: takes the filling batch whenever it has entries.
pub(super) async fn run_writer<S: Storage>(shared: Weak<Shared<S>>, work: Rc<WriterSignal>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        enum Next<B> {
            Write(Batch<B>),
            AwaitInFlight,
            Exit,
            Idle,
        }
        let next = {
            let mut state = shared.state.borrow_mut();
            if !state.filling.entries.is_empty() {
                let next = state.recycled.batch();
                Next::Write(std::mem::replace(&mut state.filling, next))
            } else if state.closing && state.writes_in_flight > 0 {
                Next::AwaitInFlight
            } else if state.closing {
                state.writer_running = false;
                Next::Exit
            } else {
                Next::Idle
            }
        };
        match next {
            Next::Write(batch) => {
                wake_all(&shared.space);
                shared.issue_batch(batch).await;
            }
            Next::AwaitInFlight => notified(&shared.pipeline).await,
            Next::Exit => {
                wake_all(&shared.writer_exited);
                for slot in shared.write_slots.iter() {
                    slot.close();
                }
                return;
            }
            Next::Idle => {
                drop(shared);
                work.wait().await;
            }
        }
    }
}
