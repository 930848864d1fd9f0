//! The corruption matrix: every kind of file a data directory holds × every
//! kind of damage a failing disk, a bad copy or an operator can do to it,
//! tried from the outside on real files.
//!
//! A template data directory (two shards of the test's key-value machine,
//! each with several journal segments, two snapshot generations, an
//! identity, a journal superblock; the data directory's superblock) is
//! built once: shard 0 ends in a crash (its journal's tail is undecidable),
//! shard 1 in a clean close. Every cell copies it, damages one thing, runs
//! `ringstore wal verify` and `ringstore snapshot verify` on both shards
//! (before anything is opened), then reopens the way the runtime does (the
//! data directory's superblock, then each shard with its place). Each cell
//! must end in one of:
//!
//! * the reopen refuses with an error that names the damaged file;
//! * the reopen succeeds and every acknowledged command is there with its
//!   value;
//! * the reopen succeeds, and every acknowledged command missing lies in
//!   what it reported: a cut of the journal's tail (with the ops whose
//!   entries still verified), or ops above the highest one found in a log
//!   whose end nothing recorded (after a crash: an acknowledged write the
//!   disk wiped to zeros cannot be told from one never written — see
//!   `journal/FORMAT.md`);
//!
//! and the tools refuse (non-zero exit) exactly when the reopen does, with
//! one documented exception (`journal/FORMAT.md`, "Two verdicts"): damage
//! to a payload the reopen does not read (an op the newest snapshot
//! covers, kept for the previous one) fails `wal verify`, which reads
//! every byte, while the reopen opens; then `wal verify` must say the
//! reopen opens, and the reopened shard's background scrubber must name
//! every place `wal verify` named in its first pass. Every reopen runs
//! both background scrubbers (`ShardBuilder::scrub_rate`): a snapshot
//! generation the reopen passed over stays on disk, and the snapshot
//! scrubber's first pass must name each one a full verification finds
//! damaged, at the same offset. No value is ever served that was
//! not acknowledged for its key.
mod common;
use common::{small_journal, temp_dir, value, Kv, KvCommand};
use ringstore::runtime::startup;
use ringstore::snapshot::inspect::list_snapshot_files;
use ringstore::snapshot::verify::verify_snapshot_bytes;
use ringstore::snapshot::Check as SnapshotCheck;
use ringstore::{CheckpointPolicy, Shard};
use ringstore_journal::format::{EntryHeader, EntryKind, ENTRY_HEADER_BYTES};
use ringstore_journal::{TailState, UnrecordedEnd};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use zerocopy::FromBytes;

const SHARDS: usize = 2;
const VALUE_BYTES: usize = 300;
/// Commands before the first checkpoint, between the two, and after.
const PHASES: [u64; 3] = [24, 12, 30];
const SEGMENT_BYTES: u64 = 64 << 10;
/// The background scrubbers' rate in the reopened shards: a pass over the
/// template's few hundred KiB takes milliseconds.
const SCRUB_BYTES_PER_SECOND: u64 = 256 << 20;
/// How long a reopened shard's scrubbers get to finish their first pass.
const SCRUB_PASS_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Key → op of every acknowledged command, per shard.
type Acked = [BTreeMap<u64, u64>; SHARDS];

struct Template {
    _dir: tempfile::TempDir,
    data: PathBuf,
    acked: Acked,
    /// Older copies of files, taken after the first checkpoint:
    /// (path relative to the data dir, bytes).
    older: Vec<(PathBuf, Vec<u8>)>,
}

fn shard_dir(data: &Path, shard: usize) -> PathBuf {
    startup::shard_dir(data, shard)
}

fn builder(data: &Path, shard: usize) -> ringstore::ShardBuilder<Kv> {
    Shard::<Kv>::builder(shard_dir(data, shard))
        .placement(shard as u32, SHARDS as u32)
        .journal(|j| {
            small_journal(j, 512)
                .segment_bytes(SEGMENT_BYTES)
                .batch_bytes_max(16 << 10)
                .entry_bytes_max(4 << 10)
        })
        .checkpoint_policy(CheckpointPolicy {
            automatic: false,
            ..CheckpointPolicy::default()
        })
}

fn on_reactor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("reactor panicked")
}

fn build_template() -> Template {
    let dir = temp_dir();
    let data = dir.path().join("data");
    startup::check_manifest(&data, SHARDS).unwrap();
    let mut acked: Acked = Default::default();
    let mut older = Vec::new();
    for (shard, acked) in acked.iter_mut().enumerate() {
        let d = data.clone();
        let (keys, snapshot_of_files) = on_reactor(move || async move {
            let shard_handle = builder(&d, shard).open().await.unwrap();
            let mut keys = BTreeMap::new();
            let mut older = Vec::new();
            let mut key = 0u64;
            for (phase, count) in PHASES.iter().enumerate() {
                for _ in 0..*count {
                    key += 1;
                    let command = KvCommand::Put {
                        key,
                        value: value(key, key, VALUE_BYTES),
                    };
                    let at = shard_handle.submit(command).await.unwrap().unwrap();
                    keys.insert(key, at.op);
                }
                if phase < 2 {
                    shard_handle.checkpoint().await.unwrap();
                }
                if phase == 0 {
                    older = copies(&d, &shard_dir(&d, shard));
                }
            }
            if shard == 0 {
                // A crash: nothing closed, no final superblock update.
                drop(shard_handle);
            } else {
                shard_handle.close().await.unwrap();
            }
            (keys, older)
        });
        *acked = keys;
        older.extend(snapshot_of_files);
    }
    Template {
        _dir: dir,
        data,
        acked,
        older,
    }
}

/// Every file under `dir`, with its bytes, relative to `data`.
fn copies(data: &Path, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for path in files_under(dir) {
        let rel = path.strip_prefix(data).unwrap().to_path_buf();
        out.push((rel, std::fs::read(&path).unwrap()));
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

// ---- where things are ------------------------------------------------------

fn journal_dir(data: &Path, shard: usize) -> PathBuf {
    shard_dir(data, shard).join("journal")
}

fn snapshot_dir(data: &Path, shard: usize) -> PathBuf {
    shard_dir(data, shard).join("snapshots")
}

fn segments(data: &Path, shard: usize) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(journal_dir(data, shard))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(ringstore_journal::segment_generation)
                .is_some()
        })
        .collect();
    out.sort();
    out
}

fn snapshots(data: &Path, shard: usize) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(snapshot_dir(data, shard))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    out.sort();
    out
}

/// Entries of a segment file: (offset, header).
fn entries(path: &Path) -> Vec<(u64, EntryHeader)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 4096usize;
    while pos + ENTRY_HEADER_BYTES <= bytes.len() {
        let Ok(h) = EntryHeader::read_from_bytes(&bytes[pos..pos + ENTRY_HEADER_BYTES]) else {
            break;
        };
        if h.magic.get() == 0 || u64::from(h.offset.get()) != pos as u64 {
            break;
        }
        out.push((pos as u64, h));
        pos += h.footprint() as usize;
    }
    out
}

fn data_entries(path: &Path) -> Vec<(u64, EntryHeader)> {
    entries(path)
        .into_iter()
        .filter(|(_, h)| h.entry_kind() == Some(EntryKind::Data))
        .collect()
}

// ---- damage ----------------------------------------------------------------

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let byte = std::fs::read(path).unwrap()[offset as usize];
    patch(path, offset, &[byte ^ 0x10]);
}

fn zero_block(path: &Path, offset: u64) {
    let start = offset - offset % 4096;
    let len = std::fs::metadata(path).unwrap().len();
    patch(path, start, &vec![0; (len - start).min(4096) as usize]);
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn swap(a: &Path, b: &Path) {
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
}

/// What a cell damaged: the files an error must name (any of them).
struct Damaged {
    files: Vec<PathBuf>,
}

type Cell = (&'static str, fn(&Path, &Template) -> Damaged);

fn one(path: PathBuf) -> Damaged {
    Damaged { files: vec![path] }
}

fn middle_segment(data: &Path, shard: usize) -> PathBuf {
    let all = segments(data, shard);
    assert!(all.len() >= 3, "{all:?}");
    all[all.len() - 2].clone()
}

/// The last segment holding data (the newest may be an empty one after a
/// clean close and no reopen; the crash shard's newest holds data).
fn last_data_segment(data: &Path, shard: usize) -> PathBuf {
    segments(data, shard)
        .into_iter()
        .rev()
        .find(|p| !data_entries(p).is_empty())
        .unwrap()
}

fn cells() -> Vec<Cell> {
    let mut cells: Vec<Cell> = Vec::new();
    // Segment headers.
    cells.push(("segment header bit flip (middle)", |d, _| {
        let p = middle_segment(d, 0);
        flip(&p, 20);
        one(p)
    }));
    cells.push(("segment header bit flip (last, crash)", |d, _| {
        let p = last_data_segment(d, 0);
        flip(&p, 20);
        one(p)
    }));
    cells.push(("segment header zeroed (last, clean)", |d, _| {
        let p = last_data_segment(d, 1);
        zero_block(&p, 0);
        one(p)
    }));
    cells.push(("segment truncated inside its header", |d, _| {
        let p = last_data_segment(d, 0);
        truncate(&p, 40);
        one(p)
    }));
    // Entry headers, payloads, padding: middle and last, crash and clean.
    cells.push(("entry header flip (middle write)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = data_entries(&p)[0];
        flip(&p, off + 9);
        one(p)
    }));
    cells.push(("payload flip (middle write)", |d, _| {
        let p = middle_segment(d, 1);
        let (off, _) = data_entries(&p)[1];
        flip(&p, off + ENTRY_HEADER_BYTES as u64 + 5);
        one(p)
    }));
    cells.push((
        "payload flip of an op the newest snapshot covers (kept for the previous one)",
        |d, _| {
            // Ops 25-36 lie between the two checkpoints: above the journal's
            // watermark (the previous snapshot's), below the newest one.
            let op = PHASES[0] + PHASES[1] / 2;
            let (p, off) = segments(d, 1)
                .into_iter()
                .find_map(|p| {
                    let at = data_entries(&p)
                        .into_iter()
                        .find(|(_, h)| h.op.get() == op)
                        .map(|(off, _)| off);
                    at.map(|off| (p, off))
                })
                .expect("the op is in the journal");
            flip(&p, off + ENTRY_HEADER_BYTES as u64 + 5);
            one(p)
        },
    ));
    cells.push(("entry header flip (last write, crash)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = *data_entries(&p).last().unwrap();
        flip(&p, off + 9);
        one(p)
    }));
    cells.push(("payload flip (last write, crash)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = *data_entries(&p).last().unwrap();
        flip(&p, off + ENTRY_HEADER_BYTES as u64 + 5);
        one(p)
    }));
    cells.push(("last write's block zeroed (crash)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = *data_entries(&p).last().unwrap();
        zero_block(&p, off);
        one(p)
    }));
    cells.push(("payload flip (last write, clean close)", |d, _| {
        let p = last_data_segment(d, 1);
        let (off, _) = *data_entries(&p).last().unwrap();
        flip(&p, off + ENTRY_HEADER_BYTES as u64 + 5);
        one(p)
    }));
    cells.push(("last write's block zeroed (clean close)", |d, _| {
        let p = last_data_segment(d, 1);
        let (off, _) = *data_entries(&p).last().unwrap();
        zero_block(&p, off);
        one(p)
    }));
    cells.push(("padding entry flip (middle)", |d, _| {
        let p = middle_segment(d, 0);
        let (off, _) = entries(&p)
            .into_iter()
            .find(|(_, h)| h.entry_kind() == Some(EntryKind::Padding))
            .unwrap();
        flip(&p, off + 12);
        one(p)
    }));
    cells.push(("a middle write's block zeroed (crash)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = data_entries(&p)[1];
        zero_block(&p, off);
        one(p)
    }));
    cells.push((
        "segment header replaced by an older segment's (stale block)",
        |d, _| {
            let all = segments(d, 1);
            let (older, last) = (all[all.len() - 3].clone(), all[all.len() - 2].clone());
            let block = std::fs::read(&older).unwrap()[..4096].to_vec();
            patch(&last, 0, &block);
            one(last)
        },
    ));
    // Truncation and whole-file damage of segments.
    cells.push(("segment truncated at an entry boundary (middle)", |d, _| {
        let p = middle_segment(d, 0);
        let (off, _) = data_entries(&p)[2];
        truncate(&p, off);
        one(p)
    }));
    cells.push(("segment truncated mid-file (last, crash)", |d, _| {
        let p = last_data_segment(d, 0);
        let (off, _) = *data_entries(&p).last().unwrap();
        truncate(&p, off + 100);
        one(p)
    }));
    cells.push(("newest segment deleted (crash)", |d, _| {
        let p = last_data_segment(d, 0);
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("middle segment deleted", |d, _| {
        let p = middle_segment(d, 1);
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("newest segment zero-length (crash)", |d, _| {
        let p = last_data_segment(d, 0);
        truncate(&p, 0);
        one(p)
    }));
    cells.push(("two segments swapped", |d, _| {
        let all = segments(d, 0);
        let (a, b) = (all[all.len() - 2].clone(), all[all.len() - 3].clone());
        swap(&a, &b);
        Damaged { files: vec![a, b] }
    }));
    cells.push(("stale copy of the last segment (older version)", |d, t| {
        let p = last_data_segment(d, 0);
        let rel = p.strip_prefix(d).unwrap().to_path_buf();
        match t.older.iter().find(|(r, _)| *r == rel) {
            Some((_, bytes)) => std::fs::write(&p, bytes).unwrap(),
            // Created after the older copies: zero its data instead.
            None => patch(&p, 4096, &vec![0; (SEGMENT_BYTES - 4096) as usize]),
        }
        one(p)
    }));
    cells.push((
        "misdirected block inside a segment (last, crash)",
        |d, _| {
            let p = last_data_segment(d, 0);
            let ents = data_entries(&p);
            let (from, _) = ents[ents.len().saturating_sub(3)];
            let (to, _) = *ents.last().unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let block = bytes[from as usize..from as usize + 4096].to_vec();
            patch(&p, to, &block);
            one(p)
        },
    ));
    cells.push(("segment of another shard (same name)", |d, _| {
        let ours = segments(d, 0);
        let theirs = segments(d, 1);
        let name = ours
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .find(|n| theirs.iter().any(|t| t.file_name().unwrap() == n))
            .expect("a generation both shards have");
        let target = journal_dir(d, 0).join(&name);
        std::fs::copy(journal_dir(d, 1).join(&name), &target).unwrap();
        one(target)
    }));
    // Journal superblock.
    cells.push(("journal superblock copy 0 flipped", |d, _| {
        let p = journal_dir(d, 0).join("superblock");
        flip(&p, 100);
        one(p)
    }));
    cells.push(("journal superblock copy 1 zeroed", |d, _| {
        let p = journal_dir(d, 1).join("superblock");
        zero_block(&p, 4096);
        one(p)
    }));
    cells.push(("journal superblock both copies flipped", |d, _| {
        let p = journal_dir(d, 0).join("superblock");
        flip(&p, 100);
        flip(&p, 4096 + 100);
        one(p)
    }));
    cells.push(("journal superblock deleted", |d, _| {
        let p = journal_dir(d, 1).join("superblock");
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("journal superblock truncated", |d, _| {
        let p = journal_dir(d, 0).join("superblock");
        truncate(&p, 5000);
        one(p)
    }));
    cells.push((
        "journal superblock truncated inside copy 0's header",
        |d, _| {
            let p = journal_dir(d, 1).join("superblock");
            truncate(&p, 20);
            one(p)
        },
    ));
    cells.push(("journal superblock stale (older)", |d, t| {
        let p = journal_dir(d, 0).join("superblock");
        let rel = p.strip_prefix(d).unwrap().to_path_buf();
        let (_, bytes) = t.older.iter().find(|(r, _)| *r == rel).unwrap();
        std::fs::write(&p, bytes).unwrap();
        one(p)
    }));
    cells.push((
        "journal superblock copy misdirected (copy 0 over copy 1)",
        |d, _| {
            let p = journal_dir(d, 1).join("superblock");
            let bytes = std::fs::read(&p).unwrap();
            patch(&p, 4096, &bytes[..4096]);
            one(p)
        },
    ));
    cells.push(("journal superblock of another shard", |d, _| {
        let p = journal_dir(d, 0).join("superblock");
        std::fs::copy(journal_dir(d, 1).join("superblock"), &p).unwrap();
        one(p)
    }));
    cells.push(("journal directories of two shards swapped", |d, _| {
        let (a, b) = (journal_dir(d, 0), journal_dir(d, 1));
        swap(&a, &b);
        Damaged {
            files: vec![a.join("superblock"), b.join("superblock")],
        }
    }));
    // Stray files.
    cells.push(("stray files in the journal directory", |d, _| {
        let j = journal_dir(d, 0);
        // A segment's name in upper-case hex: never opened as one.
        let upper = "segment-00000000000000AB.wal";
        std::fs::write(j.join(upper), b"x").unwrap();
        std::fs::write(j.join("notes.txt"), b"hello").unwrap();
        std::fs::write(j.join("segment-0000000000000fff.wal.bak"), b"x").unwrap();
        Damaged { files: vec![] }
    }));
    // Snapshots.
    cells.push(("newest snapshot header flipped", |d, _| {
        let p = snapshots(d, 0).pop().unwrap();
        flip(&p, 30);
        one(p)
    }));
    cells.push(("newest snapshot section flipped", |d, _| {
        let p = snapshots(d, 1).pop().unwrap();
        flip(&p, 4096 + 40);
        one(p)
    }));
    cells.push(("newest snapshot trailer flipped", |d, _| {
        let p = snapshots(d, 0).pop().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        flip(&p, len - 2);
        one(p)
    }));
    cells.push(("every snapshot flipped", |d, _| {
        let all = snapshots(d, 0);
        for p in &all {
            flip(p, 4096 + 40);
        }
        Damaged { files: all }
    }));
    cells.push(("newest snapshot's header block zeroed", |d, _| {
        let p = snapshots(d, 1).pop().unwrap();
        zero_block(&p, 0);
        one(p)
    }));
    cells.push(("newest snapshot truncated", |d, _| {
        let p = snapshots(d, 1).pop().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        truncate(&p, len / 2);
        one(p)
    }));
    cells.push(("newest snapshot zero-length", |d, _| {
        let p = snapshots(d, 0).pop().unwrap();
        truncate(&p, 0);
        one(p)
    }));
    cells.push(("newest snapshot deleted", |d, _| {
        let p = snapshots(d, 0).pop().unwrap();
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("snapshots swapped", |d, _| {
        let all = snapshots(d, 1);
        swap(&all[0], &all[1]);
        Damaged { files: all }
    }));
    cells.push(("snapshot of another shard (another domain)", |d, _| {
        let ours = snapshots(d, 0).pop().unwrap();
        let theirs = snapshots(d, 1).pop().unwrap();
        std::fs::copy(&theirs, &ours).unwrap();
        one(ours)
    }));
    cells.push(("stray files in the snapshot directory", |d, _| {
        let s = snapshot_dir(d, 1);
        std::fs::write(s.join("snapshot-XYZ.snap"), b"x").unwrap();
        std::fs::write(s.join("readme"), b"x").unwrap();
        Damaged { files: vec![] }
    }));
    // Identity.
    cells.push(("identity flipped", |d, _| {
        let p = shard_dir(d, 0).join("identity");
        flip(&p, 20);
        one(p)
    }));
    cells.push(("identity block zeroed", |d, _| {
        let p = shard_dir(d, 1).join("identity");
        zero_block(&p, 0);
        one(p)
    }));
    cells.push(("identity deleted", |d, _| {
        let p = shard_dir(d, 1).join("identity");
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("identity zero-length", |d, _| {
        let p = shard_dir(d, 0).join("identity");
        truncate(&p, 0);
        one(p)
    }));
    cells.push(("identity of another shard (another domain)", |d, _| {
        let p = shard_dir(d, 0).join("identity");
        std::fs::copy(shard_dir(d, 1).join("identity"), &p).unwrap();
        one(p)
    }));
    // The data directory's superblock (the manifest).
    cells.push(("data dir superblock copy 0 flipped", |d, _| {
        let p = d.join(startup::MANIFEST_FILE_NAME);
        flip(&p, 36);
        one(p)
    }));
    cells.push(("data dir superblock both copies flipped", |d, _| {
        let p = d.join(startup::MANIFEST_FILE_NAME);
        flip(&p, 36);
        flip(&p, 4096 + 36);
        one(p)
    }));
    cells.push((
        "data dir superblock of another data dir (3 shards)",
        |d, _| {
            let other = d.with_file_name("other-data");
            startup::check_manifest(&other, 3).unwrap();
            let p = d.join(startup::MANIFEST_FILE_NAME);
            std::fs::copy(other.join(startup::MANIFEST_FILE_NAME), &p).unwrap();
            one(p)
        },
    ));
    cells.push(("data dir superblock deleted", |d, _| {
        let p = d.join(startup::MANIFEST_FILE_NAME);
        std::fs::remove_file(&p).unwrap();
        one(p)
    }));
    cells.push(("data dir superblock zero-length", |d, _| {
        let p = d.join(startup::MANIFEST_FILE_NAME);
        truncate(&p, 0);
        one(p)
    }));
    cells
}

// ---- verdicts --------------------------------------------------------------

/// What reopening found for one shard.
struct Reopened {
    values: BTreeMap<u64, Vec<u8>>,
    tail: TailState,
    unrecorded_end: Option<UnrecordedEnd>,
    /// What the reopened journal's background scrubber found in its
    /// first pass: (file, offset).
    scrubbed: Vec<(PathBuf, u64)>,
    /// What the snapshot scrubber found in its first pass: (file, offset).
    snapshot_scrubbed: Vec<(PathBuf, u64)>,
    /// The shard's cluster domain.
    domain: uuid::Uuid,
}

/// Every snapshot generation of `shard` (a file named as one) that a full
/// verification finds damaged (another domain's included), with its first
/// damage's offset.
fn damaged_snapshots(data: &Path, shard: usize, domain: uuid::Uuid) -> Vec<(PathBuf, u64)> {
    list_snapshot_files(&snapshot_dir(data, shard))
        .unwrap()
        .snapshots
        .into_iter()
        .filter_map(|(_, path)| {
            let bytes = std::fs::read(&path).unwrap();
            let report = verify_snapshot_bytes(&path, &bytes, Some(domain), SnapshotCheck::Full);
            report.damage.first().map(|damage| (path, damage.offset))
        })
        .collect()
}

/// Reopens the data directory the way the runtime does.
fn reopen(data: &Path) -> Result<Vec<Reopened>, String> {
    startup::check_manifest(data, SHARDS).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        let d = data.to_path_buf();
        let opened = on_reactor(move || async move {
            let handle = builder(&d, shard)
                .scrub_rate(SCRUB_BYTES_PER_SECOND)
                .open()
                .await
                .map_err(|e| e.to_string())?;
            let values = handle.read(|m| m.values());
            let tail = handle.recovery_report().journal.tail.clone();
            let unrecorded_end = handle.recovery_report().journal.unrecorded_end.clone();
            // What the background scrubbers (the journal's and the
            // snapshots', started by the open) found in their first pass.
            let started = std::time::Instant::now();
            while handle.journal().stats().scrub_passes == 0
                || handle.stats().snapshot_scrub_passes == 0
            {
                assert!(
                    started.elapsed() <= SCRUB_PASS_WAIT,
                    "shard {shard}: the background scrubbers did not finish a pass in \
                     {SCRUB_PASS_WAIT:?}"
                );
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            let scrubbed = handle
                .journal()
                .scrub_damage()
                .iter()
                .map(|d| (d.path.clone(), d.offset))
                .collect();
            let snapshot_scrubbed: Vec<(PathBuf, u64)> = handle
                .snapshot_scrub_damage()
                .iter()
                .map(|d| (d.path.clone(), d.offset))
                .chain(handle.snapshot_scrub_unreadable())
                .collect();
            let domain = handle.domain();
            handle.close().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Reopened {
                values,
                tail,
                unrecorded_end,
                scrubbed,
                snapshot_scrubbed,
                domain,
            })
        })?;
        out.push(opened);
    }
    Ok(out)
}

/// What the tools said of a data directory.
struct ToolVerdict {
    /// Some tool exited non-zero.
    refused: bool,
    /// `snapshot verify` exited non-zero.
    snapshot_refused: bool,
    /// The refusing tools' output.
    said: String,
}

/// Runs `wal verify` and `snapshot verify` on every shard.
fn tools_refuse(data: &Path) -> ToolVerdict {
    let mut refused = false;
    let mut snapshot_refused = false;
    let mut said = String::new();
    for shard in 0..SHARDS {
        for tool in [["wal", "verify"], ["snapshot", "verify"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_ringstore"))
                .args(tool)
                .arg("--data-dir")
                .arg(data)
                .arg("--shard")
                .arg(shard.to_string())
                .output()
                .unwrap();
            if !out.status.success() {
                refused = true;
                snapshot_refused |= tool[0] == "snapshot";
                said.push_str(&String::from_utf8_lossy(&out.stdout));
                said.push_str(&String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    ToolVerdict {
        refused,
        snapshot_refused,
        said,
    }
}

/// The places (file, byte offset) `wal verify` named as damage in its
/// output, if only `wal verify` refused, said that a reopen opens the
/// journal anyway (payload damage a reopen does not read) and named
/// nothing that a reopen refuses or that replay misses; `None` otherwise.
fn damage_a_reopen_leaves_to_reads(tools: &ToolVerdict) -> Option<Vec<(PathBuf, u64)>> {
    let said = &tools.said;
    if tools.snapshot_refused
        || !said.contains("reopening opens this journal")
        || said.contains("reopening refuses")
        || said.contains("missing above the watermark")
    {
        return None;
    }
    let mut places = Vec::new();
    for line in said.lines() {
        let Some((_, damage)) = line.split_once("DAMAGE: ") else {
            continue;
        };
        let (path, rest) = damage.split_once(" at byte offset ")?;
        let offset = rest.split(':').next()?.trim().parse().ok()?;
        places.push((PathBuf::from(path), offset));
    }
    (!places.is_empty()).then_some(places)
}

#[derive(Default)]
struct Tally {
    refused: u32,
    intact: u32,
    cut_reported: u32,
    /// Reopened with every acknowledged op, and the payload damage `wal
    /// verify` named was named again by the reopened journal's scrub.
    read_damage_reported: u32,
    /// Reopened past a damaged snapshot generation, which the snapshot
    /// scrubber then named.
    snapshot_damage_scrubbed: u32,
}

#[test]
fn every_damage_is_refused_naming_the_file_or_loses_nothing_unreported() {
    let template = build_template();
    for shard in 0..SHARDS {
        assert!(
            segments(&template.data, shard).len() >= 3,
            "the template needs several segments"
        );
        assert_eq!(snapshots(&template.data, shard).len(), 2);
    }
    // The undamaged template passes both.
    let tools = tools_refuse(&template.data);
    assert!(!tools.refused, "the undamaged template: {}", tools.said);
    let cells = cells();
    let mut tally = Tally::default();
    let mut violations = Vec::new();
    for (name, damage) in &cells {
        let dir = temp_dir();
        let data = dir.path().join("data");
        copy_dir(&template.data, &data);
        let damaged = damage(&data, &template);
        let tools = tools_refuse(&data);
        let (tools_refused, said) = (tools.refused, &tools.said);
        let reopened = reopen(&data);
        let mut problems = Vec::new();
        match &reopened {
            Err(error) => {
                tally.refused += 1;
                let named = damaged.files.is_empty()
                    || damaged.files.iter().any(|f| {
                        error.contains(&f.display().to_string())
                            || error.contains(&f.file_name().unwrap().to_string_lossy().to_string())
                    });
                if !named {
                    problems.push(format!("the error does not name the damaged file: {error}"));
                }
                if !tools_refused {
                    problems.push(format!("reopen refuses ({error}) but the tools pass"));
                }
            }
            Ok(shards) => {
                let mut read_damage = false;
                if tools_refused {
                    match damage_a_reopen_leaves_to_reads(&tools) {
                        Some(places) => {
                            read_damage = true;
                            for place in places {
                                if !shards.iter().any(|s| s.scrubbed.contains(&place)) {
                                    problems.push(format!(
                                        "wal verify names payload damage at {} offset {} that \
                                         the reopened journal's scrub does not",
                                        place.0.display(),
                                        place.1
                                    ));
                                }
                            }
                        }
                        None => {
                            problems.push(format!("reopen succeeds but the tools refuse: {said}"))
                        }
                    }
                }
                // A damaged snapshot file the reopen passed over is still
                // on disk: the background scrubber names it.
                let mut snapshot_damage = false;
                for (shard, reopened) in shards.iter().enumerate() {
                    for (path, offset) in damaged_snapshots(&data, shard, reopened.domain) {
                        snapshot_damage = true;
                        if !reopened.snapshot_scrubbed.contains(&(path.clone(), offset)) {
                            problems.push(format!(
                                "shard {shard}: {} is damaged at offset {offset} and the \
                                 snapshot scrubber does not name it (it named {:?})",
                                path.display(),
                                reopened.snapshot_scrubbed
                            ));
                        }
                    }
                }
                tally.snapshot_damage_scrubbed += u32::from(snapshot_damage);
                let mut cut = false;
                for (shard, reopened) in shards.iter().enumerate() {
                    let cut_range = match &reopened.tail {
                        TailState::Torn { ops, .. } => {
                            cut = true;
                            *ops
                        }
                        _ => None,
                    };
                    for (&key, &op) in &template.acked[shard] {
                        match reopened.values.get(&key) {
                            Some(v) if *v == value(key, key, VALUE_BYTES) => {}
                            Some(_) => problems
                                .push(format!("shard {shard}: key {key} served a wrong value")),
                            None => {
                                // Reported: inside a cut the recovery names,
                                // or above the highest op of a log whose end
                                // nothing recorded (an unclean shutdown).
                                let in_cut =
                                    cut_range.is_some_and(|(lo, hi)| (lo..=hi).contains(&op));
                                let above_end = reopened
                                    .unrecorded_end
                                    .as_ref()
                                    .is_some_and(|end| op > end.last_op);
                                let reported = in_cut || above_end;
                                if !reported {
                                    problems.push(format!(
                                        "shard {shard}: acknowledged op {op} (key {key}) lost without a report ({:?})",
                                        reopened.tail
                                    ));
                                }
                            }
                        }
                    }
                }
                if cut {
                    tally.cut_reported += 1;
                } else if read_damage {
                    tally.read_damage_reported += 1;
                } else {
                    tally.intact += 1;
                }
            }
        }
        let verdict = match &reopened {
            Err(e) => format!("refused: {e}"),
            Ok(_) => "reopened".to_string(),
        };
        println!("cell {name:60} {verdict}");
        for problem in problems {
            violations.push(format!("{name}: {problem}"));
        }
    }
    println!(
        "corruption matrix: {} cells, {} refused naming the file, {} reopened with every \
         acknowledged op, {} cut and reported, {} reopened with payload damage that verify and \
         the scrub both name, {} violations; {} of the reopened passed over a damaged \
         snapshot generation that the snapshot scrubber named",
        cells.len(),
        tally.refused,
        tally.intact,
        tally.cut_reported,
        tally.read_damage_reported,
        violations.len(),
        tally.snapshot_damage_scrubbed,
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The checks of the scrubbers ran on damage, not on nothing.
    assert!(
        tally.read_damage_reported > 0,
        "no cell left payload damage to the journal's scrubber"
    );
    assert!(
        tally.snapshot_damage_scrubbed > 0,
        "no cell left a damaged snapshot to the snapshot scrubber"
    );
}
