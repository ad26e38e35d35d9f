//! The Aho-Corasick finders the credential code runs over requests and
//! responses, and the overlapping search the placeholder scan needs.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// A leftmost-longest finder over `patterns`; `None` when there are none.
pub(super) fn build<P: AsRef<[u8]>>(patterns: &[P], case_insensitive: bool) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(case_insensitive)
        .match_kind(MatchKind::LeftmostLongest)
        .build(patterns)
        .ok()
}

/// Overlapping search that works with leftmost-longest automata, which
/// `aho-corasick` only allows non-overlapping: restart one byte after each
/// match's start.
pub(super) trait OverlappingHack {
    fn find_overlapping_iter_hack(&self, hay: &[u8]) -> Vec<usize>;
}

impl OverlappingHack for AhoCorasick {
    fn find_overlapping_iter_hack(&self, hay: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < hay.len() {
            let input = aho_corasick::Input::new(hay).span(at..hay.len());
            match self.find(input) {
                Some(m) => {
                    out.push(m.pattern().as_usize());
                    at = m.start() + 1;
                }
                None => break,
            }
        }
        out
    }
}
