//! What the property tests (a `props` module beside each parser) share: their
//! settings and the reads a byte stream may arrive in.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// A property's settings: `cases` inputs in a plain `cargo test`, few enough
/// that all properties together stay within seconds. The `proptest!` macro
/// takes PROPTEST_CASES over it when set (`make fuzz` sets many).
pub(crate) fn config(cases: u32) -> Config {
    Config::with_cases(cases)
}

/// The settings of a property whose every case is costly (some 100 KB to
/// go through), for a [`TestRunner`](proptest::test_runner::TestRunner) of
/// its own: a hundredth of PROPTEST_CASES, when set, is plenty.
/// `source_file` is where failures are saved beside, as the macro does.
pub(crate) fn costly_config(cases: u32, source_file: &'static str) -> Config {
    // Config::default() holds PROPTEST_CASES when it is set.
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => (Config::default().cases / 100).max(cases),
        None => cases,
    };
    Config {
        cases,
        source_file: Some(source_file),
        ..Config::default()
    }
}

/// Up to 16 places to cut a byte stream at.
pub(crate) fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..16)
}

/// `bytes` cut at `cuts`, as reads of any size would deliver it (empty reads
/// included).
pub(crate) fn chunked<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[start..end]);
        start = end;
    }
    chunks
}
