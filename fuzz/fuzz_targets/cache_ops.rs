//! libFuzzer entry for `cache_ops`; the input type and the checks live in
//! `ringstore_fuzz::cache_ops` (see `fuzz/src/cache_ops.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ringstore_fuzz::log_panics(),
    |input: ringstore_fuzz::cache_ops::Input| {
        ringstore_fuzz::cache_ops::run(&input);
    }
);
