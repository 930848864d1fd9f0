//! Opening a journal: what recovery found becomes a writable journal. The
//! superblock is created or brought up to date, an empty last segment is
//! reused, and a fresh segment is created (never appending into one that
//! existed before).

use super::*;

impl<S: Storage> Journal<S> {
    pub(crate) async fn open_with(mut config: JournalConfig, storage: S) -> Result<Journal<S>> {
        crate::storage::prepare_dir(&storage, &config.dir)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::Unsupported {
                    Error::DirectIoUnsupported {
                        path: config.dir.clone(),
                    }
                } else {
                    Error::io("prepare directory", &config.dir, None, e)
                }
            })?;
        // What a crash in the middle of a durability probe (or of writing
        // its record) left, recovery removes with the other leftovers
        // (`verify::crash_leftovers`), so a reopen and `inspect` agree.
        let recovered = match recover(&storage, &config).await {
            Ok(recovered) => recovered,
            Err(error) => {
                log_refusal(&config.dir, &error);
                return Err(error);
            }
        };
        // Before any segment is created: its file follows it.
        let durability_choice = crate::durability::resolve(&storage, &mut config).await?;
        let watermark = recovered.report.watermark;
        let sb_path = config.dir.join(SUPERBLOCK_FILE_NAME);
        // The superblock: the recovered one (adopting the configured owner
        // if it records none), or a new one written before any segment.
        let (mut sb, mut sequence) = match &recovered.superblock {
            Some(found) => (found.superblock.clone(), found.sequence),
            None => {
                let sb = JournalSuperblock::new(*uuid::Uuid::new_v4().as_bytes(), config.owner);
                create_superblock(&storage, &config.dir, &sb).await?;
                (sb, 1)
            }
        };
        sb.owner = match (sb.owner, config.owner) {
            // Recovery refused a disagreeing owner unless the journal holds
            // nothing, which then takes the configured one.
            (Some(recorded), Some(configured)) if recorded.agrees_with(&configured) => {
                Some(recorded.completed_by(&configured))
            }
            (recorded, configured) => configured.or(recorded),
        };
        // A replica's mark of a cut tail, durable before anything below
        // records the cut (see `JournalBuilder::hard_state_after_cut`).
        let mut recovered_hard_state = recovered.hard_state;
        if let (Some(mark), true) = (
            config.hard_state_after_cut,
            recovered.report.tail_is_uncertain(),
        ) {
            let (newest_sequence, newest) = newest_hard_state(recovered_hard_state.take(), &sb);
            let marked = mark(&newest, recovered.max_op);
            if marked.len() > HARD_STATE_BYTES_MAX {
                return Err(Error::EntryTooLarge {
                    len: marked.len(),
                    max: HARD_STATE_BYTES_MAX,
                });
            }
            let mut next = sb.clone();
            next.hard_state = marked;
            next.hard_state_sequence = newest_sequence + 1;
            sequence += 1;
            write_superblock(&storage, &sb_path, sequence, &next).await?;
            sb = next;
        }
        let mut recovered_segments = recovered.segments;
        // A last segment that holds nothing (typically the one the previous
        // open created) is removed and its generation reused, so reopening
        // does not pile up empty segments.
        let mut reuse_generation = None;
        let others_watermark = |segments: &[Segment<S::File>]| {
            let others = &segments[..segments.len().saturating_sub(1)];
            others.iter().map(|s| s.watermark_seen).max().unwrap_or(0)
        };
        // Only if the others or the superblock record its watermark too:
        // between the removal and the new segment's creation a crash must
        // not lose it. And only if the superblock can then record the one
        // before it as the last (none: generation 1), so the generation
        // recreated is `last + 1`, the one unrecorded segment recovery
        // accepts (see `verify::plan`).
        let kept_last = |segments: &[Segment<S::File>]| {
            segments
                .len()
                .checked_sub(2)
                .map_or(0, |i| segments[i].generation)
        };
        // And only if nothing at all lies where its first entry would go
        // (no cut remains of a torn write): a crash between the superblock
        // update and the removal must leave a segment that reads as empty.
        if !recovered.last_holds_bytes
            && recovered_segments.last().is_some_and(|s| {
                s.write_pos == SEGMENT_DATA_OFFSET
                    && s.watermark_seen <= others_watermark(&recovered_segments).max(sb.watermark)
                    && s.generation == kept_last(&recovered_segments) + 1
            })
        {
            let empty = recovered_segments.pop().expect("checked above");
            if let Ok(file) = Rc::try_unwrap(empty.file) {
                let _ = file.close().await;
            }
            // The superblock stops naming it first, so a crash after the
            // removal leaves no recorded segment missing.
            let mut next = sb.clone();
            next.last_generation = recovered_segments.last().map_or(0, |s| s.generation);
            if next.last_generation == 0 {
                next.first_generation = 0;
            }
            next.ends.retain(|(g, _)| *g < empty.generation);
            sequence += 1;
            write_superblock(&storage, &sb_path, sequence, &next).await?;
            sb = next;
            storage
                .remove(&empty.path)
                .await
                .map_err(|e| Error::io("remove empty segment", &empty.path, None, e))?;
            storage
                .sync_dir(&config.dir)
                .await
                .map_err(|e| Error::io("fsync directory", &config.dir, None, e))?;
            reuse_generation = Some(empty.generation);
        }
        let predecessor = recovered_segments.last().map(|s| Predecessor {
            generation: s.generation,
            end: s.write_pos,
        });
        let generation = match (reuse_generation, predecessor) {
            (Some(generation), _) => generation,
            (None, None) => 1,
            (None, Some(p)) => next_generation(&config.dir, p.generation)?,
        };
        // What recovery read of the last segment may not be durable yet (a
        // failed fsync before a restart, or NoSync writes); the new
        // segment's header will vouch for it, so make it durable first.
        if let Some(last) = recovered_segments.last() {
            last.file
                .sync()
                .await
                .map_err(|e| Error::io("fdatasync", &last.path, None, e))?;
        }
        // A segment recovery adopted at `last + 1` (a rollover or open that
        // crashed before its superblock update) is recorded before the next
        // one is created: recovery accepts one unrecorded segment past the
        // last, never two.
        if let Some(adopted) = recovered_segments
            .last()
            .filter(|s| s.generation > sb.last_generation)
        {
            let before = recovered_segments.len().checked_sub(2);
            let predecessor = before.map(|i| &recovered_segments[i]);
            // Its end becomes a recorded one: durable first, as above.
            if let Some(p) = predecessor {
                p.file
                    .sync()
                    .await
                    .map_err(|e| Error::io("fdatasync", &p.path, None, e))?;
            }
            let predecessor = predecessor.map(|p| Predecessor {
                generation: p.generation,
                end: p.write_pos,
            });
            let mut next = sb.clone();
            record_rollover(&mut next, adopted.generation, predecessor);
            sequence += 1;
            write_superblock(&storage, &sb_path, sequence, &next).await?;
            sb = next;
        }
        // Never append into a segment that existed before: see recovery.
        let mut segments: VecDeque<_> = recovered_segments.into();
        let mut needs_fresh_segment = false;
        let created = create_segment(
            &storage,
            &config,
            sb.journal_id,
            generation,
            predecessor,
            watermark,
        )
        .await;
        match created {
            Ok(active) => {
                // Name the new segment (and the previous one's end) before
                // any write goes to it.
                let mut next = sb.clone();
                record_rollover(&mut next, generation, predecessor);
                next.watermark = next.watermark.max(watermark);
                sequence += 1;
                write_superblock(&storage, &sb_path, sequence, &next).await?;
                sb = next;
                segments.push_back(active);
            }
            // A full disk: open anyway so what is there can be read; the
            // first write creates the segment (or fails with NoSpace).
            Err(CreateError {
                error: error @ Error::NoSpace { .. },
                poison: false,
            }) if !segments.is_empty() => {
                tracing::warn!(%error, "no space for a new segment; the journal opens read-mostly");
                needs_fresh_segment = true;
            }
            Err(e) => return Err(e.error),
        }
        let state = State {
            index: recovered.index,
            segments,
            next_op: recovered.max_op.max(watermark) + 1,
            epoch: recovered.max_epoch,
            durable_watermark: watermark,
            needs_fresh_segment,
            retiring: false,
            reclaim: VecDeque::new(),
            reclaiming: false,
            recyclable: VecDeque::new(),
            compacted_floor: 0,
            spare: None,
            preparing: false,
            spare_awaited: false,
            writes_in_flight: 0,
            inline_paused_until: None,
            inline_write_average: std::time::Duration::ZERO,
            inline_streak: None,
            writes_issued: 0,
            writes_finished: 0,
            previous_write_ok: true,
            filling: Batch::new(),
            recycled: BatchVecs::new(config.writes_in_flight),
            poisoned: None,
            closing: false,
            writer_running: true,
            hard_state: newest_hard_state(recovered_hard_state, &sb),
            hard_state_issued: 0,
            watermark_requested: watermark,
            unissued_failures: (0, None),
            stats: JournalStats {
                segments_created: u64::from(!needs_fresh_segment),
                durability: config.durability,
                ..JournalStats::default()
            },
        };
        let writes_in_flight = config.writes_in_flight;
        let shared = Rc::new(Shared {
            config,
            storage,
            state: RefCell::new(state),
            work: Rc::new(WriterSignal::default()),
            space: Event::new(),
            writer_exited: Event::new(),
            spare_ready: Event::new(),
            reclaim_done: Event::new(),
            pipeline: Event::new(),
            write_slots: (0..writes_in_flight)
                .map(|_| Rc::new(WriteSlot::new()))
                .collect(),
            turns: crate::glommio_quirks::TurnWatch::spawn(),
            recovery: recovered.report,
            durability_choice,
            superblock: RefCell::new((sb, sequence)),
            superblock_busy: Cell::new(false),
            superblock_sequence_tried: Cell::new(0),
            superblock_idle: Event::new(),
            scrub_damage: RefCell::new(Vec::new()),
            scrub_reported: RefCell::new(std::collections::HashSet::new()),
        });
        if !needs_fresh_segment {
            shared.prepare_spare();
        }
        glommio::spawn_local(run_writer(Rc::downgrade(&shared), shared.work.clone())).detach();
        for slot in shared.write_slots.iter() {
            glommio::spawn_local(run_write_slot(slot.clone())).detach();
        }
        if let Some(rate) = shared.config.scrub_bytes_per_second {
            glommio::spawn_local(scrub::run_scrubber(Rc::downgrade(&shared), rate)).detach();
        }
        Ok(Journal { shared })
    }
}

/// Of the last hard-state record recovery found and the superblock's copy,
/// the one with the greater sequence.
/// A recovery that refuses for damage (bytes that do not verify, or a
/// block the disk cannot read) is logged at error level as well as
/// returned: the embedder may not log the error it gets.
fn log_refusal(dir: &Path, error: &Error) {
    match error {
        Error::Corruption { .. } => {
            tracing::error!(dir = %dir.display(), %error, "the journal refuses to open: damage")
        }
        Error::Io { source, .. } => tracing::error!(
            dir = %dir.display(),
            %error,
            unreadable_block = crate::storage::UnreadableBlock::in_error(source).map(|b| b.offset),
            "the journal refuses to open: a read failed"
        ),
        _ => {}
    }
}

fn newest_hard_state(record: Option<(u64, Vec<u8>)>, sb: &JournalSuperblock) -> (u64, Vec<u8>) {
    let kept = (sb.hard_state_sequence, sb.hard_state.clone());
    match record {
        Some(record) if record.0 > kept.0 => record,
        _ => kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock_with(sequence: u64, hard_state: &[u8]) -> JournalSuperblock {
        JournalSuperblock {
            hard_state: hard_state.to_vec(),
            hard_state_sequence: sequence,
            ..JournalSuperblock::new([1; 16], None)
        }
    }

    #[test]
    fn the_hard_state_with_the_greater_sequence_holds() {
        let sb = superblock_with(7, b"superblock's");
        // A salvage kept an older record: the superblock's copy holds.
        let older = Some((5, b"older record".to_vec()));
        assert_eq!(newest_hard_state(older, &sb), (7, b"superblock's".to_vec()));
        // The usual case: the log's last record is the newest.
        let newer = Some((9, b"newer record".to_vec()));
        assert_eq!(newest_hard_state(newer, &sb), (9, b"newer record".to_vec()));
        assert_eq!(newest_hard_state(None, &sb), (7, b"superblock's".to_vec()));
        // Nothing anywhere: none.
        assert_eq!(
            newest_hard_state(None, &superblock_with(0, b"")),
            (0, Vec::new())
        );
    }
}
