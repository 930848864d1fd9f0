//! Writes the committed seed corpus, `fuzz/corpus/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_corpus [TARGET...]`
//! (every target, or only those named).
//!
//! `journal_files` seeds are built field by field ([`Input::encode`]): each
//! valid template untouched, damaged at its tail, in its superblock (a
//! flipped, zeroed or misdirected copy, a lost update, another journal's),
//! with another journal's segment, rewritten header fields, opened as
//! another owner; and templates' files as raw bytes (superblock included,
//! segments' trailing zeros cut and restored by `RAW_EXTEND`) so raw mode
//! starts past the header checksums. The op-list targets use derived
//! `Arbitrary` decoding, so their seeds are picked from deterministic
//! pseudo-random byte strings by what they decode to (long enough, varied,
//! with crashes). Every seed is run once, on a thread of its own, before it
//! is written: a seed that fails is a finding, not a seed —
//! it goes to `fuzz/regressions/<target>/` instead (libFuzzer would stop on
//! it at startup), and the generator exits non-zero.

use arbitrary::{Arbitrary, Unstructured};
use ringstore_fuzz::journal_files::{self, Input, Mutation, Source, SECTOR_BYTES};
use ringstore_fuzz::{cache_ops, journal_ops, snapshot_files};
use std::path::{Path, PathBuf};

/// splitmix64: deterministic bytes without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

static FAILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `check` on a fresh thread (so a panic cannot leave this thread's
/// executor half-run), then writes `bytes` to the corpus if it passed, to
/// the regressions if it panicked.
fn keep(target: &str, name: &str, bytes: &[u8], check: impl FnOnce() + Send + 'static) {
    let passed = std::thread::spawn(check).join().is_ok();
    let kind = if passed { "corpus" } else { "regressions" };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, bytes).expect("write a seed");
    println!("{:>8} bytes  {}", bytes.len(), path.display());
    if !passed {
        FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("FINDING: seed {name} of {target} fails; kept as a regression input");
    }
}

/// Length of `bytes` without trailing zeros, rounded up to a sector.
fn used_len(bytes: &[u8]) -> usize {
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    used.div_ceil(SECTOR_BYTES) * SECTOR_BYTES
}

fn journal_files_seeds() {
    use journal_files::{RawFile, RAW_EXTEND, RAW_RESEAL};
    let templates = journal_files::templates();
    let mut seeds: Vec<(String, Input)> = Vec::new();
    let template_input = |template: usize, strict: bool, mutations: Vec<Mutation>| Input {
        strict,
        append_after_open: true,
        other_owner: false,
        source: Source::Template {
            template: template as u8,
            mutations,
        },
    };
    let index_of = |name: &str| {
        templates
            .iter()
            .position(|t| t.name == name)
            .unwrap_or_else(|| panic!("no template {name}"))
    };
    for (index, template) in templates.iter().enumerate() {
        seeds.push((
            format!("template-{}", template.name),
            template_input(index, false, Vec::new()),
        ));
        // The sector holding the last written bytes of the newest segment
        // the superblock records (after a crash a spare may follow it): a
        // torn or damaged tail (refused after a clean close, cut after a
        // crash).
        let newest = journal_files::journal_superblock(
            template.dir.superblock.as_deref().expect("a superblock"),
        )
        .expect("a valid superblock")
        .last_generation;
        let last = template
            .dir
            .segments
            .iter()
            .position(|(g, _)| *g == newest)
            .expect("the newest segment");
        let tail_sector =
            (used_len(&template.dir.segments[last].1) / SECTOR_BYTES).saturating_sub(1) as u16;
        seeds.push((
            format!("template-{}-zeroed-tail", template.name),
            template_input(
                index,
                false,
                vec![Mutation::ZeroSectors {
                    file: last as u8,
                    sector: tail_sector,
                    count: 0,
                }],
            ),
        ));
        seeds.push((
            format!("template-{}-flip-tail-strict", template.name),
            template_input(
                index,
                true,
                vec![Mutation::FlipBit {
                    file: last as u8,
                    bit: (u32::from(tail_sector) * SECTOR_BYTES as u32 + 100) * 8,
                }],
            ),
        ));
        // A flipped bit in each superblock copy: the other copy holds.
        seeds.push((
            format!("template-{}-superblock-flip", template.name),
            template_input(
                index,
                false,
                vec![Mutation::SuperblockFlipBit {
                    copy: index as u8 % 2,
                    bit: 8 * 80 + index as u16,
                }],
            ),
        ));
    }
    let appends = index_of("appends");
    let group = index_of("group-commit");
    let replica = index_of("watermark-epoch-replica");
    let torn = index_of("torn-tail");
    let load = index_of("crash-under-load");
    // Crash templates torn differently in the bytes the crash left unsynced.
    for index in [torn, load] {
        let template = &templates[index];
        let (generation, from) = template.unsynced_from.expect("a crash template");
        let file = template
            .dir
            .segments
            .iter()
            .position(|(g, _)| *g == generation)
            .expect("the last segment") as u8;
        seeds.push((
            format!("template-{}-retorn", template.name),
            template_input(
                index,
                false,
                vec![
                    Mutation::ZeroSectors {
                        file,
                        sector: (from / SECTOR_BYTES as u64 + 1) as u16,
                        count: 2,
                    },
                    Mutation::FlipBit {
                        file,
                        bit: (from as u32 + 8) * 8 + 3,
                    },
                ],
            ),
        ));
    }
    let mut add = |name: &str, index: usize, mutations: Vec<Mutation>| {
        seeds.push((
            format!("template-{}-{name}", templates[index].name),
            template_input(index, false, mutations),
        ));
    };
    add(
        "superblock-zeroed-copy",
        appends,
        vec![Mutation::SuperblockZeroCopy { copy: 0 }],
    );
    add(
        "superblock-zeroed",
        appends,
        vec![
            Mutation::SuperblockZeroCopy { copy: 0 },
            Mutation::SuperblockZeroCopy { copy: 1 },
        ],
    );
    add(
        "superblock-truncated",
        group,
        vec![Mutation::SuperblockTruncate { len: 6000 }],
    );
    add(
        "superblock-removed",
        group,
        vec![Mutation::SuperblockRemove],
    );
    add(
        "superblock-of-another-journal",
        appends,
        vec![Mutation::SuperblockFrom {
            template: group as u8,
            version: u8::MAX,
            which: 0,
        }],
    );
    add(
        "superblock-lost-update",
        group,
        vec![Mutation::SuperblockFrom {
            template: group as u8,
            version: 0,
            which: 0,
        }],
    );
    add(
        "superblock-lost-update-torn",
        replica,
        vec![
            Mutation::SuperblockFrom {
                template: replica as u8,
                version: 1,
                which: 0,
            },
            Mutation::FlipBit {
                file: 1,
                bit: (4096 + 200) * 8,
            },
        ],
    );
    add(
        "superblock-misdirected-copy",
        replica,
        vec![Mutation::SuperblockFrom {
            template: replica as u8,
            version: u8::MAX,
            which: 3,
        }],
    );
    add(
        "segment-of-another-journal",
        group,
        vec![Mutation::SegmentFrom {
            template: load as u8,
            file: 0,
            generation: 1,
        }],
    );
    add(
        "both-of-another-journal",
        appends,
        vec![
            Mutation::SuperblockFrom {
                template: torn as u8,
                version: u8::MAX,
                which: 0,
            },
            Mutation::SegmentFrom {
                template: torn as u8,
                file: 0,
                generation: 1,
            },
            Mutation::SegmentFrom {
                template: torn as u8,
                file: 1,
                generation: 2,
            },
        ],
    );
    // The superblock body's first_generation (copy header 32 bytes, body
    // offset 40) set to 2 in both copies, checksums recomputed: segment 1
    // reads as a retirement a crash interrupted.
    add(
        "superblock-rewritten",
        group,
        vec![
            Mutation::SuperblockWrite {
                copy: 0,
                offset: 32 + 40 - 4,
                len: 7,
                value: 2,
            },
            Mutation::SuperblockWrite {
                copy: 1,
                offset: 32 + 40 - 4,
                len: 7,
                value: 2,
            },
        ],
    );
    // The second segment's prev_end (header offset 48) moved back a block.
    add(
        "segment-header-rewritten",
        group,
        vec![Mutation::SegmentHeaderWrite {
            file: 1,
            offset: 48 - 4,
            len: 1,
            value: 0x1000,
        }],
    );
    add(
        "misdirected",
        replica,
        vec![Mutation::CopySectors {
            from_file: 0,
            from_sector: 8,
            to_file: 1,
            to_sector: 24,
            count: 3,
        }],
    );
    add("lost-file", replica, vec![Mutation::Remove { file: 0 }]);
    add(
        "renamed",
        group,
        vec![Mutation::Rename {
            file: 1,
            generation: 5,
        }],
    );
    add(
        "truncated",
        appends,
        vec![Mutation::Truncate { file: 0, len: 9000 }],
    );
    add(
        "poked",
        appends,
        vec![Mutation::Poke {
            file: 0,
            offset: 4096 + 8,
            bytes: vec![0xff; 8],
        }],
    );
    for index in [appends, replica] {
        seeds.push((
            format!("template-{}-other-owner", templates[index].name),
            Input {
                other_owner: true,
                ..template_input(index, false, Vec::new())
            },
        ));
    }
    // Real journal files as raw bytes: the superblock, and segments with
    // their trailing zeros cut (restored by RAW_EXTEND).
    for index in [appends, torn] {
        let template = &templates[index];
        let mut files = vec![RawFile {
            name: 0,
            bytes: template.dir.superblock.clone().expect("a superblock"),
        }];
        files.extend(
            template
                .dir
                .segments
                .iter()
                .map(|(generation, bytes)| RawFile {
                    name: *generation as u8 | RAW_EXTEND,
                    bytes: bytes[..used_len(bytes)].to_vec(),
                }),
        );
        seeds.push((
            format!("raw-{}", template.name),
            Input {
                strict: false,
                append_after_open: true,
                other_owner: false,
                source: Source::Raw(files),
            },
        ));
    }
    let mut rng = Rng(0x006a_6f75_726e_616c);
    seeds.push((
        "raw-garbage".into(),
        Input {
            strict: false,
            append_after_open: false,
            other_owner: false,
            source: Source::Raw(vec![RawFile {
                name: 1,
                bytes: rng.bytes(5000),
            }]),
        },
    ));
    // A superblock whose copies' headers are valid and whose bodies are
    // noise, checksums recomputed (RAW_RESEAL): the body decoder's input.
    let mut superblock = templates[appends]
        .dir
        .superblock
        .clone()
        .expect("a superblock");
    for copy in 0..2 {
        let body = copy * 4096 + 32;
        superblock[body..body + 200].copy_from_slice(&rng.bytes(200));
    }
    seeds.push((
        "raw-superblock-noise-resealed".into(),
        Input {
            strict: false,
            append_after_open: false,
            other_owner: false,
            source: Source::Raw(vec![
                RawFile {
                    name: RAW_RESEAL,
                    bytes: superblock,
                },
                RawFile {
                    name: 1 | RAW_EXTEND,
                    bytes: templates[appends].dir.segments[0].1[..4096].to_vec(),
                },
            ]),
        },
    ));
    // A new journal's superblock left as superblock.tmp, nothing else.
    seeds.push((
        "raw-superblock-tmp".into(),
        Input {
            strict: false,
            append_after_open: true,
            other_owner: false,
            source: Source::Raw(vec![RawFile {
                name: RAW_EXTEND,
                bytes: templates[appends].old_superblocks[0].clone(),
            }]),
        },
    ));
    for (name, input) in seeds {
        let bytes = input.encode();
        assert_eq!(
            Input::decode(&bytes),
            input,
            "{name}: encode/decode mismatch"
        );
        keep("journal_files", &name, &bytes, move || {
            journal_files::run(&input)
        });
    }
}

/// Picks `count` inputs of type `T` from pseudo-random byte strings of
/// `len_range` bytes that satisfy `keep`.
fn pick<T: for<'a> Arbitrary<'a>>(
    rng: &mut Rng,
    len_range: std::ops::Range<usize>,
    count: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Vec<Vec<u8>> {
    let mut picked = Vec::new();
    for _ in 0..100_000 {
        if picked.len() == count {
            break;
        }
        let len = len_range.start + rng.next() as usize % (len_range.end - len_range.start);
        let bytes = rng.bytes(len);
        if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(&bytes)) {
            if keep(&input) {
                picked.push(bytes);
            }
        }
    }
    assert_eq!(picked.len(), count, "not enough seeds found");
    picked
}

fn journal_ops_seeds() {
    use journal_ops::{FuzzOp, Input, Profile};
    let mut rng = Rng(0x6f70_735f_6a6f);
    for (name, profile) in [
        ("none", Profile::None),
        ("benign", Profile::Benign),
        ("destructive", Profile::Destructive),
        ("small-disk", Profile::SmallDisk),
    ] {
        let seeds = pick::<Input>(&mut rng, 150..700, 2, |input| {
            let appends = input
                .ops
                .iter()
                .filter(|op| matches!(op, FuzzOp::Append { .. }))
                .count();
            let reopens = input
                .ops
                .iter()
                .filter(|op| matches!(op, FuzzOp::Crash { .. } | FuzzOp::Reopen))
                .count();
            input.profile == profile
                && (40..=journal_ops::OPS_MAX).contains(&input.ops.len())
                && appends >= 8
                && reopens >= 2
        });
        for (i, bytes) in seeds.iter().enumerate() {
            let input: Input =
                Input::arbitrary_take_rest(Unstructured::new(bytes)).expect("decodes");
            keep("journal_ops", &format!("{name}-{i}"), bytes, move || {
                journal_ops::run(&input)
            });
        }
    }
}

fn journal_replica_ops_seeds() {
    use journal_ops::{FuzzOp, Profile, ReplicaInput, ReplicaOp};
    let mut rng = Rng(0x7265_706c_6963);
    for (name, profile) in [
        ("none", Profile::None),
        ("benign", Profile::Benign),
        ("destructive", Profile::Destructive),
        ("small-disk", Profile::SmallDisk),
    ] {
        let seeds = pick::<ReplicaInput>(&mut rng, 150..700, 2, |input| {
            let count = |f: fn(&ReplicaOp) -> bool| input.ops.iter().filter(|op| f(op)).count();
            input.profile == profile
                && (40..=journal_ops::OPS_MAX).contains(&input.ops.len())
                && count(|op| matches!(op, ReplicaOp::Base(FuzzOp::Append { .. }))) >= 8
                && count(|op| matches!(op, ReplicaOp::Base(FuzzOp::Crash { .. } | FuzzOp::Reopen)))
                    >= 2
                && count(|op| matches!(op, ReplicaOp::Truncate { .. })) >= 2
                && count(|op| matches!(op, ReplicaOp::SetHardState)) >= 2
        });
        for (i, bytes) in seeds.iter().enumerate() {
            let input =
                ReplicaInput::arbitrary_take_rest(Unstructured::new(bytes)).expect("decodes");
            keep(
                "journal_replica_ops",
                &format!("{name}-{i}"),
                bytes,
                move || journal_ops::run(&input),
            );
        }
    }
}

fn journal_damage_ops_seeds() {
    use journal_ops::{DamageInput, DamageOp, FuzzOp, Profile, ReplicaOp};
    let mut rng = Rng(0x6461_6d61_6765);
    for (name, profile) in [
        ("benign", Profile::Benign),
        ("destructive", Profile::Destructive),
    ] {
        let seeds = pick::<DamageInput>(&mut rng, 150..700, 2, |input| {
            let count = |f: fn(&DamageOp) -> bool| input.ops.iter().filter(|op| f(op)).count();
            input.profile == profile
                && (40..=journal_ops::OPS_MAX).contains(&input.ops.len())
                && count(|op| matches!(op, DamageOp::Base(ReplicaOp::Base(FuzzOp::Append { .. }))))
                    >= 6
                && count(|op| matches!(op, DamageOp::Rot { .. })) >= 1
                && count(|op| matches!(op, DamageOp::Unreadable { .. })) >= 1
        });
        for (i, bytes) in seeds.iter().enumerate() {
            let input =
                DamageInput::arbitrary_take_rest(Unstructured::new(bytes)).expect("decodes");
            keep(
                "journal_damage_ops",
                &format!("{name}-{i}"),
                bytes,
                move || journal_ops::run(&input),
            );
        }
    }
}

fn cache_ops_seeds() {
    use ringstore_cache::sim::Op;
    let mut rng = Rng(0x0063_6163_6865);
    let seeds = pick::<cache_ops::Input>(&mut rng, 60..300, 5, |input| {
        let kinds: std::collections::HashSet<std::mem::Discriminant<Op>> =
            input.ops.iter().map(std::mem::discriminant).collect();
        let commits = input
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Commit { .. } | Op::Put { .. }))
            .count();
        (16..=64).contains(&input.ops.len())
            && kinds.len() >= 10
            && commits >= 4
            && usize::from(input.crash_after_ops) < input.ops.len()
    });
    for (i, bytes) in seeds.iter().enumerate() {
        let input =
            cache_ops::Input::arbitrary_take_rest(Unstructured::new(bytes)).expect("decodes");
        keep("cache_ops", &format!("mixed-{i}"), bytes, move || {
            let started = std::time::Instant::now();
            cache_ops::run(&input);
            println!(
                "cache seed: {} ops in {:?}",
                input.ops.len(),
                started.elapsed()
            );
        });
    }
}

fn snapshot_files_seeds() {
    use snapshot_files::{Input, Source};
    let mut rng = Rng(0x0073_6e61_7073);
    /// A seed kind: its name and which inputs belong to it.
    type Kind = (&'static str, fn(&Input) -> bool);
    let kinds: [Kind; 4] = [
        ("template", |i| {
            matches!(i.source, Source::Template(_)) && i.mutations.is_empty()
        }),
        ("template-resealed", |i| {
            matches!(i.source, Source::Template(_))
                && i.reseal
                && (1..=4).contains(&i.mutations.len())
        }),
        (
            "sections",
            |i| matches!(&i.source, Source::Sections(s) if s.len() >= 2),
        ),
        (
            "raw",
            |i| matches!(&i.source, Source::Raw(b) if b.len() >= 8),
        ),
    ];
    for (name, wanted) in kinds {
        let seeds = pick::<Input>(&mut rng, 40..400, 3, wanted);
        for (i, bytes) in seeds.iter().enumerate() {
            let input = Input::arbitrary_take_rest(Unstructured::new(bytes)).expect("decodes");
            keep("snapshot_files", &format!("{name}-{i}"), bytes, move || {
                snapshot_files::run(&input)
            });
        }
    }
}

/// Writes every target's seeds, or only those of the targets named on the
/// command line.
fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let targets: [(&str, fn()); 6] = [
        ("journal_files", journal_files_seeds),
        ("journal_ops", journal_ops_seeds),
        ("journal_replica_ops", journal_replica_ops_seeds),
        ("journal_damage_ops", journal_damage_ops_seeds),
        ("cache_ops", cache_ops_seeds),
        ("snapshot_files", snapshot_files_seeds),
    ];
    for (name, seeds) in targets {
        if wanted.is_empty() || wanted.iter().any(|w| w == name) {
            seeds();
        }
    }
    let failed = FAILED.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} seeds failed (see fuzz/regressions/)");
        std::process::exit(1);
    }
}
